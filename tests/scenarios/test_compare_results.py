"""Comparing two results files, and the `dmalab report` command's output and exit codes."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmalab.cli import main
from dmalab.errors import BadInput
from dmalab.scenarios.compare_results import Key, compare, load, render_text

FIXTURE = Path(__file__).parent / "data" / "results.json"


@pytest.fixture
def doc() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def find(doc: dict[str, Any], scenario: str, topology: str, variant: str) -> dict[str, Any]:
    (r,) = [
        r
        for r in doc["results"]
        if (r["scenario"], r["topology"], r["variant"]) == (scenario, topology, variant)
    ]
    return r


def edited(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)


def test_identical_runs_have_no_change(doc: dict[str, Any]) -> None:
    cmp = compare(doc, edited(doc))
    assert (cmp.added, cmp.removed, cmp.changed) == ([], [], [])
    assert cmp.unchanged == len(doc["results"]) == 16
    assert not cmp.regressed
    assert render_text(cmp).endswith("unchanged: 16\nverdict: no regression")


def test_timing_and_machine_are_ignored(doc: dict[str, Any]) -> None:
    new = edited(doc)
    for r in new["results"]:
        r["timing"] = {"seconds": 99.0, "restore_seconds": 1.0}
        r["machine"] = {"old_pages": [1, 2, 3]}
    new["results"][0].pop("timing")
    cmp = compare(doc, new)
    assert cmp.changed == [] and cmp.unchanged == 16


def test_verdict_change_is_a_regression_and_comes_first(doc: dict[str, Any]) -> None:
    new = edited(doc)
    cached = find(new, "003-sgt-cache", "default", "cached")
    cached["outcome"] = "FAIL"
    cached["detected_steps"] = [6]
    cached["evidence"] = ["step 6 (driver A map (device A)): CHECK 2 MAP events, expected 0"]
    find(new, "003-sgt-cache", "virtio-iommu", "uncached")["note"] = "something else"
    cmp = compare(doc, new, old_name="a", new_name="b")
    assert cmp.regressed
    (reg,) = [c for c in cmp.changed if c.regression]
    assert reg.key == Key("003-sgt-cache", "default", "cached")
    assert (reg.old_verdict, reg.new_verdict) == ("pass", "FAIL")
    assert reg.detected_steps == ([], [6])
    assert reg.evidence_added == cached["evidence"] and reg.evidence_removed == []
    text = render_text(cmp)
    assert text.index("REGRESSIONS (1):") < text.index("changed (1):")
    assert "003-sgt-cache/default/cached: pass -> FAIL" in text
    assert "detected steps: - -> 6" in text
    assert "note: IOMMU MAP events per map step: [2, 2, 2, 2] -> something else" in text
    assert text.endswith("verdict: REGRESSED (1)")


def test_fixed_result_is_not_a_regression(doc: dict[str, Any]) -> None:
    old = edited(doc)
    find(old, "002-revoke", "default", "revoke")["outcome"] = "FAIL"
    cmp = compare(old, doc)
    (c,) = cmp.changed
    assert c.improvement and not cmp.regressed
    assert "fixed (1):" in render_text(cmp)


def test_detected_steps_counters_and_evidence_changes(doc: dict[str, Any]) -> None:
    new = edited(doc)
    table = find(new, "000-arnd-table", "default", "table")
    table["detected_steps"] = [4, 11]
    table["counters"]["dma1"]["conflicting_writes"] = 0  # recorded as 0 vs 64
    table["counters"]["dma0"]["stale_reads"] = 5  # new counter: 0 -> 5
    del table["counters"]["dma1"]["iommu_map_events"]  # missing counts as 0
    gone = table["evidence"].pop(2)
    table["evidence"].append("step 12 (driver B unmap (device B)): something new")
    table["steps"][2]["counters"]["dma0"]["iommu_map_events"] = 5
    table["steps"][2]["owners"] = {"buf": ["device B"]}
    cmp = compare(doc, new)
    assert not cmp.regressed  # still detected as expected
    (c,) = cmp.changed
    assert (c.old_verdict, c.new_verdict) == ("detected as expected", "detected as expected")
    assert c.detected_steps == ([4, 11, 12], [4, 11])
    assert {(x.device, x.counter, x.old, x.new) for x in c.counters} == {
        ("dma0", "stale_reads", 0, 5),
        ("dma1", "conflicting_writes", 64, 0),
        ("dma1", "iommu_map_events", 8, 0),
    }
    assert c.evidence_removed == [gone]
    assert c.evidence_added == ["step 12 (driver B unmap (device B)): something new"]
    assert {(f.field, json.dumps(f.old), json.dumps(f.new)) for f in c.steps} == {
        ("step 3: owners", '{"buf": ["device A"]}', '{"buf": ["device B"]}'),
        ("step 3: dma0.iommu_map_events", "4", "5"),
    }
    text = render_text(cmp)
    assert "000-arnd-table/default/table (detected as expected)" in text
    assert "dma1.conflicting_writes: 64 -> 0" in text
    assert f"evidence gone: {gone}" in text
    assert "step 3: dma0.iommu_map_events: 4 -> 5" in text


def test_removed_and_added_results(doc: dict[str, Any]) -> None:
    new = edited(doc)
    revoke = find(new, "002-revoke", "virtio-iommu", "revoke")
    new["results"].remove(revoke)
    cmp = compare(doc, new)
    assert cmp.regressed
    assert [str(e.key) for e in cmp.removed] == ["002-revoke/virtio-iommu/revoke"]
    assert "002-revoke/virtio-iommu/revoke: removed (was pass)" in render_text(cmp)

    cmp = compare(new, doc)  # the other way round: one added, passing
    assert not cmp.regressed and [e.verdict for e in cmp.added] == ["pass"]
    assert "added (1):" in render_text(cmp)

    failing = edited(doc)
    extra = copy.deepcopy(revoke) | {"variant": "new-one", "outcome": "FAIL"}
    failing["results"].append(extra)
    cmp = compare(doc, failing)
    assert cmp.regressed and cmp.regressions == ["002-revoke/virtio-iommu/new-one: new, FAIL"]


def test_policy_is_part_of_the_key(doc: dict[str, Any]) -> None:
    old, new = edited(doc), edited(doc)
    for d in (old, new):
        extra = copy.deepcopy(d["results"][0])
        d["results"][0]["policy"] = "map-unmap"
        extra["policy"] = "exclusive"
        d["results"].append(extra)
    new["results"][-1]["outcome"] = "FAIL"
    new["meta"] = {"seed": 2}  # ignored
    cmp = compare(old, new)
    (c,) = cmp.changed
    assert c.key == Key("000-arnd-table", "default", "table", "exclusive")
    assert str(c.key) == "000-arnd-table/default/table [policy exclusive]"
    assert c.as_json()["key"]["policy"] == "exclusive"


def test_json_form(doc: dict[str, Any]) -> None:
    new = edited(doc)
    find(new, "003-sgt-cache", "default", "uncached")["outcome"] = "FAIL"
    data = json.loads(json.dumps(compare(doc, new).as_json()))
    assert data["regressed"] is True
    assert data["regressions"] == ["003-sgt-cache/default/uncached: pass -> FAIL"]
    (c,) = data["changed"]
    assert c["key"] == {"scenario": "003-sgt-cache", "topology": "default", "variant": "uncached"}
    assert (c["old_verdict"], c["new_verdict"], c["regression"]) == ("pass", "FAIL", True)
    assert data["unchanged"] == 15


# ---------------------------------------------------------------------------------------------
# Loading and the command


def write(dir: Path, doc: Any) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "results.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return dir


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(main, ["report", *map(str, args)])


def test_compare_command_exit_codes(doc: dict[str, Any], tmp_path: Path) -> None:
    old = write(tmp_path / "old", doc)
    result = run("--compare", old, old / "results.json")  # a directory or the file itself
    assert result.exit_code == 0, result.output
    assert "verdict: no regression" in result.output

    new = edited(doc)
    find(new, "002-revoke", "default", "revoke-without-clean")["outcome"] = "FAIL"
    newdir = write(tmp_path / "new", new)
    result = run("--compare", old, newdir)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[3] == "REGRESSIONS (1):"
    assert "002-revoke/default/revoke-without-clean: detected as expected -> FAIL" in result.output

    result = run("--compare", old, newdir, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["regressed"] is True


def with_qemu(doc: dict[str, Any], key: str | None) -> dict[str, Any]:
    out = edited(doc)
    if key is not None:
        out["meta"] = {"qemu": {"version": "QEMU emulator version 10.0.6", "build_key": key}}
    return out


@pytest.mark.parametrize(
    ("old_key", "new_key", "refused"),
    [("a-1", "b-2", True), ("a-1", "a-1", False), (None, "b-2", False), ("a-1", None, False)],
)
def test_compare_refuses_runs_of_different_qemu_builds_unless_told(
    doc: dict[str, Any], tmp_path: Path, old_key: str | None, new_key: str | None, refused: bool
) -> None:
    old = write(tmp_path / "old", with_qemu(doc, old_key))
    new = write(tmp_path / "new", with_qemu(doc, new_key))
    result = run("--compare", old, new)
    if refused:
        assert result.exit_code == 2
        assert result.stderr == (
            f"dmalab: error: {old / 'results.json'} ran on QEMU build a-1, "
            f"{new / 'results.json'} on b-2: pass --any-qemu to compare runs of different "
            "QEMU builds\n"
        )
    else:  # the same build, or a file that does not say (older dmalab): compared
        assert result.exit_code == 0, result.output
    told = run("--compare", old, new, "--any-qemu")
    assert told.exit_code == 0 and "verdict: no regression" in told.output


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file or directory"),
        ("", "no such file"),
        ("{not json", "invalid JSON"),
        ('{"other": 1}', 'not a dmalab results file (no "results" list)'),
        ('{"results": [{"scenario": "x"}]}', "results[0] lacks topology, variant"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    doc: dict[str, Any], tmp_path: Path, content: str | None, problem: str
) -> None:
    good = write(tmp_path / "good", doc)
    bad = tmp_path / "bad"
    if content == "":
        bad.mkdir()  # a directory without results.json
        named = bad / "results.json"
    elif content is not None:
        write(bad, content)
        named = bad / "results.json"
    else:
        named = bad
    for args in (["--compare", good, bad], ["--compare", bad, good], [bad]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"dmalab: error: {named}: "), lines[0]
        assert problem in lines[0]
        assert "Traceback" not in result.output


def test_report_renders_html_into_the_directory(doc: dict[str, Any], tmp_path: Path) -> None:
    d = write(tmp_path / "run", doc)
    result = run(d)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(d / "report.html")
    assert (d / "report.html").read_text().startswith("<!DOCTYPE html>")
    result = run(d / "results.json")
    assert result.exit_code == 0 and result.stdout.strip() == str(d / "report.html")


def test_usage_errors(doc: dict[str, Any], tmp_path: Path) -> None:
    d = write(tmp_path / "run", doc)
    assert run().exit_code == 2
    assert run(d, "--json").exit_code == 2
    assert run(d, "--compare", d, d).exit_code == 2


def test_load_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(BadInput, match=r"results\.json: not a dmalab results file"):
        load(tmp_path)


def test_observed_cells_are_not_failures(doc: dict[str, Any]) -> None:
    """A matrix cell that enforces nothing may go from clean to detected without a regression;
    it only regresses when it fails (its run broke) or disappears."""
    old, new = edited(doc), edited(doc)
    for d in (old, new):
        r = find(d, "000-arnd-table", "default", "table")
        r["expectation"], r["policy"] = "observe", "exclusive"
    find(old, "000-arnd-table", "default", "table")["outcome"] = "pass"
    cmp = compare(old, new)
    (c,) = cmp.changed
    assert (c.old_verdict, c.new_verdict) == ("clean (observed)", "detected (observed)")
    assert not c.regression and not cmp.regressed
    find(new, "000-arnd-table", "default", "table")["outcome"] = "fail"
    assert compare(old, new).regressions == [
        "000-arnd-table/default/table [policy exclusive]: clean (observed) -> FAIL"
    ]


def test_report_that_cannot_be_written_is_one_line_and_exit_2(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    where = write(tmp_path / "full", doc)
    (where / f".report.html.{os.getpid()}.tmp").symlink_to("/dev/full")  # refuses: ENOSPC
    result = run(where)
    assert result.exit_code == 2
    assert result.stderr == (
        f"dmalab: error: {where / 'report.html'}: cannot write: No space left on device\n"
    )
    assert sorted(p.name for p in where.iterdir()) == ["results.json"]
