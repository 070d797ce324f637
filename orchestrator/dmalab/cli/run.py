"""`dmalab run`: the main job."""

from __future__ import annotations

import asyncio

import click

from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.errors import CheckFailed
from dmalab.scenarios.device_demo import render, run_demo


@click.command("run", short_help="Run the built-in suite and print a verdict.")
def command() -> None:
    """Build what is missing, then run the built-in checks and print a verdict.

    Today the suite is the ncdma demonstration: a 1 MiB copy through a cached and through a
    coherent ncdma, both behind intel-iommu (programmed from the host, no guest), checked
    byte-exactly, with the devices' counters. Exit 0 when every check holds, 1 otherwise.
    """
    qemu = ensure_qemu(Progress())
    results = asyncio.run(run_demo(qemu.base_argv()))
    click.echo(render(results))
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise CheckFailed(f"verdict: FAIL ({', '.join(failed)})")
    click.echo("\nverdict: PASS")
