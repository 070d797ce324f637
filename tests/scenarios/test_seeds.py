"""Each seed scenario on the default topology (intel-iommu; dma0 + dma1 share a domain): every
correct variant passes clean, every faulty one is detected at its named steps."""

from __future__ import annotations

import time

import pytest

from dmalab.scenarios.results import Result
from dmalab.scenarios.runner import Machine
from dmalab.scenarios.seeds import SEED_000, SEED_001, SEED_002, SEED_003, SEED_004

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _run(m: Machine, scenario) -> dict[str, Result]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    results = {r.variant: r for r in await m.run(scenario)}
    print(f"\n{scenario.name}: {time.perf_counter() - start:.2f} s for {len(results)} variants")
    for r in results.values():
        assert r.ok, (r.variant, r.outcome, r.evidence)
        if r.expectation == "pass":
            assert r.outcome == "pass" and r.evidence == [] and r.detected_steps == []
    return results


def _kinds(r: Result, step: int) -> str:
    return " | ".join(e for e in r.evidence if e.startswith(f"step {step} ("))


async def test_000_arnd_table(default_machine: Machine) -> None:
    rs = await _run(default_machine, SEED_000)
    table = rs["table"]
    assert table.outcome == "detected" and {4, 11} <= set(table.detected_steps)
    assert "driver B CPU read/write while device A owns the buffer" in _kinds(table, 4)
    assert "device A read" in _kinds(table, 4) and "at step 5" in _kinds(table, 4)
    assert "driver A CPU read/write while device B owns the buffer" in _kinds(table, 11)
    assert "device B wrote them at step 10" in _kinds(table, 11)
    assert "CONFLICTING_WRITE" in _kinds(table, 12)
    assert rs["shared-read"].outcome == "pass"
    both = rs["both-write"]
    assert both.detected_steps[0] == 8 and "written by device A at step 7" in _kinds(both, 8)
    excl = rs["exclusive"]
    order = [s.step for s in excl.steps]
    assert excl.outcome == "pass" and order.index(4) > order.index(9) and order[-1] == 11


async def test_003_sgt_caching(default_machine: Machine) -> None:
    rs = await _run(default_machine, SEED_003)
    assert rs["cached"].note.endswith(", 0, 0, 0]")
    uncached = rs["uncached"].note
    assert "[0" not in uncached and ", 0" not in uncached
    stale = rs["skip-invalidate-at-map"]
    assert "STALE_READ" in _kinds(stale, 7) and "descriptor 0 of step 7" in _kinds(stale, 7)
    assert "LOST_WRITE" in _kinds(rs["skip-clean-at-unmap"], 4)


async def test_004_domain_reuse(default_machine: Machine) -> None:
    rs = await _run(default_machine, SEED_004)
    assert (
        rs["shared-domain"].note == "dma0+dma1: MAP events at B's map 0 (device), same IOVAs True"
    )
    assert "MAP events at B's map 0" not in rs["separate-domains"].note
    assert "LOST_WRITE" in _kinds(rs["skip-clean-at-unmap"], 7)


async def test_001_move(default_machine: Machine) -> None:
    rs = await _run(default_machine, SEED_001)
    dyn = rs["dynamic"]
    assert set(dyn.machine["written_after_move"]) <= set(dyn.machine["new_pages"])
    assert not set(dyn.machine["old_pages"]) & set(dyn.machine["new_pages"])
    assert rs["pinned"].steps[0].error.startswith("EBUSY")
    stale = rs["stale-addresses"]
    assert "IOMMU_FAULT" in _kinds(stale, 4)


async def test_002_revoke(default_machine: Machine) -> None:
    rs = await _run(default_machine, SEED_002)
    assert rs["revoke"].counters["dma1"]["translation_faults"] == 1
    bad = rs["revoke-without-clean"]
    assert "WRITEBACK_AFTER_UNMAP" in _kinds(bad, 6) and "differ in memory" in _kinds(bad, 4)
