"""`-k EXPR` and `--shard I/N` (dmalab.selection), and the shard split of every shipped run list:
the run list of `dmalab run` (its shipped topologies, with and without --matrix) and the seed
list of `dmalab fuzz`. Shards must be disjoint, cover the list exactly, in order, whatever N."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
from click.testing import CliRunner

from dmalab import fuzz
from dmalab.cli import main
from dmalab.errors import BadInput
from dmalab.machine.topology import shipped_topologies
from dmalab.scenarios.api import POLICIES
from dmalab.scenarios.runner import MATRIX_TOPOLOGIES, SHIPPED
from dmalab.scenarios.suite import SUITE, plan
from dmalab.selection import Shard, keyword_matcher, select


def test_shard_parse() -> None:
    assert Shard.parse("2/8") == Shard(2, 8) and str(Shard.parse(" 1 / 1 ")) == "1/1"
    for bad in ("0/4", "5/4", "1/0", "1", "a/b", "-1/4", "1/4/2", ""):
        with pytest.raises(BadInput, match=r"^--shard: "):
            Shard.parse(bad)


def test_keyword_expressions_read_as_pytest_reads_them() -> None:
    names = ("default", "base", "002-revoke", "002", "revoke-without-clean")
    cases = {
        "revoke": True, "REVOKE": True, "virtio": False, "not virtio": True,
        "revoke and not virtio": True, "virtio or 002": True, "not (virtio or 002)": False,
        "not not base": True, "default and base and without": True, "exclusive": False,
        "002-revoke": True, "": True, "(virtio or default) and not clean": False,
    }  # fmt: skip
    for expr, want in cases.items():
        assert keyword_matcher(expr)(names) is want, expr
    for bad, why in (("(a", "end"), ("a and", "end"), ("a b", "'b'"), ("and a", "'and'"),
                     ("a)", "')'"), ("a ! b", "'!'"), ("not", "end")):  # fmt: skip
        with pytest.raises(BadInput, match=rf"^-k: .*{re.escape(why)}"):
            keyword_matcher(bad)


def assert_split(items: Sequence[object], counts: Sequence[int]) -> None:
    """For every N in `counts`: shards 1..N are disjoint, each a contiguous run of `items` in
    order, sizes within one of each other, and together exactly `items`."""
    ids = [id(i) for i in items]
    for n in counts:
        parts = [Shard(i, n).take(items) for i in range(1, n + 1)]
        joined = [id(x) for part in parts for x in part]
        assert joined == ids, n  # covers, disjoint, in order
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, (n, sizes)


def _counts(length: int) -> list[int]:
    return [*range(1, 10), 16, length - 1, length, length + 1, 3 * length]


NO_KERNEL: list[str | None] = [None]
TWO_KERNELS: list[str | None] = ["debian:6.12", "debian:6.1"]
RUN_LISTS = {
    "dmalab run": (SHIPPED, ["base"], NO_KERNEL),
    "dmalab run --matrix": (MATRIX_TOPOLOGIES, list(POLICIES), NO_KERNEL),
    **{f"dmalab run -t {t}": ((t,), ["base"], NO_KERNEL) for t in shipped_topologies()},
    **{
        f"dmalab run --matrix -t {t}": ((t,), list(POLICIES), NO_KERNEL)
        for t in shipped_topologies()
    },
    # the kernel axis: --kernel debian:6.12 --kernel debian:6.1
    "dmalab run --matrix --arch aarch64 --kernel x2": (
        [t for t in SHIPPED if t.startswith("arm64")],
        list(POLICIES),
        TWO_KERNELS,
    ),
    "dmalab run --matrix -t arm64-noncoherent --kernel x2": (
        ("arm64-noncoherent",),
        list(POLICIES),
        TWO_KERNELS,
    ),
}


@pytest.mark.parametrize("name", RUN_LISTS)
def test_shards_of_every_shipped_run_list_are_disjoint_and_cover_it(name: str) -> None:
    topologies, policies, kernels = RUN_LISTS[name]
    items = plan(topologies, SUITE, policies, kernels)
    variants = sum(len(s.variants) for s in SUITE)
    assert len(items) == len(topologies) * len(kernels) * len(policies) * variants
    assert len(
        {(i.topology, i.kernel, i.policy, i.scenario.name, i.variant.name) for i in items}
    ) == len(items)
    assert_split(items, _counts(len(items)))
    # With -k first, then the shard: still a split of what -k chose.
    chosen = select(items, lambda i: i.names, keyword="not exclusive")
    assert 0 < len(chosen) < len(items)
    assert_split(chosen, _counts(len(chosen)))


def test_shards_of_fuzz_seeds_are_disjoint_and_cover_them() -> None:
    configs = list(fuzz.CONFIGS.values())
    items = fuzz.plan(range(100, 164), 10_001, configs)
    assert len(items) == 64 * len(configs)
    # Every seed's operations are shared by the configurations as an unsharded run shares them.
    assert sum(i.ops for i in items if i.seed == 100) == 10_001
    assert_split(items, _counts(len(items)))
    assert fuzz.plan([7], 5, configs[:2]) == [
        fuzz.FuzzItem(7, configs[0], 3), fuzz.FuzzItem(7, configs[1], 2),
    ]  # fmt: skip


def _list(*args: str) -> list[list[str]]:
    """`dmalab run --list`, each line as its columns."""
    result = CliRunner().invoke(main, ["run", "--list", *args])
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.output.splitlines()]


def test_run_list_prints_one_line_per_item() -> None:
    lines = _list()
    assert len(lines) == len(SHIPPED) * sum(len(s.variants) for s in SUITE)
    assert lines[0] == ["default", SUITE[0].name, SUITE[0].variants[0].name, "base"]
    # The same list whatever -j and --seed: neither changes what runs or where a shard cuts.
    assert _list("-j", "3", "--seed", "99") == lines
    for n in (2, 3, 7):
        shards = [_list("--shard", f"{i}/{n}", "-j", str(i)) for i in range(1, n + 1)]
        assert [line for s in shards for line in s] == lines
    matrix = _list("--matrix", "-k", "revoke and not virtio", "--shard", "1/1")
    assert matrix and all("revoke" in x[1] and x[0] != "virtio-iommu" for x in matrix)
    assert {x[3] for x in matrix} == set(POLICIES)


def test_run_list_json_and_output_file(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["run", "--list", "--json", "-t", "default", "-s", "002"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0] == {"topology": "default", "scenario": "002-revoke",
                       "variant": rows[0]["variant"], "policy": "base"}  # fmt: skip
    assert len(rows) == len(next(s for s in SUITE if s.seed == "002").variants)


def test_run_selection_errors_are_one_line() -> None:
    for args, message in (
        (["-k", "nothing-is-called-this"], "-k: 'nothing-is-called-this' matches none of the"),
        (["-k", "(revoke"], "-k: '(revoke': unexpected end of the expression"),
        (["--shard", "3/2"], "--shard: 3/2: I must be between 1 and N"),
        (["--modules", "/"], "--modules: give --kernel too"),
    ):
        result = CliRunner().invoke(main, ["run", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"dmalab: error: {message}")
        assert result.output.count("\n") == 1
