"""Generate the C header for ncdma from the construct declarations in `dmalab.spec.ncdma`.

The header serves both QEMU (stdint types) and the Linux driver (linux/types.h), so it holds only
constants, offsets, X-macros and packed little-endian structs, never logic.
"""

from __future__ import annotations

import construct as c

from dmalab.spec import ncdma

HEADER_NAME = "ncdma-hw.h"
_C_INT = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}


def _field(sc: c.Construct) -> tuple[str, c.Construct, str]:
    """(name, innermost construct, doc) of a struct member, looking through Renamed layers."""
    name = sc.name
    doc = ""
    while isinstance(sc, c.Renamed):
        doc = doc or (sc.docs or "")
        sc = sc.subcon
    return name, sc, doc


def _comment(doc: str) -> str:
    return f" /* {doc} */" if doc else ""


def _enum_block(prefix: str, con: c.Construct) -> list[str]:
    mapping = con.encmapping if isinstance(con, c.Enum) else con.flags
    width = max(len(k) for k in mapping)
    lines = [f"#define {prefix}_{k.upper():<{width}} 0x{v:x}" for k, v in mapping.items()]
    if isinstance(con, c.Enum):
        names = " ".join(f"X({k.upper()}, {v})" for k, v in mapping.items())
        lines.append(f"#define {prefix}_LIST(X) {names}")
    return lines


def _enum_blocks(enums: tuple[tuple[str, c.Construct], ...]) -> list[str]:
    """The `_enum_block` of each (prefix, construct), a blank line before each."""
    out: list[str] = []
    for prefix, con in enums:
        out += ["", *_enum_block(prefix, con)]
    return out


def _struct_block(cname: str, prefix: str, struct: c.Struct) -> list[str]:
    lines = [f"struct {cname} {{"]
    offsets = []
    offset = 0
    for sc in struct.subcons:
        name, inner, doc = _field(sc)
        size = sc.sizeof()
        if name is None:
            lines.append(f"    uint8_t pad_{offset:03x}[{size}];")
        elif isinstance(inner, c.Struct):
            lines.append(f"    struct {cname}_{name.lower()} {name.lower()};{_comment(doc)}")
        else:
            lines.append(f"    {_C_INT[size]} {name.lower()};{_comment(doc)}")
            offsets.append(f"#define {prefix}_{name.upper():<10} 0x{offset:03x}")
        offset += size
    lines.append("} __attribute__((packed));")
    return offsets + lines


def _property_lines(props: tuple[ncdma.DeviceProperty, ...]) -> list[str]:
    """The X-macro's body, one property a line, continued with backslashes."""
    lines = [
        f'    X({"BOOL" if p.boolean else "UINT32"}, "{p.name}", {p.field}, '
        f"0x{p.default:x}, 0x{p.lo:x}, 0x{p.hi:x})"
        for p in props
    ]
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


_TOP = (
    "/* SPDX-License-Identifier: GPL-2.0-or-later */",
    "/*",
    " * ncdma hardware interface: PCI identity, BAR0 registers, descriptors, counters.",
    " * Generated from orchestrator/dmalab/spec/ncdma.py by `dmalab spec header`: do not edit.",
    " * Everything is little-endian.",
    " */",
    "#ifndef NCDMA_HW_H",
    "#define NCDMA_HW_H",
    "",
    "#ifdef __KERNEL__",
    "#include <linux/types.h>",
    "#else",
    "#include <stdint.h>",
    "#endif",
    "",
)
_BOTTOM = (
    "",
    "#ifndef __KERNEL__",
    '_Static_assert(sizeof(struct ncdma_desc) == NCDMA_DESC_SIZE, "descriptor size");',
    "#endif",
    "",
    "#endif /* NCDMA_HW_H */",
    "",
)
#: The spec's constants the header defines, as NCDMA_<name>.
_CONSTANTS = (
    "PCI_VENDOR_ID", "PCI_DEVICE_ID", "PCI_REVISION", "REGS_BAR", "MSIX_BAR", "REGS_BAR_SIZE",
    "MSIX_VECTORS", "VEC_COMPLETION", "VEC_ERROR", "ID_MAGIC", "VERSION", "DESC_SIZE",
    "RING_ALIGN", "RING_MIN_ENTRIES", "RING_MAX_ENTRIES", "DESC_FLAGS_VALID", "COUNTERS_OFFSET",
)  # fmt: skip
#: Enum prefix in C, enum in the spec.
_ENUMS = (
    ("NCDMA_OP", ncdma.Opcode),
    ("NCDMA_DESC_F", ncdma.DescFlags),
    ("NCDMA_ST", ncdma.Status),
    ("NCDMA_CTRL", ncdma.Ctrl),
    ("NCDMA_STATUS", ncdma.DevStatus),
    ("NCDMA_RING_ERR", ncdma.RingError),
    ("NCDMA_CAP", ncdma.Caps),
    ("NCDMA_IRQ", ncdma.IrqStatus),
    ("NCDMA_VIOL", ncdma.ViolationKind),
)


def _counter_lines() -> list[str]:
    names = ncdma.COUNTER_NAMES
    return [
        "",
        "/* Counters, in this order, at NCDMA_COUNTERS_OFFSET and over QMP */",
        f"#define NCDMA_NR_COUNTERS {len(names)}",
        *(f"#define NCDMA_CNT_{name.upper()} {i}" for i, name in enumerate(names)),
        "#define NCDMA_COUNTER_LIST(X) " + " ".join(f"X({name})" for name in names),
    ]


def generate() -> str:
    n = ncdma
    out = list(_TOP)
    out += [f"#define NCDMA_{const} 0x{getattr(n, const):x}" for const in _CONSTANTS]
    out += _enum_blocks(_ENUMS)
    out += ["", "/* BAR0 register offsets */"]
    width = max(len(k) for k in n.REG)
    out += [f"#define NCDMA_REG_{k:<{width}} 0x{v:03x}" for k, v in n.REG.items()]
    out += [
        "",
        "/* Descriptor: one ring entry */",
        *_struct_block("ncdma_desc", "NCDMA_DESC", n.Descriptor),
    ]
    out += _counter_lines()
    out += [
        "",
        "/* -device ncdma properties: X(TYPE, name, field, default, min, max) (QEMU's device) */",
        "#define NCDMA_PROPERTIES(X) \\",
        *_property_lines(n.PROPERTIES),
    ]
    out += _BOTTOM
    return "\n".join(out)
