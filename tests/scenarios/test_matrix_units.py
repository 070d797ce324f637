"""Matrix cells, policies and the run's seed, without a guest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dmalab.scenarios.api import Run
from dmalab.scenarios.codec import DEFAULT_SEED, fill_bytes, seed_salt
from dmalab.scenarios.declarations import Cell, Scenario, Variant, cell_expectation
from dmalab.scenarios.report import render_matrix, write_json, write_junit
from dmalab.scenarios.results import Result, as_json, outcome
from dmalab.scenarios.seeds import SEED_000, SEED_003, SEEDS
from dmalab.scenarios.suite import plan
from dmalab.spec import agent as spec

FAULTY = Variant(
    "bad", "detected", (4,),
    cells=(Cell("exclusive", "pass", "EXCLUSIVE fixes it"),
           Cell("base", "pass", "no cache", on="coherent"),
           Cell("cache-sgt", "n/a", "conflicts")),
)  # fmt: skip


def test_cell_expectations() -> None:
    good = Variant("good", "pass", cells=(Cell("cache-sgt", "n/a", "not with CACHE_SGT"),))
    for coherent in (False, True):
        assert cell_expectation(good, "base", coherent) == ("pass", (), "")
        assert cell_expectation(good, "exclusive", coherent) == ("pass", (), "")
        assert cell_expectation(good, "cache-sgt", coherent) == ("n/a", (), "not with CACHE_SGT")
    assert cell_expectation(FAULTY, "base", False) == ("detected", (4,), "")
    assert cell_expectation(FAULTY, "base", True) == ("pass", (), "no cache")
    assert cell_expectation(FAULTY, "exclusive", True) == ("pass", (), "EXCLUSIVE fixes it")
    assert cell_expectation(FAULTY, "cache-sgt", False)[0] == "n/a"
    plain = Variant("plain-bad", "detected", (4,))
    assert cell_expectation(plain, "exclusive", False) == ("observe", (), "")
    assert cell_expectation(plain, "base", True) == ("observe", (), "")


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="correct variant"):
        Variant("good", "pass", cells=(Cell("exclusive", "detected", "x", (3,)),))
    with pytest.raises(ValueError, match="unknown policy"):
        Cell("strict", "pass", "x")
    with pytest.raises(ValueError, match="say why"):
        Cell("base", "pass", "")
    with pytest.raises(ValueError):
        Cell("base", "detected", "no steps")
    # The seeds' own declarations were checked when they were built; each says why.
    assert all(c.why for sc in SEEDS for v in sc.variants for c in v.cells)


def test_observed_outcomes() -> None:
    from dmalab.scenarios.results import Finding

    assert outcome("observe", (), []) == "pass"
    assert outcome("observe", (), [Finding(7, "STALE_READ", "x")]) == "detected"


def _run(policy: str = "base", seed: int = DEFAULT_SEED) -> Run:
    return Run(SimpleNamespace(agent=None, qmp=None), {}, "t", SEED_000.variants[0], policy=policy,
               seed=seed)  # fmt: skip


def test_the_default_seed_keeps_the_constants_and_others_change_them() -> None:
    assert seed_salt(DEFAULT_SEED) == 0
    run = _run()
    assert run.pattern_seed(11) == 11 and run.fill_word(0xA7A7) == 0xA7A7
    assert run.pattern(4, 64) == spec.pattern(4, 64)
    assert (
        run.fill(0xA7A7, 12)
        == fill_bytes(0xA7A7, 12)
        == bytes.fromhex("a7a7" + "00" * 6 + "a7a70000")
    )
    other = _run(seed=2)
    tags = [1, 2, 4, 11, 100, 101, 102, 103]
    seeds = [other.pattern_seed(t) for t in tags]
    assert len(set(seeds)) == len(tags) and not set(seeds) & set(tags)
    assert other.pattern(4, 64) != run.pattern(4, 64)
    assert [_run(seed=2).pattern_seed(t) for t in tags] == seeds  # the same seed, the same bytes
    assert all(0 <= s < 1 << 64 for s in seeds)


def test_policies_add_flags_and_exclusive_runs_each_actor_on_its_own() -> None:
    base, sgt, excl = _run(), _run("cache-sgt"), _run("exclusive")
    assert base.buffer_flags(["DYNAMIC"]) == ["DYNAMIC"]
    assert sgt.buffer_flags([]) == ["CACHE_SGT"]
    assert sgt.buffer_flags(["CACHE_SGT"]) == ["CACHE_SGT"]
    assert excl.buffer_flags(["SHARE_DOMAIN"]) == ["SHARE_DOMAIN", "EXCLUSIVE"]
    assert not base.concurrent and not sgt.concurrent
    excl.concurrent = False  # a scenario's own choice does not undo the policy's
    assert excl.concurrent
    base.concurrent = True
    assert base.concurrent


def test_plan_is_topology_policy_scenario_variant() -> None:
    items = plan(["a", "b"], [SEED_000, SEED_003], ["base", "exclusive"])
    assert len(items) == 2 * 2 * 8 and [i.index for i in items] == list(range(32))
    assert [(i.topology, i.policy, i.scenario.seed, i.variant.name) for i in items[7:10]] == [
        ("a", "base", "003", "skip-clean-at-unmap"),
        ("a", "exclusive", "000", "table"),
        ("a", "exclusive", "000", "shared-read"),
    ]


async def _nothing(run: Run) -> None:
    pass


X = Scenario("x", "900", "a stand-in", _nothing, (
    Variant("bad", "detected", (4, 11), cells=(Cell("exclusive", "pass", "EXCLUSIVE fixes it"),)),
    Variant("good", "pass", cells=(Cell("exclusive", "n/a", "not with EXCLUSIVE"),)),
))  # fmt: skip


def _result(topo: str, policy: str, variant: str, expect: str, outcome: str,
            detected: list[int], expected: list[int] | None = None) -> Result:  # fmt: skip
    return Result("x", "900", topo, variant, expect, outcome, expected or [], detected, [], {},
                  [], note="not with EXCLUSIVE" if outcome == "unavailable" else "",
                  policy=policy, timing={"seconds": 0.1})  # fmt: skip


def test_matrix_rendering_and_files(tmp_path: Path) -> None:
    results = [
        _result("default", "base", "bad", "detected", "detected", [4, 11, 12], [4, 11]),
        _result("default", "exclusive", "bad", "pass", "pass", []),
        _result("default", "cache-sgt", "bad", "observe", "pass", []),
        _result("coherent", "base", "bad", "observe", "detected", [4, 7, 8, 11, 12]),
        _result("coherent", "exclusive", "bad", "pass", "pass", []),
        _result("default", "base", "good", "pass", "FAIL", [3]),
        _result("default", "exclusive", "good", "pass", "unavailable", []),
    ]
    text = render_matrix(results, [X], {"default": False, "coherent": True})
    lines = text.splitlines()
    assert lines[0].split() == ["default", "coherent"]
    assert lines[1].split() == ["scenario/variant", "expect", "base", "exclusive", "cache-sgt",
                                "base", "exclusive"]  # fmt: skip
    assert set(lines[2]) == {"-"}
    assert lines[3].split() == ["x/bad", "det", "4,11", "det", "4,11", "pass", "(clean)", "(det",
                                "4,7,8,...)", "pass"]  # fmt: skip
    assert lines[4].split() == ["x/good", "pass", "FAIL", "n/a"]
    assert "  x/bad [exclusive]: pass: EXCLUSIVE fixes it\n" in text
    assert "  x/good [exclusive] on default: n/a: not with EXCLUSIVE\n" in text
    assert "failures:\n  x/default/good [base] (expected pass at steps -):" in text

    write_json(results, tmp_path / "r.json", meta={"seed": 1}, timing={"wall_seconds": 1.0})
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(doc) == ["meta", "results", "timing"]
    assert doc["results"][0]["policy"] == "base"
    plain = _result("default", "base", "table", "pass", "pass", [])
    plain.policy = None
    assert "policy" not in as_json([plain])[0]
    write_junit(results, tmp_path / "j.xml")
    junit = (tmp_path / "j.xml").read_text()
    assert 'name="dmalab.default.exclusive"' in junit and 'name="dmalab.coherent.base"' in junit
