"""ncdma behind intel-iommu (caching-mode=on), with page tables written from Python.

What is checked: DMA goes through the mappings byte-exactly; unmapped IOVAs fault and nothing
lands; MAP/UNMAP events are counted exactly; the device IOTLB hits and is invalidated on unmap;
a dirty line that outlives its mapping is caught at write-back.
"""

from __future__ import annotations

import random

from ncdma_iommu_checks import check_scattered_copy, check_unmapped_write_faults

from dmalab.machine.ncdma_host import copy, fill, fill_bytes, maint
from dmalab.machine.ncdma_rig import PAGE, ncdma_rig

VTD = "intel-iommu,caching-mode=on"


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def test_dma_through_scattered_mappings_is_byte_exact(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, ["", "coherent=on"], iommu=VTD) as rig:
        for dev in rig.devices:
            await check_scattered_copy(rig, dev)


async def test_unmapped_iova_faults_and_nothing_lands(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, ["", "coherent=on"], iommu=VTD) as rig:
        for dev in rig.devices:
            await rig.iommu.clear_faults()
            await check_unmapped_write_faults(rig, dev)
            assert await rig.iommu.faults(), "intel-iommu recorded no fault"


async def test_map_and_unmap_events_are_counted_exactly(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""], iommu=VTD) as rig:
        dev = rig.devices[0]
        await rig.reset_stats(dev)
        a, b, c = rig.alloc(PAGE), rig.alloc(4 * PAGE), rig.alloc(16 * PAGE)
        ia = await rig.map(dev, a, PAGE)
        ib = await rig.map(dev, b, 4 * PAGE)
        await rig.map(dev, c, 16 * PAGE)
        counters = await rig.qom(dev, "counters")
        # caching-mode notifies one event per leaf entry that changed.
        assert (counters["iommu_map_events"], counters["iommu_unmap_events"]) == (21, 0)
        await rig.unmap(dev, ib, 4 * PAGE)
        await rig.unmap(dev, ia, PAGE)
        counters = await rig.qom(dev, "counters")
        assert (counters["iommu_map_events"], counters["iommu_unmap_events"]) == (21, 5)
        assert counters["iommu_remaps"] == 0
        # Building the same mapping again is a remap: the mapping was not reused.
        await rig.map(dev, a, PAGE, iova=ia)
        counters = await rig.qom(dev, "counters")
        assert (counters["iommu_map_events"], counters["iommu_remaps"]) == (22, 1)
        assert (await rig.qom(dev, "iommu"))["events"] is True


async def test_iotlb_hits_and_misses(qemu_argv: list[str]) -> None:
    async with ncdma_rig(
        qemu_argv, ["coherent=on", "coherent=on,iotlb-entries=0"], iommu=VTD
    ) as rig:
        results = []
        for dev in rig.devices:
            src, dst = rig.alloc(4 * PAGE), rig.alloc(4 * PAGE)
            s, d = await rig.map(dev, src, 4 * PAGE), await rig.map(dev, dst, 4 * PAGE)
            await rig.reset_stats(dev)
            await dev.host.submit([copy(d, s, 4 * PAGE), copy(d, s, 4 * PAGE)])
            counters = await rig.qom(dev, "counters")
            results.append((counters["iotlb_hits"], counters["iotlb_misses"]))
        # With an IOTLB the second copy hits all 8 pages; without one every access asks the vIOMMU.
        assert results == [(8, 8), (0, 16)]


async def test_dma_after_unmap_faults_and_never_uses_a_stale_iotlb_entry(
    qemu_argv: list[str],
) -> None:
    async with ncdma_rig(qemu_argv, ["coherent=on"], iommu=VTD) as rig:
        dev = rig.devices[0]
        src, dst = rig.alloc(PAGE), rig.alloc(PAGE)
        s, d = await rig.map(dev, src, PAGE), await rig.map(dev, dst, PAGE)
        await rig.qtest.write(src, data(PAGE, 4))
        assert (await dev.host.submit([copy(d, s, PAGE)]))[0].ok  # the IOTLB now holds d
        await rig.unmap(dev, d, PAGE)
        await rig.qtest.write(dst, bytes(PAGE))
        done = await dev.host.submit([copy(d, s, PAGE)])
        assert (done[0].status, done[0].done) == ("IOMMU_FAULT", 0)
        assert await rig.qtest.read(dst, PAGE) == bytes(PAGE)
        counters = await rig.qom(dev, "counters")
        assert counters["iommu_unmap_events"] == 1


async def test_dirty_line_written_back_after_unmap_is_caught(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""], iommu=VTD) as rig:
        dev = rig.devices[0]
        dst = rig.alloc(PAGE)
        await rig.qtest.write(dst, bytes(PAGE))
        d = await rig.map(dev, dst, PAGE)
        await dev.host.submit([fill(d + 64, 64, 0x4444444444444444, cookie=9)])
        await rig.unmap(dev, d, PAGE)  # the driver unmapped without cleaning first
        done = await dev.host.submit([maint("CLEAN", cookie=10)])  # whole cache: no translation
        assert done[0].ok
        # On hardware this corrupts a page that may already belong to someone else.
        assert await rig.qtest.read(dst + 64, 64) == fill_bytes(64, 0x4444444444444444)
        counters = await rig.qom(dev, "counters")
        assert counters["writebacks_after_unmap"] == 1
        v = (await rig.qom(dev, "violations"))[0]
        assert (v["kind"], v["cookie"], v["iova"], v["pa"]) == (
            "WRITEBACK_AFTER_UNMAP",
            10,
            d + 64,
            dst + 64,
        )


async def test_maintenance_by_range_needs_a_mapping(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""], iommu=VTD) as rig:
        dev = rig.devices[0]
        dst = rig.alloc(PAGE)
        d = await rig.map(dev, dst, PAGE)
        await rig.unmap(dev, d, PAGE)
        done = await dev.host.submit([maint("CLEAN", d, PAGE)])
        assert done[0].status == "IOMMU_FAULT"


async def test_maintenance_works_through_write_only_and_read_only_mappings(
    qemu_argv: list[str],
) -> None:
    async with ncdma_rig(qemu_argv, [""], iommu=VTD) as rig:
        dev = rig.devices[0]
        out, inp = rig.alloc(PAGE), rig.alloc(PAGE)
        await rig.qtest.write(out, bytes(PAGE))
        o = await rig.map(dev, out, PAGE, read=False)  # DMA_FROM_DEVICE: write-only
        i = await rig.map(dev, inp, PAGE, write=False)  # DMA_TO_DEVICE: read-only
        done = await dev.host.submit(
            [
                fill(o, PAGE, 0x5555555555555555),
                maint("CLEAN", o, PAGE),  # the device used o: resolved from its own record
                maint("INVALIDATE", i, PAGE),  # never used: the vIOMMU is asked, read works
                maint("CLEAN_INVALIDATE", o + PAGE - 64, 64),
            ]
        )
        assert [c.status for c in done] == ["OK"] * 4
        assert await rig.qtest.read(out, PAGE) == fill_bytes(PAGE, 0x5555555555555555)
        counters = await rig.qom(dev, "counters")
        assert counters["translation_faults"] == 0
        assert counters["cache_writebacks"] == PAGE // 64
