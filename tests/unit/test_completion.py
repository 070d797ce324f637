"""Shell completion through click's `_DMALAB_COMPLETE` (docs/cli.md): the scripts it prints, and
the values it offers for commands, topologies and policies."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dmalab.cli import main
from dmalab.machine.topology import shipped_topologies


def complete(line: str) -> list[str]:
    """What bash would be offered after `line` (the last word is being completed)."""
    words = line.split(" ")
    env = {"_DMALAB_COMPLETE": "bash_complete", "COMP_WORDS": line,
           "COMP_CWORD": str(len(words) - 1)}  # fmt: skip
    result = CliRunner().invoke(main, [], env=env, prog_name="dmalab")
    assert result.exit_code == 0, result.output
    return [row.split(",", 1)[1] for row in result.stdout.splitlines() if row.startswith("plain,")]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    result = CliRunner().invoke(
        main, [], env={"_DMALAB_COMPLETE": f"{shell}_source"}, prog_name="dmalab"
    )
    assert result.exit_code == 0 and "_DMALAB_COMPLETE" in result.stdout


def test_commands_options_and_values_complete() -> None:
    assert complete("dmalab ru") == ["run"]
    assert {"--shard", "--list", "--kernel", "--json", "--output"} <= set(complete("dmalab run --"))
    assert complete("dmalab run -t ") == shipped_topologies()
    assert complete("dmalab run -t vir") == ["virtio-iommu"]
    assert complete("dmalab run --policy e") == ["exclusive"]
    assert complete("dmalab up d") == ["default"]
    assert complete("dmalab shell c") == ["coherent"]
    assert complete("dmalab topology check ") == shipped_topologies()
