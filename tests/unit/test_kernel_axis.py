"""The kernel as an axis of `dmalab run`: `--kernel debian:SERIES` (repeatable) parsed and
labelled, the run list expanded topology x kernel x policy x scenario x variant, `--list`
showing the kernel, `-k` matching it, `--shard` still splitting the expanded list disjointly,
and the reports naming the kernel (no machine is booted here)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmalab.artifacts import debian_kernel
from dmalab.artifacts.kernel_choice import KernelChoice, kernel_axis, parse_kernel
from dmalab.cli import main
from dmalab.errors import BadInput
from dmalab.scenarios.api import POLICIES
from dmalab.scenarios.compare_results import result_key
from dmalab.scenarios.report import render_junit, render_matrix, render_table
from dmalab.scenarios.results import Result, as_json
from dmalab.scenarios.suite import SUITE, plan
from dmalab.selection import Shard, select

KERNELS = ["debian:6.12", "debian:6.1"]
VARIANTS = sum(len(s.variants) for s in SUITE)


def test_debian_kernel_names_resolve_to_a_series() -> None:
    assert parse_kernel("debian:6.1") == KernelChoice("debian:6.1", series="6.1")
    assert parse_kernel("debian") == KernelChoice("debian:6.12", series="6.12")
    assert parse_kernel("debian:6.12").label == "debian:6.12"
    for bad, why in (
        ("debian:5.10", "series '5.10' is not one of 6.1, 6.12"),
        ("debian:", "series '' is not one of"),
        ("/no/such/kernel", "no such file"),
    ):
        with pytest.raises(BadInput, match=why):
            parse_kernel(bad)


def test_a_kernel_file_is_labelled_by_its_release_not_its_path(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    tree = tmp_path / "lib" / "modules" / "6.13.0-rc1"
    tree.mkdir(parents=True)
    [only] = kernel_axis([parse_kernel(str(kernel))], tree)
    assert (only.label, only.file, only.modules) == ("6.13.0-rc1", kernel, tree)
    assert kernel_axis([parse_kernel(str(kernel))], None)[0].label == "bzImage"
    # the same kernel twice runs once; two kernels of one label cannot be told apart
    assert [k.label for k in kernel_axis([parse_kernel(k) for k in [*KERNELS, "debian"]], None)]\
        == KERNELS  # fmt: skip
    with pytest.raises(BadInput, match="--modules: goes with one kernel file, and 0"):
        kernel_axis([parse_kernel("debian:6.1")], tree)


def test_series_abi_patterns_match_their_own_packages_only() -> None:
    import re

    six_one, six_twelve = (debian_kernel.abi_pattern(s) for s in ("6.1", "6.12"))
    assert re.fullmatch(six_one, "6.1.0-57") and not re.fullmatch(six_one, "6.12.118+deb12")
    assert re.fullmatch(six_twelve, "6.12.118+deb12") and not re.fullmatch(six_twelve, "6.1.0-57")


def test_plan_expands_topology_then_kernel_then_policy() -> None:
    items = plan(["arm64-noncoherent", "arm64-smmuv3"], SUITE, list(POLICIES), KERNELS)
    assert len(items) == 2 * len(KERNELS) * len(POLICIES) * VARIANTS
    machines = list(dict.fromkeys(i.machine for i in items))
    assert machines == [(t, k) for t in ("arm64-noncoherent", "arm64-smmuv3") for k in KERNELS]
    # each machine's items are contiguous: a shard boots as few machines as it can
    runs = [i.machine for n, i in enumerate(items) if n == 0 or items[n - 1].machine != i.machine]
    assert runs == machines
    assert len({(i.machine, i.policy, i.scenario.name, i.variant.name) for i in items}) == len(
        items
    )
    # without kernels, nothing changes: no kernel on any item
    assert {i.kernel for i in plan(["default"], SUITE, ["base"])} == {None}


def test_keyword_matches_the_kernel() -> None:
    items = plan(["arm64-noncoherent"], SUITE, list(POLICIES), KERNELS)
    chosen = select(items, lambda i: i.names, keyword="debian:6.1 and not 6.12")
    assert {i.kernel for i in chosen} == {"debian:6.1"} and len(chosen) == len(items) // 2


def _list(*args: str) -> list[list[str]]:
    result = CliRunner().invoke(main, ["run", "--list", *args])
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.output.splitlines()]


def test_run_list_shows_the_kernel_of_every_item() -> None:
    args = ["-t", "arm64-noncoherent", "-s", "000", "-s", "003", "--matrix"]
    lines = _list(*args, "--kernel", "debian:6.12", "--kernel", "debian:6.1")
    variants = sum(len(s.variants) for s in SUITE if s.seed in ("000", "003"))
    assert len(lines) == 2 * len(POLICIES) * variants
    assert lines[0] == ["arm64-noncoherent", SUITE[0].name, SUITE[0].variants[0].name, "base",
                        "debian:6.12"]  # fmt: skip
    assert [x[4] for x in lines] == ["debian:6.12"] * (len(lines) // 2) + ["debian:6.1"] * (
        len(lines) // 2
    )
    # shards of the expanded list, concatenated, are the list
    shards = [_list(*args, "--kernel", "debian:6.12", "--kernel", "debian:6.1", "--shard",
                    f"{i}/5") for i in range(1, 6)]  # fmt: skip
    assert [line for s in shards for line in s] == lines
    # the JSON list names the kernel too; without --kernel there is no kernel column
    result = CliRunner().invoke(main, ["run", "--list", "--json", *args, "--kernel", "debian:6.1"])
    rows = json.loads(result.output)
    assert rows[0] == {"topology": "arm64-noncoherent", "scenario": SUITE[0].name,
                       "variant": SUITE[0].variants[0].name, "policy": "base",
                       "kernel": "debian:6.1"}  # fmt: skip
    assert all(len(x) == 4 for x in _list(*args))


def test_kernel_errors_are_one_usage_line() -> None:
    for args, message in (
        (["--kernel", "debian:4.19"], "run: --kernel: 'debian:4.19': Debian kernel series"),
        (["--kernel", "debian:6.1", "--modules", "/"], "--modules: goes with one kernel"),
    ):
        result = CliRunner().invoke(main, ["run", "--list", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"dmalab: error: {message}"), result.output
        assert result.output.count("\n") == 1


def _result(kernel: str, outcome: str) -> Result:
    return Result("003-sgt-cache", "003", "arm64-noncoherent", "cached", "pass", outcome, [],
                  [4] if outcome != "pass" else [], [], {}, [], policy="base", kernel=kernel,
                  arch="aarch64")  # fmt: skip


def test_reports_show_a_column_per_kernel() -> None:
    results = [_result("debian:6.12", "pass"), _result("debian:6.1", "FAIL")]
    doc = as_json(results)
    assert [r["kernel"] for r in doc] == ["debian:6.12", "debian:6.1"]
    assert "kernel" not in as_json([Result("a", "0", "t", "v", "pass", "pass", [], [], [], {},
                                           [])])[0]  # fmt: skip
    assert result_key(doc[0]) != result_key(doc[1])
    assert str(result_key(doc[1])).endswith("[kernel debian:6.1]")
    matrix = render_matrix(results, SUITE, {"arm64-noncoherent": False}).splitlines()
    assert matrix[1].split() == ["debian:6.12", "debian:6.1"]
    assert matrix[4].split()[-2:] == ["pass", "FAIL"]
    assert render_table(results).splitlines()[0].split()[:3] == ["scenario", "topology", "kernel"]
    root = ET.fromstring(render_junit(results))
    kernels = [p.get("value") for p in root.iter("property") if p.get("name") == "kernel"]
    assert kernels == ["debian:6.12", "debian:6.1"]
    assert [s.get("name") for s in root.iter("testsuite")] == [
        "dmalab.arm64-noncoherent@debian:6.12.base", "dmalab.arm64-noncoherent@debian:6.1.base"
    ]  # fmt: skip


def test_html_report_has_a_column_per_kernel() -> None:
    from dmalab.scenarios.html import render_html

    page = render_html({"results": as_json([_result("debian:6.12", "pass"),
                                            _result("debian:6.1", "FAIL")])})  # fmt: skip
    assert "arm64-noncoherent debian:6.12" in page and "arm64-noncoherent debian:6.1" in page
    assert "<th>kernel</th>" in page


def test_halves_of_a_two_kernel_run_are_one_kernel_each() -> None:
    items = plan(["arm64-noncoherent"], SUITE, ["base"], KERNELS)
    first, second = Shard(1, 2).take(items), Shard(2, 2).take(items)
    assert {i.kernel for i in first} == {"debian:6.12"}
    assert {i.kernel for i in second} == {"debian:6.1"}
