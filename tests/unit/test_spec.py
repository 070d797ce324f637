"""The ncdma spec is self-consistent and docs/ncdma.md describes every name it declares."""

from __future__ import annotations

import re
from pathlib import Path

import construct as c
import pytest

from dmalab.spec import ncdma

DOC = (Path(__file__).resolve().parents[2] / "docs" / "ncdma.md").read_text()


def test_descriptor_is_64_bytes_and_round_trips() -> None:
    assert ncdma.Descriptor.sizeof() == ncdma.DESC_SIZE == 64
    raw = ncdma.Descriptor.build(
        dict(
            opcode="FILL",
            flags=dict(IRQ=True),
            status="OK",
            cookie=7,
            src=1,
            dst=2,
            len=3,
            pattern=0x0102030405060708,
            done=4,
        )
    )
    parsed = ncdma.Descriptor.parse(raw)
    assert parsed.opcode == "FILL" and parsed.flags.IRQ and not parsed.flags.WHOLE
    assert parsed.reserved0 == parsed.reserved1 == 0
    assert raw[0x28:0x30] == bytes([8, 7, 6, 5, 4, 3, 2, 1])


def test_reserved_fields_are_zero_unless_raw() -> None:
    fields = dict(opcode="NOP", flags=0, status="PENDING", cookie=0, src=0, dst=0, len=0)
    fields |= dict(pattern=0, done=0)
    with pytest.raises(c.ConstructError):
        ncdma.Descriptor.build({**fields, "reserved1": 1})
    raw = ncdma.RawDescriptor.build({**fields, "reserved0": 0x8000, "reserved1": 1})
    assert ncdma.RawDescriptor.sizeof() == ncdma.DESC_SIZE
    assert ncdma.RawDescriptor.parse(raw).reserved0 == 0x8000
    with pytest.raises(c.ConstructError):
        ncdma.Descriptor.parse(raw)
    assert ncdma.RawDescriptor.build(fields) == ncdma.Descriptor.build(fields)


def test_register_layout() -> None:
    assert ncdma.REG["RING_TAIL"] == 0x40
    assert ncdma.REG["COUNTERS"] == ncdma.COUNTERS_OFFSET
    assert ncdma.Registers.sizeof() <= ncdma.REGS_BAR_SIZE
    offsets = list(ncdma.REG.values())
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


@pytest.mark.parametrize("name", list(ncdma.REG))
def test_every_register_is_documented_at_its_offset(name: str) -> None:
    row = re.search(rf"^\| 0x{ncdma.REG[name]:03x} \| `{name}` \|", DOC, re.M)
    assert row, f"docs/ncdma.md has no row for {name} at 0x{ncdma.REG[name]:03x}"


@pytest.mark.parametrize(
    "name",
    [
        *ncdma.COUNTER_NAMES,
        *(sc.name for sc in ncdma.Descriptor.subcons),
        *list(ncdma.Status.encmapping),
        *list(ncdma.ViolationKind.encmapping),
        *list(ncdma.RingError.encmapping),
    ],
)
def test_every_name_is_documented(name: str) -> None:
    assert f"`{name}`" in DOC, f"docs/ncdma.md does not mention `{name}`"
