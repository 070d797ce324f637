"""`dmalab report --merge`: shards' results joined into the whole run's files, refusing shards of
different builds, of different runs and overlapping ones; on a real two-shard run of both
architectures the merge equals the unsharded run verdict for verdict."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dmalab.errors import BadInput
from dmalab.scenarios.merge_results import merge
from dmalab.scenarios.results import comparable

DATA = Path(__file__).parent / "data" / "results.json"
#: Both architectures, two scenarios: four topologies, shards of two machines each.
KEYWORD = "003-sgt-cache or revoke-without-clean"


def dmalab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmalab", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def shards(count: int) -> list[dict[str, Any]]:
    """The data file split as `--shard I/count` splits a run, with a build recorded."""
    results = json.loads(DATA.read_text())["results"]
    out = []
    for i in range(1, count + 1):
        part = results[(i - 1) * len(results) // count : i * len(results) // count]
        meta = {"seed": 1, "shard": f"{i}/{count}", "qemu": {"build_key": "q1"},
                "dmalab_commit": "c1", "guest": {"default": {"image_key": "g1"}},
                "host": {"hostname": f"h{i}"}}  # fmt: skip
        timing = {"wall_seconds": float(i), "machines": [{"topology": "x"}]}
        out.append({"meta": meta, "results": part, "timing": timing})
    return out


def named(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    return [(d, f"s{d['meta']['shard'][0]}") for d in docs]


def test_shards_in_any_order_join_in_run_order() -> None:
    parts = shards(3)
    doc = merge(named(parts[::-1]))
    assert doc["results"] == json.loads(DATA.read_text())["results"]
    merged = doc["meta"]["merged"]
    assert [s["shard"] for s in merged["shards"]] == ["1/3", "2/3", "3/3"]
    assert merged["missing"] == [] and set(merged["hosts"]) == {"1/3", "2/3", "3/3"}
    assert "shard" not in doc["meta"] and "host" not in doc["meta"]
    assert doc["timing"]["wall_seconds"] == 3.0
    assert [m["shard"] for m in doc["timing"]["machines"]] == ["1/3", "2/3", "3/3"]


def test_a_missing_shard_is_named() -> None:
    parts = shards(3)
    assert merge(named([parts[0], parts[2]]))["meta"]["merged"]["missing"] == ["2/3"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m["qemu"].update(build_key="q2"), "different builds (qemu.build_key q1 vs q2)"),
        (lambda m: m.update(dmalab_commit="c2"), "different builds (dmalab_commit"),
        (lambda m: m["guest"]["default"].update(image_key="g2"), "guest.default.image_key"),
        (lambda m: m.update(seed=2), "not shards of one run (meta.seed differs)"),
        (lambda m: m.update(shard="2/4"), "is a shard of 4"),
        (lambda m: m.update(shard="1/3"), "are both shard 1/3"),
    ],
)
def test_refused(change: Any, words: str) -> None:
    parts = shards(3)
    change(parts[1]["meta"])
    with pytest.raises(
        BadInput, match=r"^--merge: .*" + words.replace("(", r"\(").replace(")", r"\)")
    ):
        merge(named(parts))


def test_overlapping_shards_refused() -> None:
    parts = shards(2)
    parts[1]["results"].append(copy.deepcopy(parts[0]["results"][0]))
    with pytest.raises(BadInput, match="overlap"):
        merge(named(parts))


def test_cli_refuses_in_one_line(tmp_path: Path) -> None:
    parts = shards(2)
    parts[1]["meta"]["qemu"]["build_key"] = "q2"
    dirs = []
    for i, doc in enumerate(parts):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "results.json").write_text(json.dumps(doc))
        dirs.append(str(tmp_path / f"s{i}"))
    proc = dmalab("report", "--merge", *dirs, "--results", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("dmalab: error: --merge: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "results.json").exists()


def test_merged_shards_equal_the_unsharded_run(tmp_path: Path) -> None:
    """A real run, unsharded and in two shards (x86 topologies in one, arm64 in the other)."""
    for name, shard in (("all", []), ("s2", ["--shard", "2/2"]), ("s1", ["--shard", "1/2"])):
        proc = dmalab("run", "--accel", "tcg", "-k", KEYWORD, *shard,
                      "--results", str(tmp_path / name))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = dmalab("report", "--merge", str(tmp_path / "s2"), str(tmp_path / "s1"),
                  "--results", str(tmp_path / "merged"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "verdict: PASS"
    assert {p.name for p in (tmp_path / "merged").iterdir()} >= {
        "results.json",
        "junit.xml",
        "report.html",
    }
    whole = json.loads((tmp_path / "all" / "results.json").read_text())
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert len({r["arch"] for r in merged["results"]}) == 2
    assert [comparable(r) for r in merged["results"]] == [comparable(r) for r in whole["results"]]
    proc = dmalab("report", "--compare", str(tmp_path / "all"), str(tmp_path / "merged"))
    assert proc.returncode == 0 and f"unchanged: {len(whole['results'])}" in proc.stdout
    junit = (tmp_path / "merged" / "junit.xml").read_text()
    assert junit.count("<testcase ") == len(whole["results"])
