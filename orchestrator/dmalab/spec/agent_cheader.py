"""Generate the guest agent's C protocol header from `dmalab.spec.agent`.

`dmalab spec header [--check]` writes (or checks) guest-tests/agent/agent-proto.h with it. Like
ncdma-hw.h it holds only constants, packed little-endian structs and X-macros, and a test fails
when the committed file differs from what this module generates.
"""

from __future__ import annotations

import re

import construct as c

from dmalab.spec import agent
from dmalab.spec.cheader import _comment, _enum_blocks, _field

HEADER_NAME = "agent-proto.h"
_UINT = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
_SINT = {1: "int8_t", 2: "int16_t", 4: "int32_t", 8: "int64_t"}


def struct_names() -> dict[int, str]:
    """C struct name of every Struct the spec names at module level (by object identity):
    BufCreateRequest -> agent_buf_create_request."""
    names: dict[int, str] = {}
    for attr, value in vars(agent).items():
        if isinstance(value, c.Struct) and value.subcons and attr[0].isupper():
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", attr).lower()
            names.setdefault(id(value), f"agent_{snake}")
    return names


def _ctype(inner: c.Construct, size: int) -> tuple[str, str]:
    """(type, array suffix) of a field."""
    if isinstance(inner, c.Bytes):
        return "uint8_t", f"[{inner.length}]"
    if isinstance(inner, c.Array):
        sub = inner.subcon
        return _ctype(sub, sub.sizeof())[0], f"[{inner.count}]"
    while isinstance(inner, (c.Enum, c.FlagsEnum, c.Renamed)):
        inner = inner.subcon
    if isinstance(inner, c.FormatField) and inner.fmtstr[-1] in "bhilq":
        return _SINT[size], ""
    return _UINT[size], ""


def _struct(cname: str, struct: c.Struct) -> list[str]:
    lines = [f"struct {cname} {{"]
    for sc in struct.subcons:
        name, inner, doc = _field(sc)
        ctype, suffix = _ctype(inner, sc.sizeof())
        lines.append(f"    {ctype} {name}{suffix};{_comment(doc)}")
    lines.append("} __attribute__((packed));")
    return lines


def _tail_macro(tail: agent.Tail) -> str:
    return f"AGENT_TAIL_{tail.kind.name}"


def generate() -> str:
    a = agent
    names = struct_names()
    out: list[str] = [
        "/* SPDX-License-Identifier: GPL-2.0-or-later */",
        "/*",
        " * dmalab guest agent protocol: header, operations, request and reply structs.",
        " * Generated from orchestrator/dmalab/spec/agent.py by `dmalab spec header`: do not edit.",
        " * Everything is little-endian.",
        " */",
        "#ifndef DMALAB_AGENT_PROTO_H",
        "#define DMALAB_AGENT_PROTO_H",
        "",
        "#include <stdint.h>",
        "",
        f"#define AGENT_MAGIC 0x{a.MAGIC:x}",
        f"#define AGENT_VERSION {a.VERSION}",
        f"#define AGENT_HEADER_SIZE {a.HEADER_SIZE}",
        f"#define AGENT_MAX_PAYLOAD 0x{a.MAX_PAYLOAD:x}",
        f'#define AGENT_PORT_NAME "{a.PORT_NAME}"',
        f"#define AGENT_PATTERN_MIX 0x{a.PATTERN_MIX:x}ull",
        f"#define AGENT_ANY_DEVICE 0x{a.ANY_DEVICE:x}",
        f"#define AGENT_DRIVER_STATS_SLOTS {a.DRIVER_STATS_SLOTS}",
        f"#define AGENT_DEVICE_COUNTERS_MAX {a.DEVICE_COUNTERS_MAX}",
        "#define AGENT_TAIL_NONE 0",
        "#define AGENT_TAIL_BYTES 1",
        "#define AGENT_TAIL_ITEMS 2",
    ]
    enums = (
        ("AGENT_F", a.HeaderFlags),
        ("AGENT_BUF", a.BufKind),
        ("AGENT_WRITE", a.CpuWriteMode),
        ("AGENT_READ", a.CpuReadMode),
        ("AGENT_SYNC", a.SyncFlags),
    )
    out += _enum_blocks(enums)

    out += ["", "/* Structs */"]
    emitted: set[int] = set()
    for value in vars(a).values():
        if id(value) in names and id(value) not in emitted:
            emitted.add(id(value))
            out += ["", *_struct(names[id(value)], value)]

    out += [
        "",
        "/* Operations: X(NAME, code, request size, request tail, tail item size, offset of the",
        " * request's item count (0 without items)) */",
    ]
    width = max(len(op.name) for op in a.OPS)
    for op in a.OPS:
        out.append(f"#define AGENT_OP_{op.name:<{width}} 0x{op.code:02x} /* {op.doc} */")
    rows = []
    for op in a.OPS:
        tail = op.request_tail
        offset = 0
        if tail.kind is agent.TailKind.ITEMS:
            offset = next(
                sum(s.sizeof() for s in op.request.subcons[:i])
                for i, s in enumerate(op.request.subcons)
                if s.name == tail.count_field
            )
        rows.append(
            f"X({op.name}, 0x{op.code:02x}, {op.request.sizeof()}, {_tail_macro(tail)}, "
            f"{tail.item_size}, {offset})"
        )
    out.append("#define AGENT_OP_LIST(X) \\")
    out += [f"    {row} \\" for row in rows[:-1]]
    out.append(f"    {rows[-1]}")

    out += ["", "/* Sizes */"]
    for attr, value in vars(a).items():
        if id(value) in names and attr[0].isupper():
            cname = names[id(value)]
            out.append(f'_Static_assert(sizeof(struct {cname}) == {value.sizeof()}, "{cname}");')
            names.pop(id(value))
    out += ["", "#endif /* DMALAB_AGENT_PROTO_H */", ""]
    return "\n".join(out)
