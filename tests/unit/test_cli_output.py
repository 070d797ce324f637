"""`--json` and `--output FILE` mean the same in every command that has them (docs/cli.md):
JSON instead of the text on stdout, and either one into FILE instead of stdout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dmalab.cli import main


def commands(
    group: click.Group = main, prefix: str = "dmalab"
) -> Iterator[tuple[str, click.Command]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd


def test_every_json_option_comes_with_output() -> None:
    with_json = []
    for name, cmd in commands():
        options = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
        if "as_json" in options:
            with_json.append(name)
            assert options["as_json"].opts == ["--json"] and options["as_json"].is_flag, name
            assert options["output"].opts == ["--output"], name
        else:
            assert not any("--json" in p.opts for p in options.values()), name
    assert set(with_json) >= {
        "dmalab run", "dmalab fuzz", "dmalab doctor", "dmalab report", "dmalab up",
        "dmalab topology list", "dmalab bench device", "dmalab bench machine",
        "dmalab bench image", "dmalab bench suite",
    }  # fmt: skip


@pytest.mark.parametrize(
    "args", [["topology", "list"], ["run", "--list", "-t", "default"]], ids=" ".join
)
def test_json_on_stdout_or_in_the_output_file(args: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    text = runner.invoke(main, args)
    as_json = runner.invoke(main, [*args, "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    data = json.loads(as_json.stdout)
    assert data and text.stdout != as_json.stdout
    for flags, want in (([], text.stdout), (["--json"], as_json.stdout)):
        out = tmp_path / "out"
        result = runner.invoke(main, [*args, *flags, "--output", str(out)])
        assert result.exit_code == 0 and result.stdout == ""
        assert out.read_text() == want


def test_an_output_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "out.json"  # its directory cannot be made: a file is there
    result = CliRunner().invoke(main, ["topology", "list", "--json", "--output", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("dmalab: error: ")
    assert f"--output: {bad.parent}: cannot write there" in result.output
