"""The CI-sized fuzz run: >= 100,000 hostile operations across every configuration, clean, and
deterministic for a fixed seed; and `dmalab fuzz --shard`, whose parts are the whole run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dmalab import fuzz
from dmalab.artifacts.qemu import QemuBuild
from dmalab.cli import main

SEED = 20240611
CI_OPS = 100_000


async def test_fuzz_ci_run_is_clean(qemu_build: QemuBuild, artifacts: Path) -> None:
    started = time.monotonic()
    results = await fuzz.fuzz(qemu_build, seed=SEED, ops=CI_OPS, artifacts_dir=artifacts)
    wall = time.monotonic() - started
    assert [r.config for r in results] == list(fuzz.CONFIGS)
    assert sum(r.ops for r in results) == CI_OPS
    for r in results:
        # every class of outcome was exercised, not just the happy path
        assert r.statuses.get("OK") and r.statuses.get("BAD_OPCODE") and r.statuses.get("BAD_FLAGS")
        assert r.statuses.get("BAD_LENGTH") and r.statuses.get("BAD_ADDRESS")
        assert r.statuses.get("IOMMU_FAULT" if fuzz.CONFIGS[r.config].iommu else "BUS_ERROR")
        assert r.ring_errors.get("BAD_TAIL") and r.ring_errors.get("NOT_READY")
    assert wall < 100, f"the CI fuzz run took {wall:.1f} s"


async def test_fuzz_same_seed_same_run(qemu_build: QemuBuild, artifacts: Path) -> None:
    configs = [fuzz.CONFIGS["cached-iommu"], fuzz.CONFIGS["cached"], fuzz.CONFIGS["cached-smmuv3"]]
    first = await fuzz.fuzz(qemu_build, seed=7, ops=6000, configs=configs, artifacts_dir=artifacts)
    second = await fuzz.fuzz(qemu_build, seed=7, ops=6000, configs=configs, artifacts_dir=artifacts)
    for a, b in zip(first, second, strict=True):
        assert a.digest == b.digest  # the same operation sequence
        assert a.counters == b.counters  # and the same device outcome
        assert a.statuses == b.statuses and a.ring_errors == b.ring_errors
    other = await fuzz.fuzz(
        qemu_build, seed=8, ops=6000, configs=configs[:1], artifacts_dir=artifacts
    )
    assert other[0].digest != first[0].digest


def _fuzz_cli(*args: str) -> list[dict[str, Any]]:
    """`dmalab fuzz ARGS --json`'s results, without what the wall clock decides."""
    result = CliRunner().invoke(main, ["fuzz", *args, "--json"])
    assert result.exit_code == 0, result.output
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "ops_per_second")}
        for r in json.loads(result.stdout)["results"]
    ]


def test_fuzz_shards_together_are_the_whole_run(qemu_build: object) -> None:
    run = ["--seed", "5", "--seeds", "3", "--ops", "600"]
    whole = _fuzz_cli(*run)
    assert [(r["seed"], r["config"]) for r in whole] == [
        (seed, config) for seed in (5, 6, 7) for config in fuzz.CONFIGS
    ]
    parts = [_fuzz_cli(*run, "--shard", f"{i}/4") for i in (1, 2, 3, 4)]
    assert [r for part in parts for r in part] == whole
    result = CliRunner().invoke(main, ["fuzz", "--shard", "1/4"])
    assert result.exit_code == 2
    assert result.output == (
        "dmalab: error: --shard needs --seed: every part must draw from the same seeds\n"
    )
