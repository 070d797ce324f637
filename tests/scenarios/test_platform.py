"""The `platform` family on arm64-noncoherent: the kernel's DMA API syncs, each faulty mode that
skips or misdirects one caught by the CPU cache model at its step, DMA_BUF_IOCTL_SYNC on an
ncdma export and on an unmodified udmabuf, vgem read through its write-combining mapping, and
the family n/a where nothing models the caches.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import pytest_asyncio

from dmalab.machine.agent import AgentError, Desc
from dmalab.machine.cpucache import CpuCacheModel
from dmalab.scenarios.api import PAGE, Run
from dmalab.scenarios.platform import (
    PLATFORM,
    PLATFORM_CPU_ACCESS,
    PLATFORM_HEAP,
    PLATFORM_TABLE,
    PLATFORM_UDMABUF,
    no_heap,
    no_vgem,
    off_platform,
)
from dmalab.scenarios.results import Result
from dmalab.scenarios.runner import Machine, machine
from dmalab.scenarios.suite import SUITE

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Debian's arm64 6.12 has no system heap: that scenario is n/a (tested below).
RUN = [s for s in PLATFORM if s is not PLATFORM_HEAP]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def noncoherent() -> AsyncIterator[Machine]:
    async with machine("arm64-noncoherent", accel="tcg") as m:
        yield m


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def results(noncoherent: Machine) -> dict[tuple[str, str], Result]:
    out = {}
    for scenario in RUN:
        for r in await noncoherent.run(scenario):
            out[r.scenario, r.variant] = r
    return out


def findings(r: Result, kind: str) -> dict[int, str]:
    """The first finding line of `kind` at each step."""
    out: dict[int, str] = {}
    for line in r.evidence:
        step = int(line.split()[1])
        if f": {kind} (" in line:
            out.setdefault(step, line)
    return out


def step(r: Result, n: int) -> object:
    return next(s for s in r.steps if s.step == n)


async def test_every_variant_holds_its_declaration(
    results: dict[tuple[str, str], Result],
) -> None:
    assert len(results) == sum(len(s.variants) for s in RUN)
    for key, r in results.items():
        assert r.ok, (key, r.expectation, r.outcome, r.evidence)
    assert results["platform-table", "table"].evidence == []
    assert results["platform-cpu-access", "sync"].evidence == []


async def test_the_correct_table_maps_and_unmaps_through_the_dma_api(
    results: dict[tuple[str, str], Result],
) -> None:
    r = results["platform-table", "table"]
    # The exporter's dma_map_sgtable cleans at each map, dma_unmap_sgtable invalidates at each
    # unmap: the kernel's own events say so, and the model counted the lines.
    for n in (3, 6):
        assert step(r, n).kernel_events.get("dma_map_sg") == 1, step(r, n).kernel
    for n in (9, 12):
        assert step(r, n).kernel_events.get("dma_unmap_sg") == 1, step(r, n).kernel
        assert step(r, n).counters["cpucache"].get("lines-invalidated", 0) >= 64


async def test_skip_sync_for_device_is_a_stale_device_read_at_the_first_dma(
    results: dict[tuple[str, str], Result],
) -> None:
    r = results["platform-table", "skip-sync-for-device"]
    assert r.outcome == "detected"
    assert any("attrs=SKIP_CPU_SYNC" in k for k in step(r, 3).kernel), step(r, 3).kernel
    stale = findings(r, "DEVICE_READ_STALE")
    assert 5 in stale and "(dma0)" in stale[5], r.evidence
    assert "DMA_ATTR_SKIP_CPU_SYNC" in stale[5] and "dma_sync_sgtable_for_device" in stale[5]


@pytest.mark.parametrize(
    ("variant", "unmap_shows"),
    [("skip-sync-for-cpu", "attrs=SKIP_CPU_SYNC"), ("sync-wrong-direction", "dir=TO_DEVICE")],
)
async def test_a_skipped_or_misdirected_invalidate_is_a_stale_cpu_read(
    results: dict[tuple[str, str], Result], variant: str, unmap_shows: str
) -> None:
    r = results["platform-table", variant]
    assert r.outcome == "detected" and r.detected_steps == [13], r.evidence
    unmap = [k for k in step(r, 9).kernel if "dma_unmap_sg" in k]
    assert unmap and unmap_shows in unmap[0], step(r, 9).kernel
    assert step(r, 9).counters.get("cpucache", {}).get("lines-invalidated", 0) == 0
    stale = findings(r, "CPU_READ_STALE")
    assert "(cpu)" in stale[13] and "not invalidated" in stale[13], r.evidence


async def test_dma_buf_ioctl_sync_runs_the_exporters_syncs(
    results: dict[tuple[str, str], Result],
) -> None:
    r = results["platform-cpu-access", "sync"]
    for n in (1, 5, 6, 10):
        events = step(r, n).kernel_events
        assert events.get("dma_sync_sg_for_cpu") == 1, step(r, n).kernel
        assert events.get("dma_sync_sg_for_device") == 1, step(r, n).kernel
    # The importer keeps its mapping: its map and unmap call no DMA API at all.
    for n in (2, 4, 7, 9):
        assert not any(k.startswith("dma_") for k in step(r, n).kernel_events), step(r, n).kernel


@pytest.mark.parametrize("k", [0, 1], ids=["ncdma", "udmabuf"])
@pytest.mark.parametrize(
    ("variant", "kind", "at", "master", "missed", "event"),
    [
        ("write-without-sync", "DEVICE_READ_STALE", (3, 8), "dma2", (6, "wrote"),
         "dma_sync_sg_for_device"),
        ("read-without-sync", "CPU_READ_STALE", (5, 10), "cpu", (10, "read"),
         "dma_sync_sg_for_cpu"),
    ],
)  # fmt: skip
async def test_cpu_access_without_sync_is_named_where_it_shows(
    results: dict[tuple[str, str], Result], k: int, variant: str, kind: str,
    at: tuple[int, int], master: str, missed: tuple[int, str], event: str,
) -> None:  # fmt: skip
    # k: the udmabuf's steps come one later (its memfd owner's fill is step 1).
    r = results[(PLATFORM_CPU_ACCESS, PLATFORM_UDMABUF)[k].name, variant]
    stale = findings(r, kind)
    first, second = at[0] + k, at[1] + k
    assert {first, second} <= set(stale), r.evidence
    assert f"({master})" in stale[second], stale[second]
    if master == "cpu":
        # the agent's read, named in its own program through the task's PID
        assert "vCPU 0 (dmalab-agent) at " in stale[second], stale[second]
        assert " [dmalab-agent] <- " in stale[second], stale[second]
        assert " <- op_CPU_READ+0x" in stale[second], stale[second]
    n = missed[0] + k
    assert f"step {n} {missed[1]} without DMA_BUF_IOCTL_SYNC" in stale[second], stale[second]
    assert event not in step(r, n).kernel_events, step(r, n).kernel


async def test_begin_cpu_access_without_sync_is_caught_at_the_device_reads(
    results: dict[tuple[str, str], Result],
) -> None:
    r = results["platform-cpu-access", "begin-cpu-without-sync"]
    # DMA_BUF_IOCTL_SYNC reached the exporter, which called no DMA API sync.
    assert not any(k.startswith("dma_sync") for k in step(r, 1).kernel_events), step(r, 1).kernel
    stale = findings(r, "DEVICE_READ_STALE")
    assert "CPU_ACCESS_NO_SYNC" in stale[3] and "CPU_ACCESS_NO_SYNC" in stale[8], r.evidence


async def test_udmabufs_first_sync_discards_what_the_memfd_owner_wrote(
    results: dict[tuple[str, str], Result],
) -> None:
    # A correct user's sequence, flagged: a finding about udmabuf, declared as such.
    for variant, first in (("sync", 2), ("device-first", 5)):
        r = results["platform-udmabuf", variant]
        assert r.expectation == "detected" and r.detected_steps == [first], r.evidence
        lost = findings(r, "CPU_WRITE_LOST")
        assert "(cpu)" in lost[first] and "128 lines" in lost[first], r.evidence
        kernel = step(r, first).kernel
        assert "attrs=SKIP_CPU_SYNC" in next(k for k in kernel if "dma_map_sg: udmabuf" in k)
        assert any("dma_sync_sg_for_cpu: udmabuf" in k for k in kernel), kernel
    # Later syncs are the DMA API's ordinary ones, and the device's copy reaches the CPU.
    r = results["platform-udmabuf", "sync"]
    assert step(r, 6).kernel_events == {"dma_sync_sg_for_cpu": 1, "dma_sync_sg_for_device": 1}


async def test_vgem_is_read_through_its_write_combining_mapping(
    results: dict[tuple[str, str], Result],
) -> None:
    # The device fills page 1 (step 2); the CPU reads it (step 4) through vgem's dma-buf mmap,
    # which is write-combining: memory's bytes, with or without DMA_BUF_IOCTL_SYNC, which vgem
    # turns into no DMA API call (no begin_cpu_access). A cacheable mapping read without an
    # invalidate is a CPU_READ_STALE here (read-without-sync above).
    for variant in ("device-first", "device-first-without-sync"):
        r = results["platform-vgem", variant]
        assert r.outcome == "pass" and r.evidence == [], r.evidence
        assert not any(k.startswith("dma_sync") for k in step(r, 4).kernel_events), step(r, 4)
        # PRIME maps for the importer without CPU syncs
        mapped = next(k for k in step(r, 1).kernel if "dma_map_sg:" in k)
        assert "attrs=SKIP_CPU_SYNC" in mapped, mapped


async def test_vgems_zeroed_lines_sit_dirty_under_what_the_cpu_wrote(
    results: dict[tuple[str, str], Result],
) -> None:
    # A correct user's sequence, flagged: a finding about vgem, declared as such. The copies
    # arrive byte-exact (no BYTES finding: the CPU wrote memory through its write-combining
    # mapping), but the device read them under the kernel's DC ZVA zeros, never cleaned.
    for variant in ("sync", "without-sync"):
        r = results["platform-vgem", variant]
        assert r.expectation == "detected" and r.detected_steps == [3, 8], r.evidence
        assert {line.split(": ")[1].split(" ")[0] for line in r.evidence} == {
            "DEVICE_READ_STALE"
        }, r.evidence
        stale = findings(r, "DEVICE_READ_STALE")
        for n in (3, 8):
            assert "(dma2): 64 lines" in stale[n] and "expected 0000000000000000" in stale[n]
            assert "a finding about vgem" in stale[n], stale[n]
        assert not any(k.startswith("dma_sync") for k in step(r, 1).kernel_events), step(r, 1)


async def test_vgem_is_n_a_where_the_guest_has_none() -> None:
    class NoVgem:
        async def read_file(self, path: str, max_len: int) -> bytes:
            raise AgentError("READ_FILE", errno.ENOENT, path)

    topology = SimpleNamespace(machine=SimpleNamespace(coherency="noncoherent"))
    run = SimpleNamespace(vm=SimpleNamespace(topology=topology), agent=NoVgem())
    why = await no_vgem(run)  # type: ignore[arg-type]
    assert why is not None and "no vgem" in why and "CONFIG_DRM_VGEM" in why


@pytest.mark.asyncio(loop_scope="module")
async def test_the_family_is_in_the_suite_and_n_a_off_the_platform() -> None:
    assert all(s in SUITE for s in PLATFORM)
    assert len({s.seed for s in SUITE}) == len(SUITE)

    def run(coherency: str | None) -> object:
        topology = SimpleNamespace(machine=SimpleNamespace(coherency=coherency))
        return SimpleNamespace(vm=SimpleNamespace(topology=topology if coherency else None))

    assert off_platform(run("noncoherent")) is None  # type: ignore[arg-type]
    for other in ("coherent", None):
        why = off_platform(run(other))  # type: ignore[arg-type]
        assert why and "noncoherent platform" in why
    assert PLATFORM_TABLE.unavailable is off_platform


async def test_the_heap_scenario_is_n_a_without_a_system_heap(noncoherent: Machine) -> None:
    # Debian's arm64 6.12 has no CONFIG_DMABUF_HEAPS: the guest has no /dev/dma_heap/system.
    for r in await noncoherent.run(PLATFORM_HEAP):
        assert r.outcome == "unavailable" and "no /dev/dma_heap/system" in r.note, r.note


async def test_the_heap_scenario_runs_where_the_kernel_has_the_heap() -> None:
    # The x86 guests have the heap but no modelled caches, where the family is n/a: run the
    # correct variant there anyway. Its byte checks read the heap's pages from the host, so the
    # page addresses the driver found through the heap's kernel mapping are the right ones.
    anywhere = dataclasses.replace(PLATFORM_HEAP, unavailable=no_heap_only)
    async with machine("default", accel="tcg") as m:
        (r,) = await m.run(anywhere, ["sync"])
    assert r.outcome == "pass" and r.evidence == [], r.evidence
    assert [s.step for s in r.steps] == list(range(1, 11))
    # ncdma is coherent for the CPU there: the kernel skips the syncs (no dma/ sync events).
    assert not any(k.startswith("dma_sync") for s in r.steps for k in s.kernel_events)


async def no_heap_only(run: Run) -> str | None:
    why = await no_heap(run)
    return None if why and "noncoherent platform" in why else why


@pytest.mark.parametrize(
    ("faults", "kinds"),
    [
        ([], set()),
        # ... and the sync for the CPU then invalidates the write nobody cleaned
        (["SKIP_SYNC_FOR_DEVICE"], {"DEVICE_READ_STALE", "CPU_WRITE_LOST"}),
        (["SKIP_SYNC_FOR_CPU"], {"CPU_READ_STALE"}),
        (["SYNC_WRONG_DIR"], {"CPU_READ_STALE"}),
    ],
)
async def test_an_importers_att_sync_syncs_its_kept_mapping(
    noncoherent: Machine, faults: list[str], kinds: set[str]
) -> None:
    """NCDMA_IOC_ATT_SYNC on a mapping the importer keeps: for the device before it reads what
    the CPU wrote, for the CPU before the CPU reads what it wrote; an attachment's faulty mode
    skips or misdirects that sync, and the model says which way."""
    agent, model = noncoherent.vm.agent, CpuCacheModel(noncoherent.vm.qmp)
    assert await model.probe()
    dev0, dev2 = noncoherent.devices["dma0"], noncoherent.devices["dma2"]
    buf = await agent.buf_create("NCDMA", 2 * PAGE, dev=dev0)
    att = await agent.attach(buf.id, dev2, flags=["CACHE_SGT"], faults=faults)
    await agent.map(att.id, "BIDIRECTIONAL")
    await model.take()
    await agent.cpu_write_pattern(buf.id, 0, PAGE, seed=5)
    await agent.att_sync(att.id, for_cpu=False)
    (done,) = await agent.run(dev2, [Desc.copy(att.id, att.id, PAGE, dst_off=PAGE)])
    assert done.ok, done
    await agent.att_sync(att.id, for_cpu=True)
    await agent.cpu_read(buf.id, PAGE, PAGE)
    events = await model.take()
    await agent.unmap(att.id)
    await agent.detach(att.id)
    await agent.buf_free(buf.id)
    assert {e.kind for e in events} == kinds, events
