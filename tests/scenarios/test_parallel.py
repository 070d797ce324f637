"""`dmalab run -j N` and `--seed N`: the same results whatever the number of machines, the same
results for the same seed, the same verdicts for another seed; and how `run_suite` shares the
work out, keeps the canonical order and shuts every machine down when one job fails.

The runs use both vIOMMUs (the default topology's intel-iommu and virtio-iommu): on
virtio-iommu the MAP event counts follow the buffers' physical layout, which the guest driver
keeps the same from boot to boot (docs/scenarios.md, "Determinism").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dmalab.errors import CheckFailed
from dmalab.scenarios import runner
from dmalab.scenarios.declarations import Scenario, Variant
from dmalab.scenarios.results import Result, comparable
from dmalab.scenarios.suite import plan
from dmalab.selection import Shard

TOPOLOGIES = ["-t", "default", "-t", "virtio-iommu"]
SUBSET = [*TOPOLOGIES, "-s", "000-arnd-table", "-s", "003", "-s", "002"]
#: The whole suite and seed 000's scenario-file example: 20 variants a topology, enough for a
#: second machine of one topology with -j 3.
EXAMPLE_000 = Path(__file__).resolve().parents[2] / "docs" / "examples" / "000-arnd-table.toml"
WHOLE = [*TOPOLOGIES, *("-s", "000", "-s", "003", "-s", "004", "-s", "001", "-s", "002"),
         "--scenario-file", str(EXAMPLE_000)]  # fmt: skip


def dmalab_run(*args: str, results: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", *args]
    argv += ["--results", str(results)] if results else []
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """results.json without what may differ from run to run: the top-level `timing` and, per
    result, what `results.comparable` leaves out."""
    out = {k: v for k, v in doc.items() if k != "timing"}
    out["results"] = [comparable(r) for r in doc["results"]]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Runs on both topologies: the subset with -j 2 and -j 1 and the default seed; the whole
    suite and the 000 example with -j 3 and seed 99 (enough variants for a second machine of one
    topology); the subset in two shards."""
    docs = {}
    for name, args in (
        ("j2", [*SUBSET, "-j", "2"]),
        ("j1", [*SUBSET, "-j", "1"]),
        ("j3-seed99", [*WHOLE, "-j", "3", "--seed", "99"]),
        ("shard1", [*SUBSET, "--shard", "1/2"]),
        ("shard2", [*SUBSET, "--shard", "2/2", "-j", "2"]),
    ):
        out = tmp_path_factory.mktemp(name)
        proc = dmalab_run(*args, results=out)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
        print(f"\n{name}: " + next(x for x in proc.stdout.splitlines() if " results in " in x))
        docs[name] = json.loads((out / "results.json").read_text())
    return docs


def test_one_or_two_machines_at_once_give_the_same_results(runs: dict[str, Any]) -> None:
    j1, j2 = runs["j1"], runs["j2"]
    assert _comparable(j2) == _comparable(j1)
    assert [m["topology"] for m in j1["timing"]["machines"]] == ["default", "virtio-iommu"]
    assert sorted(m["topology"] for m in j2["timing"]["machines"]) == ["default", "virtio-iommu"]
    # Every variant has its own wall times.
    assert all(r["timing"]["seconds"] >= 0 for r in j2["results"])


def test_meta_says_how_the_run_was_made(runs: dict[str, Any]) -> None:
    meta = runs["j2"]["meta"]
    assert meta["seed"] == 1 and meta["topologies"] == ["default", "virtio-iommu"]
    assert meta["scenarios"] == ["000-arnd-table", "003-sgt-cache", "002-revoke"]
    assert meta["policies"] == ["base"] and meta["matrix"] is False and meta["dmalab"]
    assert "jobs" not in meta
    whole = runs["j3-seed99"]["meta"]
    assert whole["seed"] == 99 and len(whole["scenarios"]) > len(meta["scenarios"])


def test_two_shards_together_are_the_whole_run(runs: dict[str, Any]) -> None:
    whole = _comparable(runs["j1"])
    parts = [_comparable(runs[f"shard{i}"]) for i in (1, 2)]
    assert parts[0]["results"] and parts[1]["results"]
    assert parts[0]["results"] + parts[1]["results"] == whole["results"]
    for i, part in enumerate(parts, 1):
        # `accel` is what the shard's own machines ran under: only the topologies it booted
        meta = dict(part["meta"])
        used = meta.pop("accel")
        assert used and used.items() <= whole["meta"]["accel"].items()
        rest = {k: v for k, v in whole["meta"].items() if k != "accel"}
        assert meta == {**rest, "shard": f"{i}/2"}
    # The subset is 2 topologies of equal length: each shard boots one machine, of its own.
    machines = [[m["topology"] for m in runs[f"shard{i}"]["timing"]["machines"]] for i in (1, 2)]
    assert machines == [["default"], ["virtio-iommu"]]


def test_another_seed_writes_other_bytes_with_the_same_verdicts(runs: dict[str, Any]) -> None:
    base = runs["j2"]["results"]
    subset = set(runs["j2"]["meta"]["scenarios"])
    other = [r for r in runs["j3-seed99"]["results"] if r["scenario"] in subset]
    # Three jobs on two topologies: one topology's variants are split over two machines.
    assert len(runs["j3-seed99"]["timing"]["machines"]) == 3

    def verdicts(rs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["scenario"], r["topology"], r["variant"], r["expectation"], r["outcome"],
                 r["detected_steps"]) for r in rs]  # fmt: skip

    assert verdicts(other) == verdicts(base)
    # The bytes changed: the evidence quoting them differs (device bytes, byte counts).
    changed = [a["variant"] for a, b in zip(base, other, strict=True)
               if a["evidence"] != b["evidence"]]  # fmt: skip
    assert "table" in changed and "skip-clean-at-unmap" in changed


# ---------------------------------------------------------------------------------------------
# The scheduler, with stand-in machines (no guest)


class FakeMachine:
    def __init__(self, topology: str, log: list[str], fail_after: int | None) -> None:
        self.topology = topology
        self.log = log
        self.fail_after = fail_after
        self.ran = 0
        self.boot_seconds = self.save_seconds = 0.01
        self.vm = SimpleNamespace(accel="tcg")

    async def run_one(self, sc: Scenario, v: Variant, **kw: Any) -> Result:
        if self.fail_after is not None and self.ran >= self.fail_after:
            raise CheckFailed(f"{self.topology}: the guest died")
        self.ran += 1
        await asyncio.sleep(random.uniform(0, 0.003))
        return Result(sc.name, sc.seed, self.topology, v.name, v.expect, "pass", [], [], [], {},
                      [], policy=kw["policy"] if kw.get("matrix") else None)  # fmt: skip


def fake_suite(
    monkeypatch: pytest.MonkeyPatch, fail: str | None = None, hang: str | None = None
) -> list[str]:
    """Stand-ins for booting: each machine logs its boot and its shutdown."""
    log: list[str] = []
    count: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def machine(topology: str, **kw: Any) -> AsyncIterator[FakeMachine]:
        count[topology] = count.get(topology, 0) + 1
        name = f"{topology}#{count[topology]}"
        log.append(f"boot {name}")
        await asyncio.sleep(0.01)
        try:
            m = FakeMachine(topology, log, 2 if topology == fail else None)
            if topology == hang:
                await asyncio.sleep(60)
            yield m
        finally:
            log.append(f"shutdown {name}")

    monkeypatch.setattr(runner, "machine", machine)
    monkeypatch.setattr(runner, "load_topology", lambda t: SimpleNamespace(name=t))
    monkeypatch.setattr(runner, "artifacts_for", lambda loaded: (None, dict.fromkeys(loaded)))
    monkeypatch.setattr(runner, "provenance", lambda *args: {})
    return log


async def _noop(run: Any) -> None:
    pass


VARIANTS = tuple(Variant(f"v{j}", "pass") for j in range(6))
SCENARIOS = [Scenario(f"s{i}", f"{i:03}", "stand-in", _noop, VARIANTS) for i in range(5)]


async def test_results_come_in_canonical_order_whatever_finishes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = fake_suite(monkeypatch)
    seen: list[Result] = []
    run = await runner.run_suite(["a", "b"], SCENARIOS, jobs=4, on_result=seen.append,
                                 policies=["base", "exclusive"])  # fmt: skip
    want = [(t, p, s.name, v.name) for t in "ab" for p in ("base", "exclusive")
            for s in SCENARIOS for v in s.variants]  # fmt: skip
    assert [(r.topology, r.policy, r.scenario, r.variant) for r in run.results] == want
    assert len(seen) == len(want) and seen != run.results  # live in completion order
    # Two machines per topology (60 variants each), every one shut down.
    assert sorted(e for e in log if e.startswith("boot")) == [
        "boot a#1", "boot a#2", "boot b#1", "boot b#2",
    ]  # fmt: skip
    assert sorted(e for e in log if e.startswith("shutdown")) == [
        "shutdown a#1", "shutdown a#2", "shutdown b#1", "shutdown b#2",
    ]  # fmt: skip
    assert run.meta["policies"] == ["base", "exclusive"] and run.meta["matrix"] is True


async def test_shards_run_their_items_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_suite(monkeypatch)
    policies = ["base", "exclusive"]
    whole = await runner.run_suite(["a", "b"], SCENARIOS, jobs=2, policies=policies)
    items = plan(["a", "b"], SCENARIOS, policies)
    parts = []
    for i in (1, 2, 3):
        log.clear()
        part = Shard(i, 3).take(items)
        run = await runner.run_suite(["a", "b"], SCENARIOS, jobs=i, policies=policies, items=part)
        parts += run.results
        booted = sorted({e.split()[1][0] for e in log if e.startswith("boot")})
        assert booted == sorted({item.topology for item in part})  # no machine for nothing

    log.clear()
    empty = await runner.run_suite(["a", "b"], SCENARIOS, jobs=2, items=Shard(1, 200).take(items))
    assert empty.results == [] and empty.timing["machines"] == [] and log == []

    def bare(rs: list[Result]) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(r).items() if k != "timing"} for r in rs]

    assert bare(parts) == bare(whole.results)


async def test_one_job_boots_one_machine_per_topology_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = fake_suite(monkeypatch)
    run = await runner.run_suite(["a", "b"], SCENARIOS, jobs=1)
    assert log == ["boot a#1", "shutdown a#1", "boot b#1", "shutdown b#1"]
    assert all(r.policy is None for r in run.results)


async def test_a_failing_job_shuts_every_machine_down(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_suite(monkeypatch, fail="a", hang="b")
    with pytest.raises(CheckFailed, match="a: the guest died"):
        await runner.run_suite(["a", "b"], SCENARIOS, jobs=2)
    assert sorted(log) == ["boot a#1", "boot b#1", "shutdown a#1", "shutdown b#1"]


# ---------------------------------------------------------------------------------------------
# `dmalab bench suite`, with stand-in runs


def test_bench_suite_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmalab.bench import suite as bench

    def one(spec: Any, out: Path, log: Any) -> dict[str, Any]:
        jobs = spec.jobs
        doc = {"results": [{"variant": "v", "timing": {"seconds": jobs}, "machine": {}}]}
        return {"jobs": jobs, "baseline": spec.checkout is not None,
                "wall_s": 30.0 / jobs + (40 if jobs == 1 else 0) + (5 if spec.checkout else 0),
                "suite_wall_s": 29.0 / jobs, "exit_code": 0, "last_stderr_line": "",
                "results": 1, "machines": [{"topology": "default", "boot_seconds": 2.5}],
                "breakdown": bench.breakdown(doc, 30.0), "exclusive": bench.exclusive_cost(doc),
                "_doc": doc}  # fmt: skip

    monkeypatch.setattr(bench, "_one", one)
    report = bench.run(command="dmalab bench suite")
    assert [r["jobs"] for r in report["runs"]] == [1, 2] and "_doc" not in report["runs"][0]
    assert report["speedup"] == round(70 / 15, 2) and report["same_results"] is True
    assert [(t["name"], t["pass"]) for t in report["targets"]] == [
        ("wall_j1_s", False), ("wall_j2_s", True),
    ]  # fmt: skip
    assert report["all_targets_pass"] is False and report["vs_baseline"] == {}
    table = bench.render_table(report)
    assert "| dmalab run -j 2 | 15.0 | 14.5 | 0.00 |" in table
    assert "target wall_j1_s <= 60: 70.0 MISSED" in table
    json.dumps(report)

    with_base = bench.run(arch="x86_64", baseline=Path("/elsewhere"))
    assert [(r["jobs"], r["baseline"]) for r in with_base["runs"]] == [
        (1, True), (1, False), (2, True), (2, False),
    ]  # fmt: skip
    assert with_base["vs_baseline"] == {"j1": round(70 / 75, 3), "j2": round(15 / 20, 3)}
    assert [t["target"] for t in with_base["targets"]] == ["<= 15", "<= 10"]
    assert "-j 1: 0.933x the baseline's wall time" in bench.render_table(with_base)


def test_bench_suite_breakdown_says_where_the_time_went() -> None:
    from dmalab.bench import suite as bench

    doc = {
        "timing": {"wall_seconds": 10.0, "report_seconds": 0.5,
                   "machines": [{"boot_seconds": 1.5, "snapshot_seconds": 0.3}] * 2},
        "results": [
            {"variant": "table", "timing": {"seconds": 0.2, "wait_seconds": 0.0,
                                            "restore_seconds": 0.0}},
            {"variant": "exclusive", "timing": {"seconds": 0.4, "wait_seconds": 0.1,
                                                "restore_seconds": 0.15}},
        ],
    }  # fmt: skip
    assert bench.breakdown(doc, 11.0) == {
        "boot_s": 3.0, "snapshot_save_s": 0.6, "restore_s": 0.15, "steps_s": 0.5,
        "waits_s": 0.1, "report_s": 0.5, "other_s": 0.5,
    }  # fmt: skip
    assert bench.exclusive_cost(doc) == {
        "variants": 1, "seconds": 0.55, "wait_seconds": 0.1, "share_of_variants": 0.667,
    }  # fmt: skip
