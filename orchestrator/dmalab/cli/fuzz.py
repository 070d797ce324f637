"""`dmalab fuzz`: hostile random operations against ncdma (engine: dmalab.fuzz)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

import click

from dmalab import fuzz as engine
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.cli.params import OUTPUT_DIR

_HELP = (
    """Drive an ncdma device under the qtest accelerator with a seeded, reproducible stream of
hostile operations (random register writes, malformed descriptors, wild addresses, host writes
into buffers, IOMMU map/unmap) and check the device's invariants after every step.

\b
Configurations:
"""
    + "\n".join(f"  {c.name:<20} {c.summary}" for c in engine.CONFIGS.values())
    + """

The operation stream depends only on the seed and the configuration, so a finding replays with
`dmalab fuzz --seed S --config NAME --ops N` (the report prints that command). The seed goes to
stderr first, then progress. Exit 0 when clean, 1 on a finding (seed, configuration and
operation index in the message); QEMU's run directory is kept (moved under --artifacts).
"""
)


@click.command("fuzz", help=_HELP, short_help="Drive ncdma with seeded random hostile operations.")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the operation stream (default: random; printed first either way).",
)
@click.option(
    "--ops",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Operations in total, shared evenly by the configurations. One operation is "
    "one descriptor, register write, memory write, map or unmap.",
)
@click.option(
    "--config",
    "config_name",
    default="all",
    show_default=True,
    help=f"Configuration: {', '.join(engine.CONFIGS)} or all.",
)
@click.option(
    "--artifacts",
    type=OUTPUT_DIR,
    default=None,
    help="Where QEMU's run directory goes when a run fails (default: left in place).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def command(
    seed: int | None, ops: int, config_name: str, artifacts: Path | None, as_json: bool
) -> None:
    configs = engine.resolve_configs(config_name)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    click.echo(f"dmalab fuzz: seed {seed}", err=True)
    argv = ensure_qemu().base_argv()
    last = [0.0]

    def progress(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == total:
            last[0] = now
            click.echo(f"  {name}: {done}/{total} ops", err=True)

    results = asyncio.run(
        engine.fuzz(
            argv, seed=seed, ops=ops, configs=configs, artifacts_dir=artifacts, progress=progress
        )
    )
    total_ops = sum(r.ops for r in results)
    seconds = sum(r.seconds for r in results)
    if as_json:
        json.dump(
            {
                "seed": seed,
                "ops": total_ops,
                "seconds": round(seconds, 3),
                "results": [r.as_json() for r in results],
            },
            sys.stdout,
            indent=1,
        )
        click.echo()
    else:
        for r in results:
            click.echo(
                f"{r.config:<20} {r.ops:>8} ops {r.seconds:7.2f} s "
                f"{r.ops_per_second:>7.0f} ops/s  clean"
            )
        click.echo(
            f"seed {seed}: {total_ops} operations clean in {seconds:.1f} s "
            f"({total_ops / seconds if seconds else 0:.0f} ops/s)"
        )
