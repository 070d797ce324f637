"""ncdma behind arm virt's SMMUv3, with stream table, context descriptors, stage-1 tables and both
queues written from Python (machine/smmuv3.py).

What is checked: DMA goes through the mappings byte-exactly; an unmapped IOVA faults, the event
queue holds an F_TRANSLATION record naming the device and the IOVA, and nothing lands; a
read-only mapping refuses writes with F_PERMISSION; the UNMAP notifications that TLBIs cause
reach the device (SMMUv3 sends no MAP: the device says it is degraded); after a TLBI of a
remapped IOVA (by VA, by ASID, or of everything, which arrives as one UNMAP over all 64 bits)
the device IOTLB never serves the old translation; devices whose STEs share a context
descriptor share its mappings.
"""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager

import pytest
from ncdma_iommu_checks import check_scattered_copy, check_unmapped_write_faults

from dmalab.machine.ncdma_host import copy, flags
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice, ncdma_rig
from dmalab.machine.pagetable import invalidation_blocks
from dmalab.machine.smmuv3 import EVT_F_TRANSLATION, SmmuDomain, SmmuV3
from dmalab.spec import ncdma as spec


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def smmu_rig(
    argv: list[str], devices: list[str], *, shared_domain: bool = False
) -> AbstractAsyncContextManager[NcdmaRig]:
    return ncdma_rig(argv, devices, iommu="smmuv3", arch="aarch64", shared_domain=shared_domain)


def smmu_of(rig: NcdmaRig) -> SmmuV3:
    assert isinstance(rig.iommu, SmmuV3)
    return rig.iommu


def domain_of(dev: RigDevice) -> SmmuDomain:
    assert isinstance(dev.domain, SmmuDomain)
    return dev.domain


async def test_dma_through_stage1_mappings_is_byte_exact(qemu_argv_aarch64: list[str]) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["", "coherent=on"]) as rig:
        smmu = smmu_of(rig)
        for dev in rig.devices:
            assert (await rig.qom(dev, "iommu"))["active"] is True
            await check_scattered_copy(rig, dev)
        assert await smmu.events() == []
        assert await smmu.global_errors() == 0


async def test_unmapped_iova_faults_with_an_event_and_nothing_lands(
    qemu_argv_aarch64: list[str],
) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["", "coherent=on"]) as rig:
        smmu = smmu_of(rig)
        for dev in rig.devices:
            assert await smmu.events() == []
            iova = await check_unmapped_write_faults(rig, dev)
            # One record per refused translation: a write by this device to the unmapped page.
            events = await smmu.events()
            assert [(e.type, e.sid, e.address, e.read) for e in events] == [
                (EVT_F_TRANSLATION, dev.pci.bdf.sid, iova, False)
            ] * 2
            assert {e.name for e in events} == {"F_TRANSLATION"}
        assert await smmu.global_errors() == 0


async def test_unmap_notifications_reach_the_device(qemu_argv_aarch64: list[str]) -> None:
    async with smmu_rig(qemu_argv_aarch64, [""]) as rig:
        smmu, dev = smmu_of(rig), rig.devices[0]
        # SMMUv3 refuses MAP notifiers: the device counts UNMAPs only, and says so.
        assert (await rig.qom(dev, "iommu"))["degraded"] is True
        caps = await dev.host.reg("CAPS")
        assert caps & flags(spec.Caps, IOMMU=True, DEGRADED=True, IOMMU_EVENTS=True) == flags(
            spec.Caps, IOMMU=True, DEGRADED=True
        )
        await rig.reset_stats(dev)
        a, b, c = rig.alloc(PAGE), rig.alloc(4 * PAGE), rig.alloc(3 * PAGE)
        ia = await rig.map(dev, a, PAGE, iova=0x9_0000_0000)
        ib = await rig.map(dev, b, 4 * PAGE, iova=0x9_0001_0000)
        ic = await rig.map(dev, c, 3 * PAGE, iova=0x9_0002_1000)  # pages 0x21, 0x22-0x23
        counters = await rig.qom(dev, "counters")
        assert (counters["iommu_map_events"], counters["iommu_unmap_events"]) == (0, 0)
        # Range TLBI_NH_VA: one notification per naturally aligned block.
        expected = 0
        for iova, size in ((ib, 4 * PAGE), (ic, 3 * PAGE), (ia, PAGE)):
            await rig.unmap(dev, iova, size)
            expected += len(invalidation_blocks(iova, size, 31))
            counters = await rig.qom(dev, "counters")
            assert counters["iommu_unmap_events"] == expected
        assert expected == 1 + 2 + 1
        # TLBI_NH_ASID and TLBI_NSNH_ALL notify the whole address space once.
        await smmu.invalidate_asid(domain_of(dev))
        await smmu.invalidate_all()
        counters = await rig.qom(dev, "counters")
        assert (counters["iommu_map_events"], counters["iommu_unmap_events"]) == (0, 4 + 2)
        assert counters["iommu_remaps"] == 0


@pytest.mark.parametrize("tlbi", ["NH_VA", "NH_ASID", "NSNH_ALL"])
async def test_remapped_iova_never_uses_a_stale_iotlb_entry(
    qemu_argv_aarch64: list[str], tlbi: str
) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["coherent=on"]) as rig:
        dev = rig.devices[0]
        domain = domain_of(dev)
        src, old, new, newer = (rig.alloc(PAGE) for _ in range(4))
        s, d = await rig.map(dev, src, PAGE), await rig.map(dev, old, PAGE)
        for page in (old, new, newer):
            await rig.qtest.write(page, bytes(PAGE))

        async def copy_to_d(seed: int) -> bytes:
            payload = data(PAGE, seed)
            await rig.qtest.write(src, payload)
            assert (await dev.host.submit([copy(d, s, PAGE)]))[0].ok
            return payload

        first = await copy_to_d(1)  # the device IOTLB now holds d -> old
        await rig.map(dev, new, PAGE, iova=d)  # replacing a mapping invalidates it
        second = await copy_to_d(2)
        assert await rig.qtest.read(new, PAGE) == second
        assert await rig.qtest.read(old, PAGE) == first

        # A table entry rewritten behind the SMMU's back: the caches still say d -> new, as on
        # hardware; that the next copy lands in `new` shows the invalidation below is needed.
        await domain.table.map(d, newer, PAGE, read=True, write=True)
        third = await copy_to_d(3)
        assert await rig.qtest.read(new, PAGE) == third
        await rig.reset_stats(dev)
        smmu = smmu_of(rig)
        if tlbi == "NH_VA":
            await smmu.invalidate_range(domain, d, PAGE)
        elif tlbi == "NH_ASID":
            await smmu.invalidate_asid(domain)
        else:
            await smmu.invalidate_all()
        fourth = await copy_to_d(4)
        assert await rig.qtest.read(newer, PAGE) == fourth
        assert await rig.qtest.read(new, PAGE) == third
        assert await rig.qtest.read(old, PAGE) == first
        counters = await rig.qom(dev, "counters")
        assert counters["iommu_unmap_events"] == 1
        # By VA, s still comes from the device IOTLB and d is translated again; the ASID and
        # whole-space TLBIs (one UNMAP over all 64 bits) drop both.
        expected = (1, 1) if tlbi == "NH_VA" else (0, 2)
        assert (counters["iotlb_hits"], counters["iotlb_misses"]) == expected


async def test_read_only_mapping_refuses_writes_and_reads_fault_as_reads(
    qemu_argv_aarch64: list[str],
) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["coherent=on"]) as rig:
        smmu, dev = smmu_of(rig), rig.devices[0]
        src, dst = rig.alloc(PAGE), rig.alloc(PAGE)
        await rig.qtest.write(src, data(PAGE, 5))
        await rig.qtest.write(dst, bytes(PAGE))
        s = await rig.map(dev, src, PAGE, write=False)  # DMA_TO_DEVICE
        d = await rig.map(dev, dst, PAGE, write=False)
        w = await rig.map(dev, rig.alloc(PAGE), PAGE)
        gone = await rig.map(dev, rig.alloc(PAGE), PAGE)
        await rig.unmap(dev, gone, PAGE)
        done = await dev.host.submit([copy(d, s, PAGE, 1), copy(w, gone, 64, 2)])
        assert [(c.status, c.done) for c in done] == [("IOMMU_FAULT", 0)] * 2
        assert await rig.qtest.read(dst, PAGE) == bytes(PAGE)
        assert await rig.qtest.read(src, PAGE) == data(PAGE, 5)
        events = await smmu.events()
        assert [(e.name, e.sid, e.address, e.read) for e in events] == [
            ("F_PERMISSION", dev.pci.bdf.sid, d, False),
            ("F_TRANSLATION", dev.pci.bdf.sid, gone, True),
        ]
        assert {e.fault_class for e in events} == {2}  # CLASS_IN: the input address faulted


async def test_devices_sharing_a_context_descriptor_share_mappings(
    qemu_argv_aarch64: list[str],
) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["", "coherent=on"], shared_domain=True) as rig:
        first, second = rig.devices
        assert first.domain is second.domain
        assert first.pci.bdf.sid != second.pci.bdf.sid
        src, dst = rig.alloc(PAGE), rig.alloc(2 * PAGE)
        await rig.qtest.write(src, data(PAGE, 6))
        s = await rig.map(first, src, PAGE)
        d = await rig.map(first, dst, 2 * PAGE)
        # The second device's StreamID reaches the same tables through the same CD.
        done = await second.host.submit([copy(d + PAGE, s, PAGE)])
        assert done[0].ok
        assert await rig.qtest.read(dst + PAGE, PAGE) == data(PAGE, 6)
        for dev in rig.devices:
            await rig.reset_stats(dev)
        await rig.unmap(first, d, 2 * PAGE)
        for dev in rig.devices:  # one TLBI in the shared ASID reaches both devices
            assert (await rig.qom(dev, "counters"))["iommu_unmap_events"] == 1
        done = await second.host.submit([copy(d, s, PAGE)])
        assert (done[0].status, done[0].done) == ("IOMMU_FAULT", 0)
        assert [(e.name, e.sid, e.address) for e in await smmu_of(rig).events()] == [
            ("F_TRANSLATION", second.pci.bdf.sid, d)
        ]


async def test_page_by_page_invalidation_without_range_support(
    qemu_argv_aarch64: list[str],
) -> None:
    async with smmu_rig(qemu_argv_aarch64, ["coherent=on"]) as rig:
        dev = rig.devices[0]
        smmu_of(rig).range_invalidation = False  # as on an SMMU without IDR3.RIL
        src, dst = rig.alloc(PAGE), rig.alloc(4 * PAGE)
        s, d = await rig.map(dev, src, PAGE), await rig.map(dev, dst, 4 * PAGE)
        assert (await dev.host.submit([copy(d + 3 * PAGE, s, PAGE)]))[0].ok
        await rig.reset_stats(dev)
        await rig.unmap(dev, d, 4 * PAGE)
        assert (await rig.qom(dev, "counters"))["iommu_unmap_events"] == 4  # a TLBI per page
        done = await dev.host.submit([copy(d + 3 * PAGE, s, PAGE)])
        assert (done[0].status, done[0].done) == ("IOMMU_FAULT", 0)
