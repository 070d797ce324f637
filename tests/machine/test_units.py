"""compare, the q35 RAM layout and IOVA resolution: no QEMU needed."""

from __future__ import annotations

import pytest

from dmalab.machine.compare_bytes import BytesDiffer, assert_same, compare
from dmalab.machine.devices import Segment, Transaction
from dmalab.machine.guestmem import (
    GiB,
    GuestMemoryError,
    Q35Layout,
    SharedRam,
    VirtLayout,
    iova_segments,
    ram_layout,
)


def test_compare_equal_and_different() -> None:
    data = bytes(range(256)) * 4
    assert compare(data, bytearray(data)) is None
    changed = bytearray(data)
    changed[0x23] ^= 0xFF
    changed[0x24] ^= 0xFF
    changed[0x200] = 0xAA
    diff = compare(data, changed, base=0x1000)
    assert diff is not None
    assert (diff.first, diff.differing, diff.runs) == (0x23, 3, [(0x23, 2), (0x200, 1)])
    text = str(diff)
    assert "3 of 1024 bytes differ in 2 runs, first at offset 0x23 (address 0x1023)" in text
    assert "- 0x000000001020  20 21 22 23 24" in text
    assert "+ 0x000000001020  20 21 22 dc db" in text
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("+ 0x000000001020"))
    assert lines[row + 1].index("^^") == lines[row].index("dc")
    with pytest.raises(BytesDiffer, match="buffer: 3 of 1024"):
        assert_same(data, changed, "buffer")


def test_compare_lengths() -> None:
    diff = compare(b"abcd", b"abc")
    assert diff is not None and diff.first == 3 and "lengths differ" in diff.summary()


@pytest.mark.parametrize(
    ("ram", "low", "high"),
    [
        (512 << 20, 512 << 20, 0),
        (int(2.75 * GiB) - 4096, int(2.75 * GiB) - 4096, 0),
        (int(2.75 * GiB), 2 * GiB, int(0.75 * GiB)),
        (4 * GiB, 2 * GiB, 2 * GiB),
    ],
)
def test_q35_layout(ram: int, low: int, high: int) -> None:
    layout = Q35Layout(ram)
    assert (layout.below_4g, layout.above_4g) == (low, high)
    if high:
        assert layout.offset(4 * GiB + 5) == low + 5
        with pytest.raises(GuestMemoryError):
            layout.offset(low - 1, 2)  # runs into the PCI hole
    with pytest.raises(GuestMemoryError):
        layout.offset(4 * GiB + high)


def test_virt_layout_starts_at_one_gib() -> None:
    layout = ram_layout("aarch64", 512 << 20)
    assert isinstance(layout, VirtLayout) and layout.ranges() == [(GiB, 512 << 20, 0)]
    assert layout.offset(GiB) == 0 and layout.offset(GiB + (512 << 20) - 8, 8) == (512 << 20) - 8
    for pa, n in ((GiB - 1, 2), (GiB + (512 << 20) - 4, 8), (0, 1)):
        with pytest.raises(GuestMemoryError):
            layout.offset(pa, n)
    assert isinstance(ram_layout("x86_64", 512 << 20), Q35Layout)


def test_shared_ram_views_are_live() -> None:
    with SharedRam(1 << 20, name="dmalab-test") as ram:
        view = ram.view(0x1000, 4)
        view[:] = b"abcd"
        assert bytes(ram.view(0x1000, 4)) == b"abcd"
        with open(f"/proc/self/fd/{ram.fd}", "rb") as f:  # the memfd itself holds the bytes
            f.seek(0x1000)
            assert f.read(4) == b"abcd"
        view.release()


def test_iova_segments() -> None:
    tx = Transaction(
        1,
        0,
        "COPY",
        0,
        "OK",
        0,
        0,
        0,
        0,
        [Segment(0x10000, 0x5000, 0x1000, False), Segment(0x11000, 0x9000, 0x1000, False)],
    )
    assert iova_segments([tx], 0x10800, 0x1000) == [(0x5800, 0x800), (0x9000, 0x800)]
    with pytest.raises(GuestMemoryError, match="0x12000"):
        iova_segments([tx], 0x11800, 0x1000)
