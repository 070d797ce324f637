"""Typed TOML tables: the one checker topology and scenario files are read with, the one id rule,
and the JSON Schema pieces their published schemas are made of (docs/schemas.md).

Every mistake is one `BadInput` line, `file: table.path: problem`, and the problem quotes the
offending value. Ids end up as QEMU ids (`-device ncdma,id=...`), in run directory and socket
names and in results: what QEMU accepts as an id (a letter first, no `,` or `=`, which its
option syntax would split on) and what a file name may hold (no `/`, no `..`, no leading `-`
that a command would read as an option), in ASCII, short enough for a unix socket path (107
bytes) under the run directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from dmalab.errors import BadInput

ID_MAX = 31
ID_RULE = f"a letter, then letters, digits, '-' or '_', at most {ID_MAX} characters"
ID = re.compile(rf"[A-Za-z][A-Za-z0-9_-]{{0,{ID_MAX - 1}}}")
#: A scenario's name may start with a digit, as the seeds are numbered ("000-arnd-table"); it
#: never reaches QEMU, and otherwise follows the id rule.
NAME_RULE = f"a letter or digit, then letters, digits, '-' or '_', at most {ID_MAX} characters"
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{ID_MAX - 1}}}")

# Readable type names in messages ("an integer", not "int").
_LABELS = {
    int: "an integer",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "a table",
    float: "a number",
}


def kind_label(value: Any) -> str:
    return _LABELS.get(type(value), type(value).__name__)


def shown(value: Any, limit: int = 40) -> str:
    """The value as the file has it, shortened, for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def id_problem(value: str, rule: re.Pattern[str] = ID) -> str | None:
    """Why `value` is not an id (or a name, with rule=NAME); None when it is one."""
    if rule.fullmatch(value):
        return None
    what, text = ("a name", NAME_RULE) if rule is NAME else ("an id", ID_RULE)
    return f"{shown(value)} is not {what} ({text})"


class Source:
    """The file being read: every error names it."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, problem: str) -> NoReturn:
        raise BadInput(f"{self.label}: {where}: {problem}" if where else f"{self.label}: {problem}")


class Table:
    """Typed access to one TOML table; errors name the field (`step[3].actor`, `device[1].id`)."""

    def __init__(
        self, src: Source, where: str, value: Any, known: Collection[str] | None = None
    ) -> None:
        """`known`: the fields the table may have (None: any, for tables keyed by names)."""
        self.src = src
        self.where = where
        if not isinstance(value, Mapping):
            src.fail(where, f"must be a table, not {kind_label(value)} ({shown(value)})")
        self.value: Mapping[str, Any] = value
        for key in value:
            if known is not None and key not in known:
                self.fail(key, f"unknown field (expected one of: {', '.join(known)})")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> NoReturn:
        self.src.fail(self.name(key), problem)

    def has(self, key: str) -> bool:
        return key in self.value

    def get(self, key: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.value:
            if required:
                self.fail(key, "missing")
            return default
        value = self.value[key]
        # bool is an int in Python: never take one for the other.
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            label = _LABELS.get(kind, kind.__name__)
            self.fail(key, f"must be {label}, not {kind_label(value)} ({shown(value)})")
        return value

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if key in self.value and not value.strip():
            self.fail(key, "must not be empty")
        return value  # type: ignore[no-any-return]

    def identifier(self, key: str, default: str | None = None, rule: re.Pattern[str] = ID) -> str:
        """An id (or a name, rule=NAME); required unless there is a default."""
        value = self.get(key, str, default, required=default is None)
        if problem := id_problem(value, rule):
            self.fail(key, problem)
        return value  # type: ignore[no-any-return]

    def integer(
        self,
        key: str,
        lo: int,
        hi: int,
        default: int | None = None,
        check: Callable[[int], str | None] | None = None,
    ) -> int:
        """An integer in [lo, hi] (required unless there is a default); `check(value)` returns
        a further problem or None."""
        value = self.get(key, int, default, required=default is None)
        if not lo <= value <= hi:
            self.fail(key, f"must be in [{lo}, {hi}], not {value}")
        if check is not None and (problem := check(value)):
            self.fail(key, problem)
        return value  # type: ignore[no-any-return]

    def choice(self, key: str, choices: Collection[str], default: str | None = None) -> str:
        """One of `choices`; required unless there is a default."""
        value = self.get(key, str, default, required=default is None)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {shown(value)}")
        return value  # type: ignore[no-any-return]

    def names(self, key: str, choices: Collection[str], what: str) -> tuple[str, ...] | None:
        """A list of names out of `choices` (flags, faults); None when the key is absent."""
        if key not in self.value:
            return None
        out = []
        for i, value in enumerate(self.get(key, list)):
            where = f"{self.name(key)}[{i}]"
            if not isinstance(value, str):
                self.src.fail(where, f"must be a string, not {kind_label(value)} ({shown(value)})")
            if value not in choices:
                self.src.fail(where, f"unknown {what} {shown(value)} (known: {', '.join(choices)})")
            out.append(value)
        return tuple(out)

    def array(self, key: str) -> list[Any]:
        """An array of tables (`[[key]]`), empty when absent."""
        value = self.value.get(key, [])
        if not isinstance(value, list):
            self.fail(
                key,
                f"must be an array of tables ([[{key}]]), not {kind_label(value)} ({shown(value)})",
            )
        return value


# ---------------------------------------------------------------------------------------------
# JSON Schema (draft 2020-12) pieces, so the published schemas say what the checker does.

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def s_integer(lo: int, hi: int, doc: str = "", default: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi}
    return _doc(out, doc, default)


def s_choice(choices: Collection[Any], doc: str = "", default: Any = None) -> dict[str, Any]:
    return _doc({"enum": list(choices)}, doc, default)


def s_string(doc: str = "", *, nonempty: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if nonempty:
        out["pattern"] = r"\S"
    return _doc(out, doc)


def s_bool(doc: str = "", default: bool | None = None) -> dict[str, Any]:
    return _doc({"type": "boolean"}, doc, default)


def s_id(doc: str = "", rule: re.Pattern[str] = ID) -> dict[str, Any]:
    return _doc({"type": "string", "pattern": f"^{rule.pattern}$"}, doc)


def s_list(items: dict[str, Any], doc: str = "", *, min_items: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    return _doc(out, doc)


def s_table(
    properties: Mapping[str, dict[str, Any]],
    doc: str = "",
    required: Collection[str] = (),
    *,
    closed: bool = True,
) -> dict[str, Any]:
    """An object with these fields (closed: no others, as the checker refuses unknown ones)."""
    out: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return _doc(out, doc)


def s_map(values: dict[str, Any], doc: str = "", rule: re.Pattern[str] = ID) -> dict[str, Any]:
    """A table keyed by ids (or names), each value of one schema."""
    out = {
        "type": "object",
        "propertyNames": {"pattern": f"^{rule.pattern}$"},
        "additionalProperties": values,
    }
    return _doc(out, doc)


def _doc(schema: dict[str, Any], doc: str, default: Any = None) -> dict[str, Any]:
    if doc:
        schema["description"] = doc
    if default is not None:
        schema["default"] = default
    return schema
