"""The noncoherent arm64 platform: QEMU's CPU cache model and what the real kernel does with it.

On arm64-noncoherent the device tree marks the PCIe host bridge dma-noncoherent, so Linux's DMA
API cleans and invalidates the CPU caches that QEMU models (docs/cpu-cache-model.md); ncdma has
no cache of its own there. The seed suite must hold with every finding coming from the model or
the bytes, and a stock (coherent) virt machine must not have the model at all.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dmalab.machine.cpucache import KINDS, CpuCacheModel
from dmalab.scenarios.results import Result
from dmalab.scenarios.runner import Machine, machine
from dmalab.scenarios.seeds import SEED_000, SEED_001, SEED_002, SEED_003, SEED_004

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATA = Path(__file__).parent / "data"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def noncoherent() -> AsyncIterator[Machine]:
    async with machine("arm64-noncoherent", accel="tcg") as m:
        yield m


async def test_the_kernel_maintains_the_caches_at_boot_and_nothing_is_stale(
    noncoherent: Machine,
) -> None:
    await _clean_boot(noncoherent)


async def _clean_boot(m: Machine) -> None:
    model = CpuCacheModel(m.vm.qmp)
    assert await model.probe()
    counters = await model.counters()
    # Linux cleans and invalidates by VA from its first instructions (head.S, alternatives,
    # the DMA API for ncdma's ring): the DC ops reached the model.
    assert counters["lines-cleaned"] > 100 and counters["lines-invalidated"] > 100, counters
    assert counters["line-size"] == 64
    # A correct kernel on a correct platform: no detection while booting and probing ncdma.
    assert [counters[k.lower().replace("_", "-")] for k in KINDS] == [0, 0, 0, 0], counters
    assert await model.take() == []


async def _results(m: Machine) -> dict[tuple[str, str], Result]:
    out = {}
    for scenario in (SEED_000, SEED_001, SEED_002, SEED_003, SEED_004):
        for r in await m.run(scenario):
            assert r.ok, (r.scenario, r.variant, r.expectation, r.outcome, r.evidence)
            out[r.scenario, r.variant] = r
    return out


async def test_seed_suite_holds_and_a_cached_mapping_is_caught_by_the_model(
    noncoherent: Machine,
) -> None:
    rs = await _results(noncoherent)
    for (scenario, variant), r in rs.items():
        if r.expectation == "pass":
            assert r.outcome == "pass" and r.evidence == [], (scenario, variant, r.evidence)
    # The dma-buf core's cached mapping skips the DMA API's maintenance between cycles: the
    # device reads what the CPU wrote before the first cycle, and the model says so at the
    # device's read with the IOVA, the buffer offset and the vCPU that rang the doorbell.
    cached = rs["003-sgt-cache", "cached"]
    assert cached.expectation == "detected" and cached.outcome == "detected"
    stale = [f for f in cached.evidence if "DEVICE_READ_STALE" in f]
    assert stale, cached.evidence
    assert "first at iova 0x" in stale[0] and "buf offset 0x0" in stale[0]
    # the guest PC of the doorbell write, symbolized against the module, with its callers, and
    # the task (the agent) that rang it
    assert "vCPU 0 (dmalab-agent) at ncdma_ring_queue+0x" in stale[0], stale[0]
    assert "[ncdma] <- " in stale[0], stale[0]
    assert "__arm64_sys_ioctl+0x" in stale[0], stale[0]
    # Arnd's table through the real DMA API: the CPU's write while device A owns the buffer is
    # read stale by the device, and device B's unmap invalidates the CPU's later write away,
    # named down to the kernel function that did it.
    table = rs["000-arnd-table", "table"]
    by_step = {int(f.split()[1]): f for f in table.evidence if "_STALE" in f or "_LOST" in f}
    assert "DEVICE_READ_STALE (dma0)" in by_step[5], table.evidence
    lost = by_step[12]
    assert "CPU_WRITE_LOST (cpu)" in lost and "dcache_inval_poc+0x" in lost, lost
    assert "arch_sync_dma_for_cpu+0x" in lost and "unmap" in lost, lost
    # Where the kernel does the maintenance (a new mapping every cycle), the same cycles pass
    # and the model saw the cleans and invalidates of each map and unmap.
    uncached = rs["003-sgt-cache", "uncached"]
    maint = [s.counters.get("cpucache", {}) for s in uncached.steps]
    assert sum(c.get("lines-cleaned", 0) for c in maint) >= 4 * 64, maint
    assert sum(c.get("lines-invalidated", 0) for c in maint) >= 4 * 64, maint
    pinned = rs["001-move", "pinned"]
    assert pinned.expectation == "detected" and pinned.outcome == "detected", pinned.evidence


async def test_a_coherent_virt_machine_has_no_model() -> None:
    async with machine("arm64-smmuv3", accel="tcg") as m:
        assert not await CpuCacheModel(m.vm.qmp).probe()
        dt = await m.vm.qmp.execute("qom-get", {"path": "/machine", "property": "x-noncoherent"})
        assert dt is False


async def test_two_vcpus_behind_virtio_iommu_see_the_same_findings() -> None:
    # MTTCG: the DC ops run on two vCPU threads while ncdma's DMA runs in the main loop.
    async with machine("arm64-noncoherent-virtio-iommu", accel="tcg") as m:
        assert len(await m.vm.qmp.execute("query-cpus-fast")) == 2
        await _clean_boot(m)  # the secondary vCPU's bring-up maintains its caches too
        rs = {r.variant: r for sc in (SEED_000, SEED_003) for r in await m.run(sc)}
    for r in rs.values():
        assert r.ok, (r.scenario, r.variant, r.outcome, r.evidence)
    table = " | ".join(rs["table"].evidence)
    assert "DEVICE_READ_STALE (dma0)" in table and "CPU_WRITE_LOST (cpu)" in table, table
    assert rs["cached"].outcome == "detected"
    assert rs["uncached"].outcome == "pass" and rs["uncached"].evidence == []
    # virtio-iommu reports MAPs to the devices even though the DMA below it is noncoherent
    assert rs["uncached"].note.startswith("IOMMU MAP events per map step (device): [2, 2")


async def test_a_clean_over_a_device_write_is_a_clobber_named_by_function() -> None:
    # tests/scenarios/data/cpu-clobber.toml: the CPU dirties page 0 while device A owns the
    # buffer, device A fills it, and driver B's map cleans the CPU's lines over the fill.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "-t", "arm64-noncoherent",
        "--scenario-file", str(DATA / "cpu-clobber.toml"), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, err.decode()
    (r,) = json.loads(out)["results"]
    assert (r["expectation"], r["outcome"], r["detected_steps"]) == ("detected", "detected", [2, 4])
    (clobber,) = [e for e in r["evidence"] if "CPU_CLOBBER" in e]
    assert clobber.startswith("step 4 (driver B map"), clobber
    assert "dcache_clean_poc+0x" in clobber and "arch_sync_dma_for_device+0x" in clobber
    assert "ncdma_x_map+0x" in clobber and "[ncdma]" in clobber
    # what the device wrote (the fill) against the CPU's bytes written over it
    assert "expected a3a3000000000000" in clobber
