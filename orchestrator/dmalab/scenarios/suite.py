"""The built-in suite: what `dmalab run` runs with no arguments, in this order."""

from __future__ import annotations

from dmalab.scenarios.api import Scenario
from dmalab.scenarios.seeds import SEEDS

SUITE: tuple[Scenario, ...] = tuple(SEEDS)
