"""ncdma against a hostile driver: every malformed ring set-up and descriptor gets its documented
status or ring error, nothing lands where it must not, and the device recovers after CTRL.RESET
with QEMU still answering QMP."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmalab.machine.ncdma_host import Desc, copy, fill, flags, maint
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice, ncdma_rig
from dmalab.spec import ncdma as spec

IOMMU = "intel-iommu,caching-mode=on"
U64 = (1 << 64) - 1
BEYOND_RAM = 0x2_0000_0000  # no RAM, no device: q35 with 256 MiB


@pytest.fixture
async def rig(qemu_argv: list[str], artifacts: Path) -> AsyncIterator[NcdmaRig]:
    async with ncdma_rig(qemu_argv, ("",), artifacts_dir=artifacts) as r:
        yield r


@pytest.fixture
async def iommu_rig(qemu_argv: list[str], artifacts: Path) -> AsyncIterator[NcdmaRig]:
    async with ncdma_rig(qemu_argv, ("",), iommu=IOMMU, artifacts_dir=artifacts) as r:
        yield r


async def ring_error(dev: RigDevice, timeout: float = 10.0) -> str:
    """The ERROR register once STATUS.RING_ERROR is set."""
    deadline = time.monotonic() + timeout
    while not await dev.host.reg("STATUS") & flags(spec.DevStatus, RING_ERROR=True):
        assert time.monotonic() < deadline, "the ring did not stop"
        await asyncio.sleep(0.001)
    return await dev.host.ring_error()


async def program(dev: RigDevice, base: int, size: int) -> None:
    await dev.host.set_reg("CTRL", flags(spec.Ctrl, RESET=True))
    await dev.host.set_reg("RING_BASE_LO", base & 0xFFFF_FFFF)
    await dev.host.set_reg("RING_BASE_HI", base >> 32)
    await dev.host.set_reg("RING_SIZE", size)
    await dev.host.set_reg("CTRL", flags(spec.Ctrl, ENABLE=True))


async def assert_recovers(rig: NcdmaRig, dev: RigDevice) -> None:
    """After CTRL.RESET and re-enabling, a COPY is byte-exact, and QEMU answers QMP."""
    await rig.vm.qmp.execute("query-status")
    await dev.host.set_reg("CTRL", flags(spec.Ctrl, RESET=True))
    assert await dev.host.reg("ERROR") == 0
    await dev.host.enable()
    src_pa, dst_pa = rig.alloc(2 * PAGE), rig.alloc(2 * PAGE)
    src, dst = await rig.map(dev, src_pa, 2 * PAGE), await rig.map(dev, dst_pa, 2 * PAGE)
    data = random.Random(1).randbytes(2 * PAGE - 5)
    await rig.qtest.write(src_pa, data)
    done = await dev.host.submit([copy(dst, src, len(data)), maint("CLEAN_INVALIDATE")])
    assert [c.status for c in done] == ["OK", "OK"]
    assert await rig.qtest.read(dst_pa, len(data)) == data
    assert (await rig.qom(dev, "counters"))["desc_completed"] >= 2


async def statuses(dev: RigDevice, descs: list[Desc]) -> list[tuple[str, int]]:
    return [(c.status, c.done) for c in await dev.host.submit(descs)]


# -- ring geometry and doorbells ---------------------------------------------------------------


async def test_ring_base_unaligned(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    await program(dev, dev.host.ring_iova + 8, 256)
    assert await ring_error(dev) == "BAD_BASE"
    await assert_recovers(rig, dev)


@pytest.mark.parametrize("size", [0, 1, 3, 100, 65535, 65537, 131072, 0xFFFF_FFFF])
async def test_ring_size_bad(rig: NcdmaRig, size: int) -> None:
    dev = rig.devices[0]
    await program(dev, dev.host.ring_iova, size)
    assert await ring_error(dev) == "BAD_SIZE"
    await assert_recovers(rig, dev)


async def test_ring_base_plus_size_wraps(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    await program(dev, (1 << 64) - 256 * spec.DESC_SIZE + spec.DESC_SIZE, 256)
    assert await ring_error(dev) == "BAD_BASE"
    await assert_recovers(rig, dev)


@pytest.mark.parametrize("tail", [256, 257, 65536, 0xFFFF_FFFF])
async def test_tail_beyond_ring(rig: NcdmaRig, tail: int) -> None:
    dev = rig.devices[0]
    await dev.host.set_reg("RING_TAIL", tail)
    assert await ring_error(dev) == "BAD_TAIL"
    assert await dev.host.reg("RING_HEAD") == 0
    await assert_recovers(rig, dev)


async def test_tail_while_disabled(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    await dev.host.set_reg("CTRL", 0)
    await dev.host.set_reg("RING_TAIL", 1)
    assert await ring_error(dev) == "NOT_READY"
    await assert_recovers(rig, dev)


async def test_tail_after_reset_not_configured(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    await dev.host.set_reg("CTRL", flags(spec.Ctrl, RESET=True))  # no ring latched any more
    await dev.host.set_reg("RING_TAIL", 0)
    assert await ring_error(dev) == "NOT_READY"
    await assert_recovers(rig, dev)


async def test_ring_in_unmapped_iova(iommu_rig: NcdmaRig) -> None:
    dev = iommu_rig.devices[0]
    await program(dev, 0x9_0000_0000, 256)
    assert not await dev.host.reg("STATUS") & flags(spec.DevStatus, RING_ERROR=True)
    await dev.host.set_reg("RING_TAIL", 1)
    assert await ring_error(dev) == "FETCH_FAULT"
    assert await dev.host.reg("RING_HEAD") == 0
    await assert_recovers(iommu_rig, dev)


async def test_ring_beyond_ram_without_iommu(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    await program(dev, BEYOND_RAM, 256)
    await dev.host.set_reg("RING_TAIL", 5)
    assert await ring_error(dev) == "FETCH_FAULT"
    await assert_recovers(rig, dev)


# -- descriptors -------------------------------------------------------------------------------


async def buffer(rig: NcdmaRig, dev: RigDevice, size: int = 2 * PAGE) -> tuple[int, int]:
    pa = rig.alloc(size)
    return pa, await rig.map(dev, pa, size)


async def test_bad_length(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    _, a = await buffer(rig, dev)
    _, b = await buffer(rig, dev)
    max_xfer = await dev.host.reg("MAX_XFER")
    descs = [
        copy(a, b, 0),
        fill(a, 0, 1),
        copy(a, b, max_xfer + 1),
        fill(a, max_xfer + 1, 1),
        copy(a, b, U64),
        fill(a, U64, 1),
        Desc("CLEAN", dst=a, len=0),
        Desc("INVALIDATE", dst=a, len=max_xfer + 1),
    ]
    assert await statuses(dev, descs) == [("BAD_LENGTH", 0)] * len(descs)
    assert (await dev.host.counters())["bytes_written"] == 0
    await assert_recovers(rig, dev)


async def test_bad_address_wraps(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    _, a = await buffer(rig, dev)
    descs = [
        fill(U64 - 10, 12, 1),
        fill(U64 - PAGE + 1, PAGE + 1, 1),
        copy(a, U64, 2),
        copy(U64 - 3, a, 5),
        Desc("CLEAN", dst=U64 - 63, len=65),
    ]
    assert await statuses(dev, descs) == [("BAD_ADDRESS", 0)] * len(descs)
    # ending exactly at 2^64 does not wrap: it is a bus error (no memory there)
    assert await statuses(dev, [fill(U64 - 63, 64, 1)]) == [("BUS_ERROR", 0)]
    await assert_recovers(rig, dev)


async def test_bad_flags(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    pa, a = await buffer(rig, dev)
    before = await rig.qtest.read(pa, 64)
    descs = [
        Desc("FILL", dst=a, len=64, pattern=U64, raw={"flags": bit})
        for bit in (0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)
    ]
    descs += [
        Desc("NOP", raw={"flags": 0x80}),
        Desc("CLEAN", raw={"flags": 0x06}),
        Desc("FILL", dst=a, len=64, raw={"reserved0": 1}),
        Desc("FILL", dst=a, len=64, raw={"reserved0": 0x8000}),
        Desc("FILL", dst=a, len=64, raw={"reserved1": 1 << 63}),
        Desc("NOP", raw={"reserved1": 1}),
        Desc("COPY", dst=a, src=a + 64, len=64, whole=True),
        Desc("FILL", dst=a, len=64, whole=True),
    ]
    assert await statuses(dev, descs) == [("BAD_FLAGS", 0)] * len(descs)
    await dev.host.submit([maint("CLEAN_INVALIDATE")])
    assert await rig.qtest.read(pa, 64) == before
    await assert_recovers(rig, dev)


async def test_bad_opcode(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    _, a = await buffer(rig, dev)
    descs = [Desc(op, dst=a, src=a, len=64) for op in range(6, 256)]
    assert await statuses(dev, descs) == [("BAD_OPCODE", 0)] * len(descs)
    counters = await dev.host.counters()
    assert counters["desc_errors"] == len(descs) and counters["bytes_written"] == 0
    await assert_recovers(rig, dev)


@pytest.mark.parametrize("device", ["coherent=on", ""])
async def test_bus_error_outside_ram(qemu_argv: list[str], artifacts: Path, device: str) -> None:
    async with ncdma_rig(qemu_argv, (device,), artifacts_dir=artifacts) as rig:
        dev = rig.devices[0]
        pa, a = await buffer(rig, dev)
        canary = random.Random(2).randbytes(2 * PAGE)
        await rig.qtest.write(pa, canary)
        low = rig.alloc(PAGE)
        await rig.qtest.write(low, canary[:PAGE])
        descs = [
            fill(BEYOND_RAM, 4096, 0x5A5A),
            copy(BEYOND_RAM, a, 4096),
            copy(a, BEYOND_RAM, 4096),
            copy(a + PAGE, 0xC000_0000, 64),
            fill(rig.vm.memory_size, 64, 1),
            Desc("CLEAN", dst=BEYOND_RAM, len=PAGE),
        ]
        got = await statuses(dev, descs)
        want = [("BUS_ERROR", 0)] * len(descs)
        if device == "coherent=on":
            want[-1] = ("OK", PAGE)  # maintenance is a no-op without a cache
        assert got == want
        await dev.host.submit([maint("CLEAN_INVALIDATE")])
        assert await rig.qtest.read(pa, 2 * PAGE) == canary  # nothing landed in RAM
        assert await rig.qtest.read(low, PAGE) == canary[:PAGE]
        assert (await dev.host.counters())["bus_errors"] >= 5
        await assert_recovers(rig, dev)


@pytest.mark.parametrize("device", ["coherent=on", "cache-size=4096,cache-ways=2"])
@pytest.mark.parametrize("offset", [0, 100])
async def test_iommu_fault_partial(
    qemu_argv: list[str], artifacts: Path, device: str, offset: int
) -> None:
    async with ncdma_rig(qemu_argv, (device,), iommu=IOMMU, artifacts_dir=artifacts) as rig:
        dev = rig.devices[0]
        src_pa, dst_pa = rig.alloc(3 * PAGE), rig.alloc(3 * PAGE)
        src = await rig.map(dev, src_pa, 3 * PAGE)
        dst = await rig.map(dev, dst_pa, 2 * PAGE)  # the third page is not mapped
        data = random.Random(3).randbytes(3 * PAGE)
        await rig.qtest.write(src_pa, data)
        await rig.qtest.write(dst_pa, bytes(3 * PAGE))
        length = 3 * PAGE - offset
        (c,) = await dev.host.submit([copy(dst + offset, src, length)])
        mapped = 2 * PAGE - offset
        assert (c.status, c.done) == ("IOMMU_FAULT", mapped)
        await dev.host.submit([maint("CLEAN_INVALIDATE")])
        got = await rig.qtest.read(dst_pa, 3 * PAGE)
        assert got[offset : 2 * PAGE] == data[:mapped]  # the mapped part landed
        assert got[:offset] == bytes(offset)
        assert got[2 * PAGE :] == bytes(PAGE)  # the rest did not
        (f,) = await dev.host.submit([fill(dst + offset, length, 0x1122334455667788)])
        assert (f.status, f.done) == ("IOMMU_FAULT", mapped)
        await dev.host.submit([maint("CLEAN_INVALIDATE")])
        assert (await rig.qtest.read(dst_pa + 2 * PAGE, PAGE)) == bytes(PAGE)
        assert (await dev.host.counters())["translation_faults"] >= 2
        await assert_recovers(rig, dev)


# -- every register ----------------------------------------------------------------------------


async def test_random_register_writes(rig: NcdmaRig) -> None:
    dev = rig.devices[0]
    q, bar0 = rig.qtest, dev.host.bar0
    ro = {
        name: await dev.host.reg(name)
        for name in (
            "ID",
            "VERSION",
            "CAPS",
            "CACHE_LINE",
            "CACHE_SIZE",
            "CACHE_WAYS",
            "IOTLB_ENTRIES",
            "MAX_XFER",
        )
    }
    r = random.Random(0xB0A0)
    for _ in range(3):
        offsets = list(range(0, spec.REGS_BAR_SIZE, 4))
        r.shuffle(offsets)
        for off in offsets:
            await q.writel(bar0 + off, r.getrandbits(32))
        for off in range(0, spec.REGS_BAR_SIZE - 4, 4):  # 64-bit, aligned and not
            await q.writeq(bar0 + off, r.getrandbits(64))
        await rig.vm.qmp.execute("query-status")
        for name, value in ro.items():
            assert await dev.host.reg(name) == value, name
        error = await dev.host.reg("ERROR")
        assert error in {int(v) for v in spec.RingError.encmapping.values()}
        assert bool(await dev.host.reg("STATUS") & flags(spec.DevStatus, RING_ERROR=True)) == (
            error != 0
        )
        assert await dev.host.reg("RING_HEAD") < spec.RING_MAX_ENTRIES
        assert await dev.host.reg("CTRL") & ~0x5 == 0
        # unknown offsets read as zero
        assert await q.readl(bar0 + 0x800) == 0 and await q.readq(bar0 + 0xFF8) == 0
        await dev.host.counters()
        counters = await rig.qom(dev, "counters")
        assert set(counters) == set(spec.COUNTER_NAMES)
    await assert_recovers(rig, dev)
