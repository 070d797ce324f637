"""The published JSON Schemas (docs/schemas/): committed as generated, and every shipped
topology, every example and test scenario file and a real results.json valid against them. The
checker and the schema agree on each field's type and range: a file the sweep of
tests/topology/test_check_sweep.py refuses for a single field's value is refused by the schema
too, and the schema takes every file the checker takes here."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from dmalab.cli import main
from dmalab.cli import spec as spec_cli
from dmalab.machine import topology_schema
from dmalab.machine.topology import shipped_topologies, topology_path
from dmalab.scenarios import results_schema, scenario_schema

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = [topology_path(n) for n in shipped_topologies()] + sorted(
    (ROOT / "tests" / "guest" / "topologies").glob("*.toml")
)
SCENARIO_FILES = sorted((ROOT / "docs" / "examples").glob("*.toml")) + sorted(
    (ROOT / "tests").rglob("data/*.toml")
)
RESULTS = sorted((ROOT / "tests").rglob("data/results.json"))


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(schema: dict[str, Any], doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in _validator(schema).iter_errors(doc)]


def test_the_committed_schemas_are_the_generated_ones() -> None:
    result = CliRunner().invoke(main, ["spec", "schema", "--check"])
    assert result.exit_code == 0, result.output
    for name, make in (
        ("topology", topology_schema.schema),
        ("scenario-file", scenario_schema.schema),
        ("results", results_schema.schema),
    ):
        assert json.loads(spec_cli.schema_path(name).read_text()) == make()


def test_a_stale_schema_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_cli, "schema_path", lambda name: tmp_path / f"{name}.json")
    runner = CliRunner()
    assert runner.invoke(main, ["spec", "schema"]).exit_code == 0
    assert runner.invoke(main, ["spec", "schema", "--check"]).exit_code == 0
    (tmp_path / "results.json").write_text("{}\n")
    result = runner.invoke(main, ["spec", "schema", "--check"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "run `dmalab spec schema`" in result.stderr


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_topology_files_match_the_schema(path: Path) -> None:
    assert _errors(topology_schema.schema(), tomllib.loads(path.read_text())) == []


def test_the_scenario_files_are_there() -> None:
    assert SCENARIO_FILES and RESULTS


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_files_match_the_schema(path: Path) -> None:
    assert _errors(scenario_schema.schema(), tomllib.loads(path.read_text())) == []


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_results_match_the_schema(path: Path) -> None:
    assert _errors(results_schema.schema(), json.loads(path.read_text())) == []


def test_the_schemas_refuse_what_the_checkers_refuse() -> None:
    topology = topology_schema.schema()
    for bad in (
        {"machine": {"memory": 127}},
        {"machine": {"memory": "512M"}},
        {"machine": {"cpus": 2}},
        {"device": [{"id": "9x"}]},
        {"device": [{"id": "a,b"}]},
        {"device": [{"id": "a", "xlog-segs": 65537}]},
        {"device": [{"id": "a", "coherent": 1}]},
        {"kernel": {"args": ['a"b']}},
    ):
        assert _errors(topology, bad), bad
    scenario = scenario_schema.schema()
    good = tomllib.loads(SCENARIO_FILES[0].read_text())
    for path, value in (
        (("name",), "-x"),
        (("step", 0, "action"), "jump"),
        (("step", 0, "n"), 0),
        (("step", 0, "read"), "page zero"),
        (("step", 0, "direction"), "TO_DEVICE"),  # not a field of a cpu step
        (("variant", 0, "expect"), "fine"),
    ):
        doc = json.loads(json.dumps(good))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert _errors(scenario, doc), path
    assert _errors(results_schema.schema(), {"results": [{"scenario": "x"}]})
