"""Checks that hold behind every IOMMU the rig programs (intel-iommu, SMMUv3)."""

from __future__ import annotations

import random

from dmalab.machine.ncdma_host import copy, maint
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice


async def check_scattered_copy(rig: NcdmaRig, dev: RigDevice) -> None:
    """Eight source pages in reverse physical order behind one contiguous IOVA range: a COPY
    through them lands byte-exactly, and the transaction log names every page read, in order."""
    pages = [rig.alloc(PAGE) for _ in range(8)][::-1]
    src_iova = 0x9_0000_0000
    for i, pa in enumerate(pages):
        await rig.map(dev, pa, PAGE, iova=src_iova + i * PAGE)
    payload = random.Random(1).randbytes(8 * PAGE)
    for i, pa in enumerate(pages):
        await rig.qtest.write(pa, payload[i * PAGE : (i + 1) * PAGE])
    dst = rig.alloc(8 * PAGE)
    dst_iova = await rig.map(dev, dst, 8 * PAGE)
    assert dst_iova != dst
    done = await dev.host.submit(
        [copy(dst_iova + 7, src_iova + 3, 8 * PAGE - 10, 1), maint("CLEAN")]
    )
    assert [c.status for c in done] == ["OK", "OK"]
    assert await rig.qtest.read(dst + 7, 8 * PAGE - 10) == payload[3 : 8 * PAGE - 7]
    tx = (await rig.qom(dev, "transactions"))[-2]
    reads = [s for s in tx["segments"] if not s["write"]]
    assert [s["pa"] & ~(PAGE - 1) for s in reads] == pages
    assert sum(s["len"] for s in reads) == 8 * PAGE - 10


async def check_unmapped_write_faults(rig: NcdmaRig, dev: RigDevice) -> int:
    """Copies into a destination whose second page is unmapped fault there, move only what lies
    before it, and no byte lands behind the unmapped IOVA. Returns that IOVA."""
    src, dst = rig.alloc(2 * PAGE), rig.alloc(2 * PAGE)
    src_iova = await rig.map(dev, src, 2 * PAGE)
    dst_iova = await rig.map(dev, dst, PAGE)
    before, payload = random.Random(2).randbytes(2 * PAGE), random.Random(3).randbytes(2 * PAGE)
    await rig.qtest.write(dst, before)
    await rig.qtest.write(src, payload)
    await rig.reset_stats(dev)
    done = await dev.host.submit(
        [
            copy(dst_iova + PAGE, src_iova, PAGE, 1),
            copy(dst_iova + 100, src_iova, PAGE, 2),
            maint("CLEAN"),
        ]
    )
    assert (done[0].status, done[0].done) == ("IOMMU_FAULT", 0)
    # The piece within the mapped page lands; the rest faults before it moves.
    assert (done[1].status, done[1].done) == ("IOMMU_FAULT", PAGE - 100)
    memory = await rig.qtest.read(dst, 2 * PAGE)
    assert memory[PAGE:] == before[PAGE:], "a byte landed behind an unmapped IOVA"
    assert memory[100:PAGE] == payload[: PAGE - 100]
    counters = await rig.qom(dev, "counters")
    assert counters["translation_faults"] == 2
    assert counters["desc_errors"] == 2
    return dst_iova + PAGE
