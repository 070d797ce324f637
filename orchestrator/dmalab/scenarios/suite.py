"""The built-in suite, and the run list a run expands to.

`SUITE` is what `dmalab run` runs with no arguments, in this order: the Python seed scenarios,
then the scenario files shipped in scenarios/files (sorted by file name). `plan` expands
topologies x policies x scenarios x variants into the run's items in the canonical order;
`dmalab run -k/--shard/--list` choose from that list (dmalab.selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dmalab.scenarios.api import Scenario, Variant
from dmalab.scenarios.declarative import load_file
from dmalab.scenarios.seeds import SEEDS


def shipped_files() -> list[Path]:
    """The scenario files that come with dmalab."""
    folder = resources.files("dmalab.scenarios") / "files"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


SUITE: tuple[Scenario, ...] = (*SEEDS, *(load_file(p) for p in shipped_files()))


@dataclass(frozen=True)
class Item:
    """One variant to run: where it goes in the results, and the cell it belongs to."""

    index: int
    topology: str
    policy: str
    scenario: Scenario
    variant: Variant

    @property
    def names(self) -> tuple[str, ...]:
        """What `-k` matches against."""
        return (self.topology, self.policy, self.scenario.name, self.scenario.seed,
                self.variant.name)  # fmt: skip


def plan(
    topologies: Sequence[str], scenarios: Sequence[Scenario], policies: Sequence[str]
) -> list[Item]:
    """Every variant to run, in the canonical order: topology, policy, scenario, variant."""
    items: list[Item] = []
    for topo in topologies:
        for policy in policies:
            for sc in scenarios:
                for v in sc.variants:
                    items.append(Item(len(items), topo, policy, sc, v))
    return items
