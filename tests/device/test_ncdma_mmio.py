"""ncdma DMA whose target is not memory: another device's registers, the MSI window, or nothing.

Such bytes never go through the device cache (no line is filled, allocated or written back): a
device's registers and the MSI window take one plain, uncached bus access; where nothing answers
the descriptor ends with BUS_ERROR. Checked without an IOMMU and behind intel-iommu, whose MSI
window is not translated, for a cached device and a coherent one alike; and which status wins
when one descriptor has several faults (docs/ncdma.md, "Status precedence").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmalab.machine.ncdma_host import Desc, copy, fill, maint
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice, ncdma_rig
from dmalab.spec import ncdma as spec

VTD = "intel-iommu,caching-mode=on"
MSI_WINDOW = 0xFEE0_0000
BEYOND_RAM = 0x2_0000_0000  # no RAM, no device: q35 with 256 MiB
U64 = (1 << 64) - 1
CACHE_COUNTERS = (
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "cache_writebacks",
    "cache_invalidations",
)
NO_LINES = dict.fromkeys(CACHE_COUNTERS, 0)


@pytest.fixture(params=[None, VTD], ids=["no-iommu", "intel-iommu"])
def iommu(request: pytest.FixtureRequest) -> str | None:
    return request.param


@pytest.fixture(params=["", "coherent=on"], ids=["cached", "coherent"])
async def rig(
    qemu_argv: list[str], artifacts: Path, iommu: str | None, request: pytest.FixtureRequest
) -> AsyncIterator[NcdmaRig]:
    """Device 0 under test; device 1 a peer whose registers are the MMIO target."""
    async with ncdma_rig(
        qemu_argv, (request.param, "coherent=on"), iommu=iommu, artifacts_dir=artifacts
    ) as r:
        yield r


async def cache_counters(rig: NcdmaRig, dev: RigDevice) -> dict[str, int]:
    counters = await rig.qom(dev, "counters")
    return {name: counters[name] for name in CACHE_COUNTERS}


async def statuses(dev: RigDevice, descs: list[Desc]) -> list[tuple[str, int]]:
    return [(c.status, c.done) for c in await dev.host.submit(descs)]


async def test_another_devices_registers_are_accessed_uncached(rig: NcdmaRig) -> None:
    dev, peer = rig.devices
    regs = await rig.map(dev, peer.host.bar0, PAGE)
    buf_pa = rig.alloc(PAGE)
    buf = await rig.map(dev, buf_pa, PAGE)
    await rig.reset_stats(dev)
    base_lo = spec.REG["RING_BASE_LO"]

    # A FILL into the peer's RING_BASE_LO/HI is one 8-byte register write.
    assert await statuses(dev, [fill(regs + base_lo, 8, 0x0000_1234_5678_9AC0)]) == [("OK", 8)]
    assert await peer.host.reg("RING_BASE_LO") == 0x5678_9AC0
    assert await peer.host.reg("RING_BASE_HI") == 0x1234
    assert await cache_counters(rig, dev) == NO_LINES
    tx = (await rig.qom(dev, "transactions"))[-1]
    assert tx["segments"] == [
        {"iova": regs + base_lo, "pa": peer.host.bar0 + base_lo, "len": 8, "write": True}
    ]

    # ncdma's registers take 4 and 8 bytes: a single byte is refused.
    assert await statuses(dev, [fill(regs + base_lo, 1, 0xEE)]) == [("BUS_ERROR", 0)]
    assert await peer.host.reg("RING_BASE_LO") == 0x5678_9AC0
    await rig.reset_stats(dev)

    # Reads are not cached either: a register that changed reads as it is now, never stale.
    await peer.host.set_reg("RING_BASE_LO", 0x0BAD_F00D)
    done = await statuses(
        dev,
        [
            copy(buf, regs, 8),  # ID and VERSION
            copy(buf + 64, regs + base_lo, 4),
            maint("CLEAN_INVALIDATE", regs, 64),  # nothing of the peer is cached: a no-op
            maint("CLEAN"),
        ],
    )
    assert done == [("OK", 8), ("OK", 4), ("OK", 64), ("OK", 0)]
    memory = await rig.qtest.read(buf_pa, 68)
    assert memory[:8] == spec.ID_MAGIC.to_bytes(4, "little") + spec.VERSION.to_bytes(4, "little")
    assert memory[64:68] == (0x0BAD_F00D).to_bytes(4, "little")
    counters = await rig.qom(dev, "counters")
    cached = bool(await dev.host.reg("CACHE_LINE"))
    # Only the destination's two lines in RAM were allocated, and written back by CLEAN.
    assert {k: counters[k] for k in CACHE_COUNTERS} == (
        {**NO_LINES, "cache_misses": 2, "cache_writebacks": 2, "cache_invalidations": 0}
        if cached
        else NO_LINES
    )
    assert counters["stale_reads"] == 0 and counters["bus_errors"] == 0
    assert counters["bytes_read"] == 12


async def test_the_msi_window_takes_a_plain_write(rig: NcdmaRig, iommu: str | None) -> None:
    """Behind intel-iommu the window is not translated (it is never mapped here): the write is
    an interrupt message, not a translation fault."""
    dev = rig.devices[0]
    await rig.reset_stats(dev)
    assert await statuses(dev, [fill(MSI_WINDOW, 4, 0x30)]) == [("OK", 4)]
    counters = await rig.qom(dev, "counters")
    assert {k: counters[k] for k in CACHE_COUNTERS} == NO_LINES
    assert counters["translation_faults"] == 0 and counters["bus_errors"] == 0
    assert counters["bytes_written"] == 4
    (segment,) = (await rig.qom(dev, "transactions"))[-1]["segments"]
    assert (segment["iova"], segment["pa"]) == (MSI_WINDOW, MSI_WINDOW)
    if iommu is not None:
        assert not await rig.iommu.faults()
        # VT-d's interrupt window takes 4-byte writes only.
        assert await statuses(dev, [fill(MSI_WINDOW, 1, 0x30)]) == [("BUS_ERROR", 0)]


async def test_no_memory_at_all_is_a_bus_error(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    nothing = await rig.map(dev, BEYOND_RAM, PAGE)  # behind the IOMMU: mapped, to no memory
    buf_pa = rig.alloc(PAGE)
    buf = await rig.map(dev, buf_pa, PAGE)
    canary = bytes(range(256)) * (PAGE // 256)
    await rig.qtest.write(buf_pa, canary)
    await rig.reset_stats(dev)
    done = await statuses(
        dev,
        [
            fill(nothing, 64, 0x5A5A),
            fill(nothing + 100, PAGE - 100, 1),
            copy(buf, nothing, 64),
            copy(buf + 128, nothing + 8, 300),
        ],
    )
    assert done == [("BUS_ERROR", 0)] * 4
    counters = await rig.qom(dev, "counters")
    assert {k: counters[k] for k in CACHE_COUNTERS} == NO_LINES
    assert counters["bus_errors"] == 4 and counters["translation_faults"] == 0
    assert counters["bytes_written"] == 0
    assert (await statuses(dev, [maint("CLEAN_INVALIDATE")])) == [("OK", 0)]
    assert await rig.qtest.read(buf_pa, PAGE) == canary


async def test_its_own_registers_are_a_bus_error(rig: NcdmaRig) -> None:
    """A device cannot reach its own registers by DMA (QEMU refuses the re-entrant access)."""
    dev = rig.devices[0]
    own = await rig.map(dev, dev.host.bar0, PAGE)
    buf = await rig.map(dev, rig.alloc(PAGE), PAGE)
    await rig.reset_stats(dev)
    done = await statuses(
        dev, [fill(own + spec.REG["RING_BASE_LO"], 4, 0xFFFF_FFFF), copy(buf, own, 8)]
    )
    assert done == [("BUS_ERROR", 0)] * 2
    assert await dev.host.reg("RING_BASE_LO") == dev.host.ring_iova & 0xFFFF_FFFF
    assert await cache_counters(rig, dev) == NO_LINES


@pytest.mark.parametrize("device", ["", "coherent=on"], ids=["cached", "coherent"])
async def test_status_precedence(qemu_argv: list[str], artifacts: Path, device: str) -> None:
    """The checks of the descriptor first (flags, opcode, length, address), then piece by piece
    in address order: the source's translation, the destination's (either may fault or lead to
    nothing), then the accesses."""
    async with ncdma_rig(
        qemu_argv, (device, "coherent=on"), iommu=VTD, artifacts_dir=artifacts
    ) as rig:
        dev, peer = rig.devices
        mmio = await rig.map(dev, peer.host.bar0, PAGE)  # the next IOVA page is unmapped
        nothing = await rig.map(dev, BEYOND_RAM, PAGE)
        own = await rig.map(dev, dev.host.bar0, PAGE)
        unmapped = 0x9_0000_0000
        max_xfer = await dev.host.reg("MAX_XFER")
        await rig.reset_stats(dev)
        cases = [
            (Desc(99, dst=unmapped, len=0, raw={"flags": 0x80}), "BAD_FLAGS"),
            (Desc("COPY", dst=mmio, src=unmapped, len=0, whole=True), "BAD_FLAGS"),
            (Desc(99, dst=unmapped, len=0), "BAD_OPCODE"),
            (copy(mmio, U64, 0), "BAD_LENGTH"),
            (copy(unmapped, nothing, max_xfer + 1), "BAD_LENGTH"),
            (copy(unmapped, U64 - 3, 8), "BAD_ADDRESS"),
            (fill(U64 - 3, 8, 1), "BAD_ADDRESS"),
            (copy(mmio, unmapped, 8), "IOMMU_FAULT"),
            (copy(unmapped, mmio, 8), "IOMMU_FAULT"),
            (copy(unmapped, own, 8), "IOMMU_FAULT"),  # translations before any access
            (copy(unmapped, nothing, 8), "BUS_ERROR"),  # the source translates to nothing
            (copy(nothing, unmapped, 8), "IOMMU_FAULT"),
            (copy(mmio + 0x30, nothing, 8), "BUS_ERROR"),
            (copy(nothing, mmio, 8), "BUS_ERROR"),
            (copy(mmio, own, 8), "BUS_ERROR"),  # the access is refused
        ]
        got = await statuses(dev, [d for d, _ in cases])
        assert got == [(want, 0) for _, want in cases]
        # A fault in a later piece: the piece before it (the last word of the peer's
        # registers) moved, the one after the mapping did not.
        assert await statuses(dev, [fill(mmio + PAGE - 4, 8, 1)]) == [("IOMMU_FAULT", 4)]
        counters = await rig.qom(dev, "counters")
        assert {k: counters[k] for k in CACHE_COUNTERS} == NO_LINES
        assert (counters["translation_faults"], counters["bus_errors"]) == (5, 4)
