"""`dmalab run`: the main job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dmalab.artifacts.image import ensure_image
from dmalab.artifacts.kernel_choice import KernelChoice, kernel_axis
from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.cli.completion import complete_policy, complete_topology
from dmalab.cli.options import (
    emit,
    emit_json,
    kernel_options,
    output_options,
    shard_option,
)
from dmalab.cli.params import ACCEL, INPUT_FILE, OUTPUT_DIR
from dmalab.errors import BadInput, CheckFailed
from dmalab.selection import Shard, select

if TYPE_CHECKING:
    from dmalab.scenarios.suite import Item

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
    shell_complete=complete_topology,
    help="Topology to run on (repeatable). Default: the shipped default, virtio-iommu, "
    "arm64-smmuv3, arm64-virtio-iommu and arm64-noncoherent (with --matrix default, "
    "virtio-iommu and coherent), "
    "those of --arch.",
)  # fmt: skip
@click.option(
    "--arch", type=click.Choice(["all", "x86_64", "aarch64"]), default="all", show_default=True,
    help="Without -t: only the default topologies of this guest architecture (with a "
    "--kernel FILE, the kernel's by default).",
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
    "-k", "keyword", metavar="EXPR",
    help="Only the run items EXPR matches, as pytest's -k: words matched as case-insensitive "
    "substrings of an item's topology, kernel, policy, scenario name, seed or variant, joined "
    "by and, or, not and parentheses (-k 'revoke and not virtio').",
)  # fmt: skip
@shard_option("the run list (after -k)", "The parts do not depend on -j or --seed.")
@click.option(
    "--list", "list_only", is_flag=True,
    help="Print the run items (topology, scenario, variant, policy, and the kernel when "
    "--kernel is given), one a line, and run nothing. Honours -t, -s, --scenario-file, "
    "--matrix, --policy, --kernel, -k and --shard.",
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
    "--policy", "policies", multiple=True, metavar="NAME", shell_complete=complete_policy,
    help="Only these matrix policies (repeatable; implies --matrix).",
)  # fmt: skip
@click.option(
    "--results", type=OUTPUT_DIR,
    help="Write results.json, junit.xml and report.html into this directory.",
)  # fmt: skip
@click.option("--accel", type=ACCEL, help="Override the topology's accelerator.")
@kernel_options(repeatable=True)
@output_options(
    "Print results.json's document instead of the table (with --list: the items as a JSON "
    "list); the summary and the verdict go to stderr."
)
@click.option("--demo", is_flag=True, help="Run the ncdma device demonstration instead (no guest).")
def command(
    topologies: tuple[str, ...],
    arch: str,
    only: tuple[str, ...],
    files: tuple[Path, ...],
    keyword: str | None,
    shard: Shard | None,
    list_only: bool,
    jobs_text: str | None,
    seed_text: str | None,
    matrix: bool,
    policies: tuple[str, ...],
    results: Path | None,
    accel: str | None,
    kernel: tuple[KernelChoice, ...],
    modules: Path | None,
    as_json: bool,
    output: Path | None,
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
    from dmalab.scenarios.codec import DEFAULT_SEED
    from dmalab.scenarios.runner import run_suite

    jobs = _integer("-j/--jobs", jobs_text, 1, 64) or 1
    seed = _integer("--seed", seed_text, 0, MAX_SEED)
    seed = DEFAULT_SEED if seed is None else seed
    kernels = kernel_axis(kernel, modules)
    file_arches = {k.arch or "x86_64" for k in kernels if k.file is not None}
    if file_arches and arch == "all" and not topologies:
        arch = min(file_arches)  # your kernel runs on its own architecture
    runs = _run_list(topologies, arch, only, files, matrix, policies, keyword, shard,
                     [k.label for k in kernels])  # fmt: skip
    if list_only:
        _list(runs.items, as_json, output)
        return
    arches = list(dict.fromkeys(runs.arches[i.topology] for i in runs.items))
    for k in kernels:
        if k.file is not None and any(a != (k.arch or "x86_64") for a in arches):
            raise BadInput(
                f"--kernel: the run's topologies are {' and '.join(arches)}; {k.file} is for "
                f"{k.arch or 'x86_64'} only: choose the topologies with --arch or -t"
            )
    progress = Progress()
    ensure_qemu(progress)
    say = lambda m: click.echo(f"image: {m}", err=True)  # noqa: E731
    images = {k.label: {a: k.image(a, say) for a in arches} for k in kernels}
    for each in arches if not kernels else ():
        ensure_image(say, arch=each)
    run = asyncio.run(
        run_suite(runs.topologies, runs.scenarios, policies=runs.policies, seed=seed, jobs=jobs,
                  accel=accel, on_result=_live, items=runs.items, kernels=images or None)
    )  # fmt: skip
    doc = run.doc()
    doc["meta"].update(runs.meta())
    if len(kernels) == 1 and kernels[0].file is not None:
        built = next(iter(images[kernels[0].label].values()))
        doc["meta"]["kernel"] = {"file": str(kernels[0].file), "release": built.kernel_release}
    _report(run, doc, runs, jobs, seed, results, as_json, output)


@dataclass(frozen=True)
class RunList:
    """What a run runs: its topologies, scenarios and policies (None: no matrix), and the items
    chosen from their expansion by -k and --shard."""

    topologies: list[str]
    scenarios: list[Any]
    policies: list[str] | None
    coherent: dict[str, bool]
    arches: dict[str, str]  # topology -> guest architecture
    items: list[Item]
    kernels: list[str]  # the kernel axis: labels, in the order given (empty: no axis)
    keyword: str | None
    shard: Shard | None

    def meta(self) -> dict[str, Any]:
        """What results.json's meta says about the selection (nothing for a whole run)."""
        chosen = {"keyword": self.keyword, "shard": str(self.shard) if self.shard else None}
        return {k: v for k, v in chosen.items() if v is not None}


def _run_list(
    topologies: tuple[str, ...], arch: str, only: tuple[str, ...], files: tuple[Path, ...],
    matrix: bool, policies: tuple[str, ...], keyword: str | None, shard: Shard | None,
    kernels: list[str] | None = None,
) -> RunList:  # fmt: skip
    """The run list the options give, checked before anything is built or booted."""
    from dmalab.machine.topology import load_topology
    from dmalab.scenarios.declarations import POLICIES
    from dmalab.scenarios.runner import MATRIX_TOPOLOGIES, SHIPPED, all_coherent
    from dmalab.scenarios.suite import plan

    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise BadInput(f"--policy: unknown policy {unknown[0]!r} (known: {', '.join(POLICIES)})")
    matrix = matrix or bool(policies)
    chosen = (list(dict.fromkeys(policies)) or list(POLICIES)) if matrix else None
    topos = list(dict.fromkeys(topologies)) or list(MATRIX_TOPOLOGIES if matrix else SHIPPED)
    loaded = {t: load_topology(t) for t in topos}  # bad files fail here
    if not topologies and arch != "all":
        topos = [t for t in topos if loaded[t].arch == arch]
    # A scenario file's device ids are checked against the topologies it will run on.
    scenarios = _scenarios(only, files, {d.id for t in topos for d in loaded[t].devices})
    # Results name topologies by name (bad files failed above, before anything is built).
    coherent = {loaded[t].name: all_coherent(loaded[t]) for t in topos}
    arches = {t: loaded[t].arch for t in topos}
    kernels = kernels or []
    every = plan(topos, scenarios, chosen or ["base"], kernels or [None])
    matching = select(every, lambda i: i.names, keyword=keyword)
    if keyword is not None and not matching:
        raise BadInput(f"-k: {keyword!r} matches none of the {len(every)} run items")
    items = shard.take(matching) if shard is not None else matching
    return RunList(topos, scenarios, chosen, coherent, arches, items, kernels, keyword, shard)


def _list(items: list[Item], as_json: bool, output: Path | None) -> None:
    """`--list`: the items, one a line (or a JSON list); the kernel last, when there is one."""
    kernel = any(i.kernel is not None for i in items)
    keys = ("topology", "scenario", "variant", "policy", *(("kernel",) if kernel else ()))
    rows = [(i.topology, i.scenario.name, i.variant.name, i.policy,
             *((i.kernel or "",) if kernel else ())) for i in items]  # fmt: skip
    if as_json:
        emit_json([dict(zip(keys, row, strict=True)) for row in rows], output)
        return
    widths = [max((len(row[c]) for row in rows), default=0) for c in range(len(keys) - 1)]
    lines = [" ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=False)) + f" {row[-1]}"
             for row in rows]  # fmt: skip
    emit("\n".join(lines), output) if lines else click.echo("no run items", err=True)


def _live(r: Any) -> None:
    policy = f" {r.policy:<10}" if r.policy is not None else ""
    kernel = f" {r.kernel:<12}" if r.kernel is not None else ""
    click.echo(f"  {r.topology:<13}{kernel}{policy} {r.scenario:<18} {r.variant:<24} "
               f"{r.outcome}", err=True)  # fmt: skip


def _report(
    run: Any, doc: dict[str, Any], runs: RunList, jobs: int, seed: int, results: Path | None,
    as_json: bool, output: Path | None,
) -> None:  # fmt: skip
    """The table (or the JSON), the summary, the files, the verdict."""
    from dmalab.scenarios.report import render_matrix, render_table, write_results_dir

    machines = run.timing["machines"]
    shard = f", shard {runs.shard}" if runs.shard else ""
    summary = (f"{len(run.results)} results in {run.timing['wall_seconds']:.1f} s on "
               f"{len(machines)} machine{'s' if len(machines) != 1 else ''} "
               f"(-j {jobs}, seed {seed}{shard})")  # fmt: skip
    lines = [summary]
    if results:
        lines.append(
            "results: " + ", ".join(map(str, write_results_dir(doc, run.results, results)))
        )
    bad = [r for r in run.results if not r.ok]
    if not bad:
        lines.append("verdict: PASS")
    if as_json:
        emit_json(doc, output)
        click.echo("\n".join(lines), err=True)
    else:
        table = (render_matrix(run.results, runs.scenarios, runs.coherent)
                 if runs.policies is not None else render_table(run.results))  # fmt: skip
        emit("\n\n".join([table, *lines]), output)
    if bad:
        names = [
            f"{r.scenario}/{r.topology}/{r.variant}"
            + (f"[{r.policy}]" if r.policy else "")
            + (f"@{r.kernel}" if r.kernel else "")
            for r in bad
        ]
        more = f" and {len(names) - FAILURES_NAMED} more" if len(names) > FAILURES_NAMED else ""
        raise CheckFailed(f"verdict: FAIL ({', '.join(names[:FAILURES_NAMED])}{more})")


def _scenarios(only: tuple[str, ...], files: tuple[Path, ...], devices: set[str]) -> list[Any]:
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

        chosen += [load_file(path, devices=devices) for path in files]
    seen: set[str] = set()
    for sc in chosen:
        if sc.name in seen:
            raise BadInput(f"scenario {sc.name!r} given twice (names must be unique in a run)")
        seen.add(sc.name)
    return chosen


def _demo() -> None:
    from dmalab.scenarios.device_demo import render, run_demo

    qemu = ensure_qemu(Progress())
    demo_results = asyncio.run(run_demo(qemu.base_argv()))
    click.echo(render(demo_results))
    failed = [r.name for r in demo_results if not r.ok]
    if failed:
        raise CheckFailed(f"verdict: FAIL ({', '.join(failed)})")
    click.echo("\nverdict: PASS")
