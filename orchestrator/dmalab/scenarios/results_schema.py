"""The JSON Schema of results.json (docs/schemas/results.schema.json, docs/schemas.md), made
from the dataclasses `results.as_json` writes (`Result`, `StepRecord`): a field added there is
in the schema once it is generated again (`dmalab spec schema`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from dmalab.scenarios.results import Result, StepRecord
from dmalab.spec.tables import DRAFT, s_list, s_table

_SCALARS = {int: "integer", str: "string", float: "number", bool: "boolean"}


def _type(hint: Any) -> dict[str, Any]:
    """The schema of one annotated type: scalars, lists, str-keyed dicts, optionals and the
    dataclasses results hold."""
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(hint):
        return _record(hint)  # type: ignore[arg-type]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return {"type": "array", "items": _type(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type(args[1])}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type(a) for a in args]}
    raise TypeError(f"no JSON Schema for {hint!r}")


def _record(cls: type) -> dict[str, Any]:
    """A dataclass as JSON: every field, the ones without a default required."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return s_table({f.name: _type(hints[f.name]) for f in fields}, required=required)


def schema() -> dict[str, Any]:
    assert StepRecord in typing.get_args(typing.get_type_hints(Result)["steps"])
    doc = {
        "meta": {"type": "object", "description": "what produced the run (docs/reports.md)"},
        "results": s_list(_record(Result), "one result a variant, topology and policy"),
        "timing": {"type": "object", "description": "wall times of the run's phases"},
    }
    return {
        "$schema": DRAFT,
        "title": "dmalab results.json (docs/reports.md)",
        **s_table(doc, required=("results",), closed=False),
    }
