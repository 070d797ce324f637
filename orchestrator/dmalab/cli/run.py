"""`dmalab run`: the main job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from dmalab.artifacts.image import ensure_image
from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.errors import CheckFailed


@click.command("run", short_help="Run the built-in scenario suite and print a verdict.")
@click.option(
    "-t", "--topology", "topologies", multiple=True, metavar="NAME|FILE",
    help="Topology to run on (repeatable). Default: the shipped default and virtio-iommu.",
)  # fmt: skip
@click.option(
    "-s", "--scenario", "only", multiple=True, metavar="SEED",
    help="Only these scenarios, by seed number or name (repeatable).",
)  # fmt: skip
@click.option(
    "--results", type=click.Path(file_okay=False, path_type=Path),
    help="Write results.json and junit.xml into this directory.",
)  # fmt: skip
@click.option("--accel", default=None, help="Override the topology's accelerator (tcg, kvm, auto).")
@click.option("--demo", is_flag=True, help="Run the ncdma device demonstration instead (no guest).")
def command(
    topologies: tuple[str, ...],
    only: tuple[str, ...],
    results: Path | None,
    accel: str | None,
    demo: bool,
) -> None:
    """Run the seed scenarios (Arnd's table, sg_table caching, domain reuse, move, revoke) on
    each topology: boot once, restore a snapshot before every variant, check every step from
    the host. Prints a verdict table. Exit 0 only if every correct variant passes and every
    faulty variant is detected at its named steps; 1 otherwise.
    """
    if demo:
        _demo()
        return
    from dmalab.scenarios.report import render_table, write_json, write_junit
    from dmalab.scenarios.runner import SHIPPED, run_suite
    from dmalab.scenarios.suite import SUITE

    progress = Progress()
    ensure_qemu(progress)
    ensure_image(lambda message: click.echo(message, err=True))
    scenarios = [s for s in SUITE if not only or s.seed in only or s.name in only]
    if not scenarios:
        raise click.BadParameter(f"no scenario matches {', '.join(only)}", param_hint="--scenario")

    def live(r) -> None:  # type: ignore[no-untyped-def]
        click.echo(f"  {r.topology:<13} {r.scenario:<18} {r.variant:<24} {r.outcome}", err=True)

    out = asyncio.run(
        run_suite(list(topologies) or list(SHIPPED), scenarios, accel=accel, on_result=live)
    )
    click.echo(render_table(out))
    if results:
        results.mkdir(parents=True, exist_ok=True)
        write_json(out, results / "results.json")
        write_junit(out, results / "junit.xml")
        click.echo(f"\nresults: {results / 'results.json'}, {results / 'junit.xml'}")
    bad = [f"{r.scenario}/{r.topology}/{r.variant}" for r in out if not r.ok]
    if bad:
        raise CheckFailed(f"verdict: FAIL ({', '.join(bad)})")
    click.echo("\nverdict: PASS")


def _demo() -> None:
    from dmalab.scenarios.device_demo import render, run_demo

    qemu = ensure_qemu(Progress())
    demo_results = asyncio.run(run_demo(qemu.base_argv()))
    click.echo(render(demo_results))
    failed = [r.name for r in demo_results if not r.ok]
    if failed:
        raise CheckFailed(f"verdict: FAIL ({', '.join(failed)})")
    click.echo("\nverdict: PASS")
