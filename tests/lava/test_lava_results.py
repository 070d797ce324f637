"""`dmalab lava results`: a run as LAVA test sets and cases, through LAVA's own helpers when they
are on PATH (fakes here that log their arguments) and as LAVA's results YAML otherwise."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmalab.lava.results import EXPORT_FIELDS, VERDICT_CASE, cases, map_events

DATA = Path(__file__).parents[1] / "scenarios" / "data" / "results.json"


def dmalab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_dmalab(), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _dmalab() -> str:
    return str(Path(sys.executable).with_name("dmalab"))


def doc() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def fake_lava(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """lava-test-case and lava-test-set that append their arguments to a log, first on PATH."""
    bin_dir, log = tmp_path / "bin", tmp_path / "lava.log"
    bin_dir.mkdir()
    for tool in ("lava-test-case", "lava-test-set"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


def test_sets_and_cases_through_lava_helpers(tmp_path: Path) -> None:
    env, log = fake_lava(tmp_path)
    proc = dmalab("lava", "results", str(DATA), env=env)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    topologies = list(dict.fromkeys(r["topology"] for r in doc()["results"]))
    starts = [line.split()[-1] for line in lines if line.startswith("lava-test-set start")]
    stops = [line.split()[-1] for line in lines if line.startswith("lava-test-set stop")]
    assert starts == stops == topologies
    assert lines[0] == f"lava-test-set start {topologies[0]}"
    assert lines[-2] == f"lava-test-set stop {topologies[-1]}"
    assert (
        lines[-1] == f"lava-test-case {VERDICT_CASE} --result pass --measurement 0 --units failed"
    )
    cached = [line for line in lines if " 003-sgt-cache.cached " in line]
    uncached = [line for line in lines if " 003-sgt-cache.uncached " in line]
    assert cached and all(line.endswith("--result pass --measurement 2 --units map_events")
                          for line in cached)  # fmt: skip
    assert uncached and all("--measurement 8 " in line for line in uncached)
    case_lines = [line for line in lines if line.startswith("lava-test-case")]
    # LAVA's signal splits its parameters on spaces: units are one word, and come last.
    assert all(" --units " not in line or len(line.split(" --units ")[1].split()) == 1
               for line in case_lines)  # fmt: skip
    assert len(case_lines) == len(doc()["results"]) + 1
    assert "recorded" in proc.stderr


def test_yaml_without_lava_helpers(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + ":/usr/bin:/bin")
    out = tmp_path / "lava.yaml"
    proc = dmalab("lava", "results", str(DATA.parent), "--output", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = yaml.safe_load(out.read_text())
    assert all(tuple(row) == EXPORT_FIELDS for row in rows)
    assert [row["name"] for row in rows][-1] == VERDICT_CASE
    by_set: dict[str, list[str]] = {}
    for row in rows[:-1]:
        by_set.setdefault(row["metadata"]["set"], []).append(row["name"])
    assert set(by_set) == {r["topology"] for r in doc()["results"]}
    assert all(row["suite"] == "dmalab" for row in rows)
    # The data's one n/a result (a topology without the shared domain it needs) is a skip.
    assert {row["name"] for row in rows if row["result"] != "pass"} == {
        "004-domain-reuse.shared-domain"
    }
    measured = {row["name"]: row["measurement"] for row in rows if row["unit"] == "map_events"}
    assert measured["003-sgt-cache.cached"] == "2" and measured["003-sgt-cache.uncached"] == "8"


def test_failures_policies_and_na() -> None:
    results = copy.deepcopy(doc()["results"])
    results[0]["outcome"] = "FAIL"
    results[1]["outcome"] = "unavailable"
    results[2]["policy"] = "cache-sgt"
    out = cases(results)
    assert out[0].result == "fail" and out[1].result == "skip"
    assert out[2].name == f"{results[2]['scenario']}.{results[2]['variant']}.cache-sgt"
    assert out[-1].name == VERDICT_CASE and out[-1].result == "fail" and out[-1].measurement == 1
    assert cases([])[-1].result == "fail"  # an empty run proves nothing


def test_map_events_take_the_largest_device_per_step() -> None:
    result = {"steps": [
        {"counters": {"dma0": {"iommu_map_events": 2}, "dma1": {"iommu_map_events": 2}}},
        {"counters": {"dma0": {"stale_reads": 1}}},
        {"counters": {"dma0": {"iommu_map_events": 1}}},
    ]}  # fmt: skip
    assert map_events(result) == 3
    assert map_events({"steps": []}) is None


def test_not_a_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("{}")
    proc = dmalab("lava", "results", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith("dmalab: error: ") and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("tool_exit", [3])
def test_failing_lava_helper_is_an_environment_problem(tmp_path: Path, tool_exit: int) -> None:
    env, _ = fake_lava(tmp_path)
    (tmp_path / "bin" / "lava-test-case").write_text(
        f"#!/bin/sh\necho broken >&2\nexit {tool_exit}\n"
    )
    proc = dmalab("lava", "results", str(DATA), env=env)
    assert proc.returncode == 3
    assert proc.stderr.startswith("dmalab: error: ") and "broken" in proc.stderr
