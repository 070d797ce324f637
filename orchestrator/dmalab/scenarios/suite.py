"""The built-in suite: what `dmalab run` runs with no arguments, in this order: the Python seed
scenarios, then the scenario files shipped in scenarios/files (sorted by file name)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dmalab.scenarios.declarations import Scenario
from dmalab.scenarios.declarative import load_file
from dmalab.scenarios.seeds import SEEDS


def shipped_files() -> list[Path]:
    """The scenario files that come with dmalab."""
    folder = resources.files("dmalab.scenarios") / "files"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


SUITE: tuple[Scenario, ...] = (*SEEDS, *(load_file(p) for p in shipped_files()))
