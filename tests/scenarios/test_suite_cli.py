"""The whole built-in suite through `dmalab run -j 2 --results`, on both shipped topologies: every
verdict, the files it writes and what results.json holds. How fast it is, is measured by
`dmalab bench suite` (docs/benchmarks.md), not here; run-to-run determinism is tested in
test_parallel.py."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dmalab.machine.topology import topology_path
from dmalab.scenarios.platform import PLATFORM, PLATFORM_HEAP
from dmalab.scenarios.suite import SUITE


def test_dmalab_run_writes_results_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "a"
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "-j", "2", "--results",
         str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(f"\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    data = doc["results"]
    variants = sum(len(s.variants) for s in SUITE)
    topologies = [
        "default", "virtio-iommu", "arm64-smmuv3", "arm64-virtio-iommu", "arm64-noncoherent"
    ]  # fmt: skip
    assert len(data) == len(topologies) * variants
    assert [r["topology"] for r in data] == [t for t in topologies for _ in range(variants)]
    assert [r["arch"] for r in data] == ["x86_64"] * 2 * variants + ["aarch64"] * 3 * variants
    # every topology has two devices in one IOMMU domain; only the platform scenarios, which
    # need modelled CPU caches, are unavailable elsewhere than arm64-noncoherent, and there the
    # heap's (Debian's arm64 kernel has no system dma-heap)
    skipped = {(r["topology"], r["scenario"], r["variant"]) for r in data
               if r["outcome"] == "unavailable"}  # fmt: skip
    assert skipped == {(t, s.name, v.name) for t in topologies for s in PLATFORM
                       for v in s.variants
                       if t != "arm64-noncoherent" or s is PLATFORM_HEAP}  # fmt: skip
    for r in data:
        assert "policy" not in r  # only a matrix run has policies
        assert r["timing"]["seconds"] >= 0
        if r["outcome"] != "unavailable":
            assert r["outcome"] == ("pass" if r["expectation"] == "pass" else "detected"), r
            assert set(r["expected_steps"]) <= set(r["detected_steps"])
            assert "restore_seconds" in r["timing"] and r["timing"]["vm"] >= 1
    meta = doc["meta"]
    assert {k: meta[k] for k in ("seed", "topologies", "scenarios", "policies", "matrix")} == {
        "seed": 1,
        "topologies": topologies,
        "scenarios": [s.name for s in SUITE],
        "policies": ["base"],
        "matrix": False,
    }
    assert meta["dmalab"] and meta["dmalab_commit"] != "unknown"
    assert meta["topology_files"] == {t: str(topology_path(t)) for t in topologies}
    assert meta["accel"] == dict.fromkeys(topologies, "tcg")
    releases = {t: g["kernel_release"] for t, g in meta["guest"].items()}
    assert [releases[t].rsplit("-", 1)[1] for t in topologies] == ["amd64"] * 2 + ["arm64"] * 3
    assert meta["qemu"]["version"].startswith("QEMU emulator version 10.0")
    assert meta["qemu"]["build_key"] and meta["host"]["hostname"]
    for guest in meta["guest"].values():
        assert guest["kernel_release"] and guest["image_key"]
    machines = doc["timing"]["machines"]
    # -j 2 may boot a second machine of a topology whose queue is long (n/a items included)
    assert sorted({m["topology"] for m in machines}) == sorted(topologies)
    for t in topologies:
        assert sum(m["variants"] for m in machines if m["topology"] == t) == variants
    assert all(m["boot_seconds"] > 0 for m in machines)
    assert doc["timing"]["wall_seconds"] > 0
    root = ET.parse(out / "junit.xml").getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(topologies) * variants and not root.findall(".//failure")
    assert len(root.findall(".//skipped")) == len(skipped)
    arches = [p.get("value") for p in root.findall("./testsuite/testcase/properties/property")]
    assert arches == [r["arch"] for r in data]
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_dmalab_run_on_your_own_kernel(own_kernel: list[str], tmp_path: Path) -> None:
    """--kernel/--modules: an image is built around the kernel and the run boots it; the JSON
    on stdout is results.json's document, and the summary and verdict go to stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "-t", "default", "-s", "002",
         *own_kernel, "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["meta"]["kernel"]["file"] == own_kernel[1]
    assert doc["meta"]["kernel"]["release"] == Path(own_kernel[3]).name
    assert [r["outcome"] for r in doc["results"]] == ["pass", "detected"]
    assert "verdict: PASS" in proc.stderr and " results in " in proc.stderr


def test_a_topology_file_is_named_by_its_name(tmp_path: Path) -> None:
    """Given as a path, a topology is still `default` in results, junit.xml and the report;
    the path is in meta."""
    copy = tmp_path / "files" / "lab-7.toml"
    copy.parent.mkdir()
    copy.write_text(topology_path("default").read_text())
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "-t", str(copy), "-s", "002",
         "--results", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert {r["topology"] for r in doc["results"]} == {"default"}
    assert doc["meta"]["topologies"] == ["default"]
    assert doc["meta"]["topology_files"] == {"default": str(copy)}
    classnames = {c.get("classname") for c in ET.parse(out / "junit.xml").iter("testcase")}
    assert classnames == {"default.002-revoke"}
    assert str(copy.parent) not in (out / "junit.xml").read_text()
