"""`dmalab fuzz`: hostile random operations against ncdma (engine: dmalab.fuzz)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import click

from dmalab import fuzz as engine
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.cli.options import emit, emit_json, output_options, shard_option
from dmalab.cli.params import OUTPUT_DIR
from dmalab.errors import BadInput
from dmalab.selection import Shard

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
stderr first, then progress. With --seeds K, seeds S..S+K-1 run one after the other, each with
all of --ops; --shard I/N runs part I of those (seed, configuration) runs. Exit 0 when clean, 1
on a finding (seed, configuration and operation index in the message); QEMU's run directory is
kept (moved under --artifacts).
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
    help="Operations per seed, shared evenly by the configurations. One operation is "
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
@click.option(
    "--seeds", "count", type=click.IntRange(1, 1 << 20), default=1, show_default=True,
    help="Run this many seeds, --seed, --seed+1, ...; --ops operations each.",
)  # fmt: skip
@shard_option(
    "the (seed, configuration) runs",
    "Needs --seed, so that every part draws from the same seeds.",
)
@output_options("Print the results as JSON.")
def command(
    seed: int | None, ops: int, config_name: str, artifacts: Path | None, count: int,
    shard: Shard | None, as_json: bool, output: Path | None,
) -> None:  # fmt: skip
    configs = engine.resolve_configs(config_name)
    if shard is not None and seed is None:
        raise BadInput("--shard needs --seed: every part must draw from the same seeds")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    seeds = range(seed, seed + count)
    items = engine.plan(seeds, ops, configs)
    if shard is not None:
        items = shard.take(items)
    where = f", shard {shard}: {len(items)} runs" if shard else ""
    click.echo(f"dmalab fuzz: seed {_seeds(seeds)}{where}", err=True)
    qemu = ensure_qemu()
    last = [0.0]

    def progress(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == total:
            last[0] = now
            click.echo(f"  {name}: {done}/{total} ops", err=True)

    results = asyncio.run(
        engine.fuzz_items(qemu, items, artifacts_dir=artifacts, progress=progress)
    )
    total_ops = sum(r.ops for r in results)
    seconds = sum(r.seconds for r in results)
    if as_json:
        emit_json(
            {
                "seed": seed,
                "seeds": count,
                **({"shard": str(shard)} if shard else {}),
                "ops": total_ops,
                "seconds": round(seconds, 3),
                "results": [r.as_json() for r in results],
            },
            output,
        )
        return
    lines = [
        f"{r.config:<20} {'' if count == 1 else f'seed {r.seed} '}{r.ops:>8} ops "
        f"{r.seconds:7.2f} s {r.ops_per_second:>7.0f} ops/s  clean"
        for r in results
    ]
    lines.append(
        f"seed {_seeds(seeds)}{where}: {total_ops} operations clean in {seconds:.1f} s "
        f"({total_ops / seconds if seconds else 0:.0f} ops/s)"
    )
    emit("\n".join(lines), output)


def _seeds(seeds: range) -> str:
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
