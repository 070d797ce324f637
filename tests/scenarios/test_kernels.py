"""The kernel as a matrix axis, end to end: `dmalab run --matrix` on arm64-noncoherent with
Debian's 6.12 and bookworm's 6.1 (`--kernel debian:6.12 --kernel debian:6.1`), seeds 000 and
003. Every result names its kernel, both kernels have every cell, and junit.xml, report.html
and the terminal matrix show them side by side. What each kernel's cells show is the kernels'
own result: this test checks that they ran, not what they found."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dmalab.scenarios.api import POLICIES
from dmalab.scenarios.suite import SUITE

KERNELS = ["debian:6.12", "debian:6.1"]
SEEDS = ("000", "003")


def test_matrix_over_two_debian_kernels(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", "--matrix", "-j", "2",
         "-t", "arm64-noncoherent", *(a for s in SEEDS for a in ("-s", s)),
         *(a for k in KERNELS for a in ("--kernel", k)), "--results", str(out)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    print(f"\n{proc.stdout}")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: a kernel's finding
    doc = json.loads((out / "results.json").read_text())
    results = doc["results"]
    variants = [(s.name, v.name) for s in SUITE if s.seed in SEEDS for v in s.variants]
    cells = {(r["kernel"], r["policy"], r["scenario"], r["variant"]) for r in results}
    want = {(k, p, s, v) for k in KERNELS for p in POLICIES for s, v in variants}
    assert cells == want and len(results) == len(want)
    assert [r["kernel"] for r in results] == [k for k in KERNELS for _ in range(len(want) // 2)]
    assert all(r["outcome"] != "FAIL" or r["evidence"] for r in results)
    # which kernel each booted: meta names the image and release of every kernel
    releases = {k: v["aarch64"]["kernel_release"] for k, v in doc["meta"]["kernels"].items()}
    assert releases["debian:6.12"].startswith("6.12.")
    assert releases["debian:6.1"].startswith("6.1.0-")
    assert {m["kernel"] for m in doc["timing"]["machines"]} == set(KERNELS)
    # junit: a kernel property on every testcase; report.html and the matrix: a column each
    props = [p.get("value") for p in ET.parse(out / "junit.xml").iter("property")
             if p.get("name") == "kernel"]  # fmt: skip
    assert props == [r["kernel"] for r in results]
    html = (out / "report.html").read_text()
    assert all(f"arm64-noncoherent {k}" in html for k in KERNELS)
    kernel_row = proc.stdout.splitlines()[1].split()
    assert kernel_row == KERNELS
