"""`dmalab run --matrix` on seeds 000 and 003 (topologies x policies), a scenario file through
`--scenario-file`, and option values refused before anything boots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dmalab.scenarios.results_schema import schema

MATRIX = ["--matrix", "-s", "000-arnd-table", "-s", "003", "-j", "2"]
TOPOLOGIES = ["default", "virtio-iommu", "coherent"]
POLICIES = ["base", "cache-sgt", "exclusive"]

#: A scenario file whose "correct" variant skips the clean at unmap: it must fail.
LOST = """\
name = "lost-copy"
seed = "901"
title = "one copy, cleaned or not"

[buffers.buf]
pages = 2
exporter = "dma2"

[actors]
A = "dma2"

[[step]]
n = 1
actor = "driver A"
action = "cpu"
write = "page 0"

[[step]]
n = 2
actor = "driver A"
action = "map"

[[step]]
n = 3
actor = "device A"
action = "dma-copy"
from = "page 0"
to = "page 1"

[[step]]
n = 4
actor = "driver A"
action = "unmap"

[[step]]
n = 4
action = "check"
range = "page 1"
equals = "cpu-pattern"
pattern = 1

[[variant]]
name = "clean"
expect = "pass"

[[variant]]
name = "claims-clean"
expect = "pass"
actors.A.faults = ["SKIP_UNMAP_CLEAN"]
"""


def dmalab_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmalab", "run", "--accel", "tcg", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("matrix")
    proc = dmalab_run(*MATRIX, "--results", str(out))
    print(f"\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads((out / "results.json").read_text())


def cells(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(variant, topology, policy) -> result, for seeds 000 and 003."""
    return {(r["variant"], r["topology"], r["policy"]): r for r in doc["results"]}


def test_the_results_match_their_published_schema(matrix: tuple[str, dict[str, Any]]) -> None:
    jsonschema.validate(matrix[1], schema(), cls=jsonschema.Draft202012Validator)


def test_every_cell_of_the_matrix_is_there(matrix: tuple[str, dict[str, Any]]) -> None:
    _, doc = matrix
    assert doc["meta"]["matrix"] is True and doc["meta"]["policies"] == POLICIES
    assert doc["meta"]["topologies"] == TOPOLOGIES
    assert len(doc["results"]) == 3 * 3 * 8
    # Canonical order: topology, policy, scenario, variant.
    order = [(r["topology"], r["policy"]) for r in doc["results"]]
    assert order == [(t, p) for t in TOPOLOGIES for p in POLICIES for _ in range(8)]


def test_correct_variants_pass_everywhere_but_in_cells_they_declare_na(
    matrix: tuple[str, dict[str, Any]],
) -> None:
    _, doc = matrix
    c = cells(doc)
    for (variant, _, _), r in c.items():
        if variant in ("shared-read", "exclusive", "cached", "uncached"):
            assert r["expectation"] == "pass" and r["outcome"] in ("pass", "unavailable"), r
    for topo in TOPOLOGIES:
        uncached = c["uncached", topo, "cache-sgt"]
        assert uncached["outcome"] == "unavailable" and "CACHE_SGT" in uncached["note"]
        assert c["exclusive", topo, "exclusive"]["outcome"] == "unavailable"
        assert c["exclusive", topo, "base"]["outcome"] == "pass"


def test_faulty_variants_are_caught_under_base_and_declared_elsewhere(
    matrix: tuple[str, dict[str, Any]],
) -> None:
    _, doc = matrix
    c = cells(doc)
    for topo in ("default", "virtio-iommu"):
        table = c["table", topo, "base"]
        assert table["expectation"] == "detected" and table["outcome"] == "detected"
        assert {4, 11} <= set(table["detected_steps"])
        stale = c["skip-invalidate-at-map", topo, "cache-sgt"]
        assert (stale["expectation"], stale["outcome"]) == ("detected", "detected")
    for topo in TOPOLOGIES:
        # EXCLUSIVE is the fix for the table: the CPU accesses wait for the owner's unmap.
        fixed = c["table", topo, "exclusive"]
        assert (fixed["expectation"], fixed["outcome"], fixed["evidence"]) == ("pass", "pass", [])
        assert fixed["note"].endswith("1, 2, 3, 5, 7, 9, 4, 6, 8, 10, 12, 11")
    # Coherent devices have no cache: a skipped clean loses nothing; ownership is still checked.
    lost = c["skip-clean-at-unmap", "coherent", "base"]
    assert (lost["expectation"], lost["outcome"]) == ("pass", "pass")
    assert c["table", "coherent", "base"]["outcome"] == "detected"


def test_the_matrix_table(matrix: tuple[str, dict[str, Any]]) -> None:
    out, _ = matrix
    lines = out.splitlines()
    assert lines[0].split() == TOPOLOGIES
    assert lines[1].split() == ["scenario/variant", "expect", *POLICIES * 3]
    row = next(line for line in lines if line.startswith("000-arnd-table/table "))
    assert row.split() == ["000-arnd-table/table", "det", "4,11", "det", "4,11", "det", "4,11",
                           "pass", "det", "4,11", "det", "4,11", "pass", "det", "4,11", "det",
                           "4,11", "pass"]  # fmt: skip
    assert "003-sgt-cache/uncached [cache-sgt]: n/a: it checks a new IOMMU mapping" in out
    assert "verdict: PASS" in out


def test_a_scenario_file_that_fails_makes_the_run_fail(tmp_path: Path) -> None:
    file = tmp_path / "lost.toml"
    file.write_text(LOST)
    proc = dmalab_run("-t", "default", "--policy", "base", "--scenario-file", str(file),
                      "--results", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "dmalab: error: verdict: FAIL (lost-copy/default/claims-clean[base])"
    )
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["meta"]["scenarios"] == ["lost-copy"]  # only the file: no -s given
    assert [(r["variant"], r["policy"], r["outcome"]) for r in doc["results"]] == [
        ("clean", "base", "pass"),
        ("claims-clean", "base", "FAIL"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-j", "0"], "-j/--jobs: 0 is out of range (1..64)"),
        (["--jobs", "two"], "-j/--jobs: not an integer: 'two'"),
        (["--seed", "-1"], "--seed: -1 is out of range (0..18446744073709551615)"),
        (["--policy", "strict"], "--policy: unknown policy 'strict' (known: base, cache-sgt"),
        (["-s", "999"], "--scenario: no scenario matches 999"),
        (["--scenario-file", "/nonexistent/x.toml"], "/nonexistent/x.toml"),
        (["-t", "nonexistent"], "nonexistent: no such topology"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = dmalab_run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("dmalab: error: ") and message in line
