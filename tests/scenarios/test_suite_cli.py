"""The whole built-in suite through `dmalab run --results`, on both shipped topologies, and its
determinism: two runs agree on everything but wall times and physical addresses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from dmalab.scenarios.suite import SUITE

SUITE_BUDGET_S = 60.0


def _run(results: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "--results", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc, time.perf_counter() - start


def test_dmalab_run_writes_results_and_passes(tmp_path: Path) -> None:
    proc, seconds = _run(tmp_path / "a")
    print(f"\nwhole suite: {seconds:.1f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout
    data = json.loads((tmp_path / "a" / "results.json").read_text())["results"]
    variants = sum(len(s.variants) for s in SUITE)
    assert len(data) == 2 * variants
    assert {r["topology"] for r in data} == {"default", "virtio-iommu"}
    unavailable = [r for r in data if r["outcome"] == "unavailable"]
    assert [(r["topology"], r["scenario"], r["variant"]) for r in unavailable] == [
        ("virtio-iommu", "004-domain-reuse", "shared-domain")
    ]
    for r in data:
        if r["outcome"] != "unavailable":
            assert r["outcome"] == ("pass" if r["expectation"] == "pass" else "detected"), r
            assert set(r["expected_steps"]) <= set(r["detected_steps"])
    root = ET.parse(tmp_path / "a" / "junit.xml").getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 2 * variants and not root.findall(".//failure")
    assert len(root.findall(".//skipped")) == 1
    assert seconds <= SUITE_BUDGET_S

    # Same results again (but for times and physical addresses).
    proc2, _ = _run(tmp_path / "b")
    assert proc2.returncode == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())["results"]
    for r in (*data, *again):
        r.pop("timing")
        r.pop("machine")
    assert again == data
