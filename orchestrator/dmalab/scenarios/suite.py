"""The built-in suite, and the run list a run expands to.

`SUITE` is what `dmalab run` runs with no arguments: each seed scenario once, in the order of
ARCHITECTURE.md §5. Scenario files (docs/scenario-files.md) run with `--scenario-file`;
docs/examples/000-arnd-table.toml is seed 000 written as one. `plan` expands topologies x
kernels x policies x scenarios x variants into the run's items in the canonical order; `dmalab
run -k/--shard/--list` choose from that list (dmalab.selection). Kernels are an axis only when
a run names them (`--kernel`, repeatable); otherwise each topology boots its own image's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dmalab.scenarios.declarations import Scenario, Variant
from dmalab.scenarios.platform import PLATFORM
from dmalab.scenarios.seeds import SEEDS

SUITE: tuple[Scenario, ...] = SEEDS + PLATFORM


@dataclass(frozen=True)
class Item:
    """One variant to run: where it goes in the results, and the cell it belongs to."""

    index: int
    topology: str
    policy: str
    scenario: Scenario
    variant: Variant
    #: The kernel's label (`debian:6.1`, ...) when the run has a kernel axis, else None.
    kernel: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """What `-k` matches against."""
        return (self.topology, *((self.kernel,) if self.kernel else ()), self.policy,
                self.scenario.name, self.scenario.seed, self.variant.name)  # fmt: skip

    @property
    def machine(self) -> tuple[str, str | None]:
        """The machine the item runs on: its topology booting its kernel."""
        return self.topology, self.kernel


def plan(
    topologies: Sequence[str],
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
    kernels: Sequence[str | None] = (None,),
) -> list[Item]:
    """Every variant to run, in the canonical order: topology, kernel, policy, scenario,
    variant (a topology's items on one kernel are together: a shard boots few machines)."""
    items: list[Item] = []
    for topo in topologies:
        for kernel in kernels:
            for policy in policies:
                for sc in scenarios:
                    for v in sc.variants:
                        items.append(Item(len(items), topo, policy, sc, v, kernel))
    return items
