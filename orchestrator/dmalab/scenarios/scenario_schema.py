"""The JSON Schema of scenario files (docs/schemas/scenario-file.schema.json, docs/schemas.md),
made from the field lists, ranges and choices `declarative` checks with: a field the parser
reads and the schema lacks fails here (a KeyError). Which fields each action takes is in the
schema too; rules across tables (step numbers, map and unmap pairing, buffer bounds, names
that refer to each other) are the checker's alone."""

from __future__ import annotations

from typing import Any

from dmalab.scenarios import declarative as d
from dmalab.scenarios.api import PAGE
from dmalab.scenarios.declarations import CELL_TOPOLOGIES, POLICIES
from dmalab.spec.tables import (
    DRAFT,
    NAME,
    s_bool,
    s_choice,
    s_id,
    s_integer,
    s_list,
    s_map,
    s_string,
    s_table,
)

_RANGE_TEXT = r"^\s*(all|page\s+[0-9]+|pages\s+[0-9]+-[0-9]+)\s*$"


def _fields(keys: tuple[str, ...], known: dict[str, Any]) -> dict[str, Any]:
    return {key: known[key] for key in keys}


def _names(choices: tuple[str, ...], doc: str) -> dict[str, Any]:
    return s_list(s_choice(choices), doc)


def _range(doc: str) -> dict[str, Any]:
    span = {
        "offset": s_integer(0, d.MAX_BUFFER, "bytes"),
        "length": s_integer(1, d.MAX_BUFFER, "bytes"),
    }
    return {
        "description": doc,
        "oneOf": [
            {"type": "string", "pattern": _RANGE_TEXT},
            s_table(_fields(d.SPAN_KEYS, span), required=d.SPAN_KEYS),
        ],
    }


def _step() -> dict[str, Any]:
    pattern = s_integer(0, (1 << 64) - 1, "a CPU pattern's seed or a 64-bit fill")
    known = {
        "n": s_integer(1, d.MAX_STEP, "the step number"),
        "action": s_choice(d.ACTIONS),
        "actor": s_string('"driver A" or "device A"'),
        "buffer": s_id("default: the only buffer"),
        "only-in": s_list(s_id(), "run only in these variants", min_items=1),
        "skip-in": s_list(s_id(), "run in every variant but these", min_items=1),
        "read": _range("cpu: what the driver reads"),
        "write": _range("cpu: what the driver writes"),
        "pattern": pattern,
        "sync": s_bool("cpu: bracket with DMA_BUF_IOCTL_SYNC", False),
        "label": s_string("the step's name in results"),
        "direction": s_choice(d.DIRECTIONS, "map", "BIDIRECTIONAL"),
        "from": _range("dma-copy: the source"),
        "to": _range("dma-copy, dma-fill: the destination"),
        "to-buffer": s_id("dma-copy into another buffer"),
        "status": s_choice(d.STATUSES, "each descriptor's expected status", "OK"),
        "range": _range("check: what the host reads (default all)"),
        "equals": s_choice(d.EQUALS, "check: what the bytes must be", "coherent"),
    }
    every = (*d.COMMON_STEP_KEYS, *(k for keys in d.STEP_KEYS.values() for k in keys))
    per_action = [
        {
            "if": {"properties": {"action": {"const": action}}},
            "then": {"propertyNames": {"enum": [*d.COMMON_STEP_KEYS, *keys]}},
        }
        for action, keys in d.STEP_KEYS.items()
    ]
    step = s_table(_fields(tuple(dict.fromkeys(every)), known), "one row", ("n", "action"))
    return {**step, "allOf": per_action}


def _variant() -> dict[str, Any]:
    steps = s_list(s_integer(1, d.MAX_STEP), "where it must be caught")

    def overrides(flags: tuple[str, ...]) -> dict[str, Any]:
        override = {"flags": _names(flags, "flags"), "faults": _names(d.FAULTS, "faults")}
        return s_map(s_table(_fields(d.OVERRIDE_KEYS, override)), "replace flags or faults")

    cell = {
        "policy": s_choice(tuple(POLICIES)),
        "expect": s_choice(d.CELL_EXPECTATIONS),
        "why": s_string("the reason, from the device and the driver", nonempty=True),
        "steps": steps,
        "on": s_choice(CELL_TOPOLOGIES, default="any"),
    }
    known = {
        "name": s_id("unique"),
        "expect": s_choice(d.EXPECTATIONS),
        "steps": steps,
        "about": s_string("one line"),
        "concurrent": s_bool("overrides the top-level concurrent"),
        "buffers": overrides(d.BUF_FLAGS),
        "actors": overrides(d.ATT_FLAGS),
        "cell": s_list(s_table(_fields(d.CELL_KEYS, cell), required=("policy", "expect", "why"))),
    }
    return s_table(_fields(d.VARIANT_KEYS, known), "one way to run the steps", ("name", "expect"))


def schema() -> dict[str, Any]:
    buffer = {
        "pages": s_integer(1, d.MAX_BUFFER // PAGE, "4 KiB pages"),
        "bytes": s_integer(1, d.MAX_BUFFER, "bytes"),
        "exporter": s_id("the exporting device's topology id"),
        "flags": _names(d.BUF_FLAGS, "export flags"),
        "faults": _names(d.FAULTS, "the exporter's faulty modes"),
    }
    actor = {
        "device": s_id("the device's topology id"),
        "buffers": s_list(s_id(), "the buffers it attaches to (default: all)"),
        "flags": _names(d.ATT_FLAGS, "attachment flags"),
        "faults": _names(d.FAULTS, "the attachment's faulty modes"),
    }
    buffers = s_table(_fields(d.BUFFER_KEYS, buffer), required=("exporter",))
    buffers["oneOf"] = [{"required": ["pages"]}, {"required": ["bytes"]}]
    actors = {"oneOf": [s_id(), s_table(_fields(d.ACTOR_KEYS, actor), required=("device",))]}
    top = {
        "name": s_id("default: the file name without .toml", NAME),
        "seed": s_string("the seed or scenario number"),
        "title": s_string("one line saying what the scenario shows", nonempty=True),
        "concurrent": s_bool("each actor's steps on a thread of its own", False),
        "buffers": {**s_map(buffers, "the buffers, in file order"), "minProperties": 1},
        "actors": {**s_map(actors, "A: driver A and device A"), "minProperties": 1},
        "step": s_list(_step(), "the steps, in the order they run", min_items=1),
        "variant": s_list(_variant(), "the variants", min_items=1),
    }
    required = ("title", "buffers", "actors", "step", "variant")
    return {
        "$schema": DRAFT,
        "title": "dmalab scenario file (docs/scenario-files.md)",
        **s_table(_fields(d.TOP_KEYS, top), required=required),
    }
