"""The fuzzer's prediction of a transfer's status and `done` from what lies at its addresses
(docs/ncdma.md, "DMA to what is not memory" and "Status precedence")."""

from __future__ import annotations

import pytest

from dmalab.fuzz.model import (
    MSI_WINDOW,
    allocates_no_line,
    expected_transfer,
    q35_address_map,
)
from dmalab.fuzz.operations import OPS, ST, DescOp

RAM_END = 0x1000_0000
OWN = 0xE000_0000
MSI = MSI_WINDOW
MAP = q35_address_map(iommu=False, ram_end=RAM_END, bar0=OWN)
VTD_MSI = q35_address_map(iommu=True, ram_end=RAM_END, bar0=OWN)
MAX_XFER = 64 << 20


def desc(op: str, dst: int, length: int, src: int = 0) -> DescOp:
    return DescOp(OPS[op], 0, src, dst, length, 0, 1)


@pytest.mark.parametrize(
    ("d", "want"),
    [
        (desc("FILL", 0x20_0000, 4096), ("OK", 4096)),
        (desc("FILL", RAM_END - 100, 300), ("BUS_ERROR", 100)),  # runs off RAM
        (desc("COPY", 0x20_0000, 300, src=RAM_END - 40), ("BUS_ERROR", 40)),
        (desc("COPY", MSI + 4, 16, src=0x20_0000), ("OK", 16)),
        (desc("FILL", OWN + 0x30, 4), ("BUS_ERROR", 0)),
        (desc("COPY", 0x20_0000, 8, src=OWN), ("BUS_ERROR", 0)),
        (desc("COPY", 0x20_0000, 8, src=0x1000), None),  # the legacy area: not modelled
        (desc("FILL", 0x1_2000_0000, 8), ("BUS_ERROR", 0)),  # above 4 GiB, below the BARs
        (desc("FILL", (1 << 64) - 64, 64), ("BUS_ERROR", 0)),
        (desc("CLEAN", OWN, 64), ("OK", 64)),  # maintenance makes no access
        (desc("CLEAN", RAM_END - 64, 128), ("BUS_ERROR", 64)),
    ],
)
def test_expected_transfer(d: DescOp, want: tuple[str, int] | None) -> None:
    got = expected_transfer(d, MAP, cached=True)
    assert got == (None if want is None else (ST[want[0]], want[1]))


def test_maintenance_without_a_cache_is_always_ok() -> None:
    assert expected_transfer(desc("INVALIDATE", RAM_END, 64), MAP, cached=False) == (ST["OK"], 64)


@pytest.mark.parametrize(
    ("dst", "length", "want"),
    [
        (MSI, 4, ("OK", 4)),
        (MSI + 0x40, 64, ("OK", 64)),
        (MSI + 1, 4, ("BUS_ERROR", 0)),
        (MSI, 6, ("BUS_ERROR", 0)),
        (MSI + 0xFFE, 4, None),  # two pieces: which one fails is not modelled
    ],
)
def test_word_registers(dst: int, length: int, want: tuple[str, int] | None) -> None:
    got = expected_transfer(desc("FILL", dst, length), VTD_MSI, cached=False)
    assert got == (None if want is None else (ST[want[0]], want[1]))


def test_allocates_no_line() -> None:
    assert allocates_no_line(desc("FILL", MSI, 64), MAP, MAX_XFER)
    assert allocates_no_line(desc("COPY", OWN, 64, src=MSI), MAP, MAX_XFER)
    assert allocates_no_line(desc("FILL", 0x20_0000, 0), MAP, MAX_XFER)  # BAD_LENGTH
    assert not allocates_no_line(desc("COPY", OWN, 64, src=0x20_0000), MAP, MAX_XFER)
    assert not allocates_no_line(desc("FILL", 0x1000, 64), MAP, MAX_XFER)  # not modelled
