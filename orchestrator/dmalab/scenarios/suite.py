"""The built-in suite: what `dmalab run` runs with no arguments, each seed scenario once, in the
order of ARCHITECTURE.md §5. Scenario files (docs/scenario-files.md) run with `--scenario-file`;
docs/examples/000-arnd-table.toml is seed 000 written as one."""

from __future__ import annotations

from dmalab.scenarios.declarations import Scenario
from dmalab.scenarios.seeds import SEEDS

SUITE: tuple[Scenario, ...] = SEEDS
