"""`dmalab run`: the main job."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from dmalab.artifacts.image import ensure_image
from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.cli.params import ACCEL, INPUT_FILE, OUTPUT_DIR
from dmalab.errors import BadInput, CheckFailed

#: Failing results named in the final error line; the rest are counted.
FAILURES_NAMED = 8
MAX_SEED = (1 << 64) - 1


def _integer(name: str, text: str | None, low: int, high: int) -> int | None:
    """An integer option checked here, so that a bad value is one `dmalab: error:` line."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name}: not an integer: {text!r}") from None
    if not low <= value <= high:
        raise BadInput(f"{name}: {value} is out of range ({low}..{high})")
    return value


@click.command("run", short_help="Run the built-in scenario suite and print a verdict.")
@click.option(
    "-t", "--topology", "topologies", multiple=True, metavar="NAME|FILE",
    help="Topology to run on (repeatable). Default: the shipped default and virtio-iommu "
    "(with --matrix also coherent).",
)  # fmt: skip
@click.option(
    "-s", "--scenario", "only", multiple=True, metavar="SEED",
    help="Only these scenarios, by seed number or name (repeatable).",
)  # fmt: skip
@click.option(
    "--scenario-file", "files", multiple=True, type=INPUT_FILE, metavar="PATH",
    help="Run this scenario file (TOML, docs/scenario-files.md; repeatable). Without -s only "
    "the files run; with -s, the scenarios -s names too.",
)  # fmt: skip
@click.option(
    "-j", "--jobs", "jobs_text", metavar="N",
    help="Machines running at once (default 1). Results are the same for any N.",
)  # fmt: skip
@click.option(
    "--seed", "seed_text", metavar="N",
    help="Seed of every byte pattern the scenarios write (default 1). Verdicts do not depend "
    "on it.",
)  # fmt: skip
@click.option(
    "--matrix", is_flag=True,
    help="Run every variant under every policy (base, cache-sgt, exclusive) on every topology "
    "and print the matrix.",
)  # fmt: skip
@click.option(
    "--policy", "policies", multiple=True, metavar="NAME",
    help="Only these matrix policies (repeatable; implies --matrix).",
)  # fmt: skip
@click.option(
    "--results", type=OUTPUT_DIR,
    help="Write results.json, junit.xml and report.html into this directory.",
)  # fmt: skip
@click.option("--accel", type=ACCEL, help="Override the topology's accelerator.")
@click.option("--demo", is_flag=True, help="Run the ncdma device demonstration instead (no guest).")
def command(
    topologies: tuple[str, ...],
    only: tuple[str, ...],
    files: tuple[Path, ...],
    jobs_text: str | None,
    seed_text: str | None,
    matrix: bool,
    policies: tuple[str, ...],
    results: Path | None,
    accel: str | None,
    demo: bool,
) -> None:
    """Run the seed scenarios (Arnd's table, sg_table caching, domain reuse, move, revoke) on
    each topology: boot once, restore a snapshot before every variant, check every step from
    the host. Prints a verdict table (with --matrix, the matrix of variants by topology and
    policy). Exit 0 only if every correct variant passes and every faulty variant is detected
    at its named steps (in a matrix: every cell that expects something holds and none errored);
    1 otherwise.
    """
    if demo:
        _demo()
        return
    from dmalab.machine.topology import load_topology
    from dmalab.scenarios.api import DEFAULT_SEED, POLICIES
    from dmalab.scenarios.report import render_matrix, render_table
    from dmalab.scenarios.runner import MATRIX_TOPOLOGIES, SHIPPED, all_coherent, run_suite

    jobs = _integer("-j/--jobs", jobs_text, 1, 64) or 1
    seed = _integer("--seed", seed_text, 0, MAX_SEED)
    seed = DEFAULT_SEED if seed is None else seed
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise BadInput(f"--policy: unknown policy {unknown[0]!r} (known: {', '.join(POLICIES)})")
    matrix = matrix or bool(policies)
    chosen = (list(dict.fromkeys(policies)) or list(POLICIES)) if matrix else None
    scenarios = _scenarios(only, files)
    topos = list(dict.fromkeys(topologies)) or list(MATRIX_TOPOLOGIES if matrix else SHIPPED)
    # Results name topologies by name (bad files fail here, before anything is built).
    coherent = {(t := load_topology(given)).name: all_coherent(t) for given in topos}

    progress = Progress()
    ensure_qemu(progress)
    ensure_image(lambda message: click.echo(message, err=True))

    def live(r: Any) -> None:
        policy = f" {r.policy:<10}" if r.policy is not None else ""
        click.echo(f"  {r.topology:<13}{policy} {r.scenario:<18} {r.variant:<24} {r.outcome}",
                   err=True)  # fmt: skip

    run = asyncio.run(
        run_suite(topos, scenarios, policies=chosen, seed=seed, jobs=jobs, accel=accel,
                  on_result=live)
    )  # fmt: skip
    if matrix:
        click.echo(render_matrix(run.results, scenarios, coherent))
    else:
        click.echo(render_table(run.results))
    machines = run.timing["machines"]
    click.echo(f"\n{len(run.results)} results in {run.timing['wall_seconds']:.1f} s on "
               f"{len(machines)} machine{'s' if len(machines) != 1 else ''} "
               f"(-j {jobs}, seed {seed})")  # fmt: skip
    if results:
        _write(run.doc(), run.results, results)
    bad = [r for r in run.results if not r.ok]
    if bad:
        names = [
            f"{r.scenario}/{r.topology}/{r.variant}" + (f"[{r.policy}]" if r.policy else "")
            for r in bad
        ]
        more = f" and {len(names) - FAILURES_NAMED} more" if len(names) > FAILURES_NAMED else ""
        raise CheckFailed(f"verdict: FAIL ({', '.join(names[:FAILURES_NAMED])}{more})")
    click.echo("\nverdict: PASS")


def _scenarios(only: tuple[str, ...], files: tuple[Path, ...]) -> list[Any]:
    """The built-in scenarios -s names (all of them when neither -s nor a file is given), then
    the scenario files; names must not repeat, results are keyed by them."""
    from dmalab.scenarios.suite import SUITE

    chosen = [s for s in SUITE if s.seed in only or s.name in only] if only else []
    if only and not chosen:
        raise BadInput(f"--scenario: no scenario matches {', '.join(only)}")
    if not only and not files:
        chosen = list(SUITE)
    if files:
        from dmalab.scenarios.declarative import load_file  # only when asked for

        chosen += [load_file(path) for path in files]
    seen: set[str] = set()
    for sc in chosen:
        if sc.name in seen:
            raise BadInput(f"scenario {sc.name!r} given twice (names must be unique in a run)")
        seen.add(sc.name)
    return chosen


def _write(doc: dict[str, Any], out: list[Any], results: Path) -> None:
    from dmalab.scenarios.report import write_doc, write_junit

    results.mkdir(parents=True, exist_ok=True)
    write_doc(doc, results / "results.json")
    write_junit(out, results / "junit.xml")
    written = [results / "results.json", results / "junit.xml"]
    try:
        from dmalab.scenarios.html import write_html
    except ModuleNotFoundError as exc:
        click.echo(f"dmalab: report.html not written: {exc}", err=True)
    else:
        write_html(doc, results / "report.html")
        written.append(results / "report.html")
    click.echo(f"\nresults: {', '.join(map(str, written))}")


def _demo() -> None:
    from dmalab.scenarios.device_demo import render, run_demo

    qemu = ensure_qemu(Progress())
    demo_results = asyncio.run(run_demo(qemu.base_argv()))
    click.echo(render(demo_results))
    failed = [r.name for r in demo_results if not r.ok]
    if failed:
        raise CheckFailed(f"verdict: FAIL ({', '.join(failed)})")
    click.echo("\nverdict: PASS")
