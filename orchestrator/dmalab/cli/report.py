"""`dmalab report`: the HTML report of a results directory, or two runs compared."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dmalab.cli.options import emit, output_options
from dmalab.cli.params import OUTPUT_DIR
from dmalab.errors import BadInput, EnvironmentProblem


@click.command(
    "report", short_help="Render report.html from results.json, compare two runs, merge shards."
)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[DIR]...")
@click.option(
    "--compare", "pair", nargs=2, type=click.Path(path_type=Path), metavar="OLD NEW",
    help="Compare two runs (results directories or results.json files) instead of rendering.",
)  # fmt: skip
@output_options("With --compare: print the diff as JSON.")
@click.option(
    "--any-qemu", is_flag=True,
    help="With --compare: compare runs of different QEMU builds too (refused by default).",
)  # fmt: skip
@click.option(
    "--merge", is_flag=True,
    help="Join the shards DIR... (`dmalab run --shard I/N --results DIR`) into the whole run's "
    "results.json, junit.xml and report.html in --results.",
)  # fmt: skip
@click.option(
    "--results", "into", type=OUTPUT_DIR, metavar="OUT",
    help="With --merge: the directory for the merged files.",
)  # fmt: skip
def command(
    paths: tuple[Path, ...],
    merge: bool,
    into: Path | None,
    pair: tuple[Path, Path] | None,
    as_json: bool,
    output: Path | None,
    any_qemu: bool,
) -> None:
    """Render DIR/report.html again from DIR/results.json (written by `dmalab run --results
    DIR`) and print its path. DIR may also name a results.json file; the report goes next to
    it.

    With `--compare OLD NEW`, print what changed from the OLD run to the NEW one, matched by
    scenario, topology and variant: regressions first (a result that passed or was detected as
    expected and now FAILs, a result that is gone, a new result that FAILs), then verdict,
    detected-step, counter and evidence changes. Wall times and physical addresses are not
    compared. Exit 0 when nothing regressed, 1 when something did. Runs of different QEMU
    builds (results.json `meta.qemu.build_key`) are refused unless --any-qemu is given.

    With `--merge DIR... --results OUT`, join the results of the shards of one run (any order)
    into OUT/results.json, junit.xml and report.html, the results in the unsharded run's order.
    Shards of different builds (QEMU, guest image, dmalab commit: results.json meta) or run
    options, a shard given twice and overlapping shards are refused; a missing shard is named
    on stderr and in meta.merged.missing. Exit 1 when a merged result FAILs.

    Exit 2 when an input is missing, is not JSON or is not a dmalab results file.
    """
    from dmalab.scenarios import compare_results as cmp_mod

    if merge:
        _merge(paths, into, as_json, output, any_qemu, pair)
        return
    if into is not None:
        raise click.UsageError("--results goes with --merge")
    if len(paths) > 1:
        raise click.UsageError("give one DIR (several go with --merge)")
    results = paths[0] if paths else None
    if pair:
        if results is not None:
            raise click.UsageError("give either DIR or --compare OLD NEW, not both")
        (old, old_file), (new, new_file) = (cmp_mod.load(p) for p in pair)
        if not any_qemu:
            cmp_mod.check_same_qemu(old, new, str(old_file), str(new_file))
        diff = cmp_mod.compare(old, new, old_name=str(old_file), new_name=str(new_file))
        emit(json.dumps(diff.as_json(), indent=2) if as_json else cmp_mod.render_text(diff), output)
        if diff.regressed:
            raise click.exceptions.Exit(1)
        return
    if results is None:
        raise click.UsageError("give a results directory, or --compare OLD NEW")
    if as_json or any_qemu:
        raise click.UsageError(f"{'--json' if as_json else '--any-qemu'} goes with --compare")
    from dmalab.scenarios.html import write_html

    doc, file = cmp_mod.load(results)
    out = file.parent / "report.html"
    try:
        write_html(doc, out)
    except EnvironmentProblem as exc:  # the directory the user named cannot take the report
        raise BadInput(str(exc)) from exc
    emit(str(out), output)


def _merge(
    paths: tuple[Path, ...], into: Path | None, as_json: bool, output: Path | None,
    any_qemu: bool, pair: tuple[Path, Path] | None,
) -> None:  # fmt: skip
    from dmalab.scenarios.compare_results import load
    from dmalab.scenarios.merge_results import merge
    from dmalab.scenarios.report import write_results_dir
    from dmalab.scenarios.results import from_json
    from dmalab.scenarios.verdicts import FAIL, verdict

    if pair or as_json or any_qemu:
        given = "--compare" if pair else "--json" if as_json else "--any-qemu"
        raise click.UsageError(f"{given} does not go with --merge")
    if not paths:
        raise click.UsageError("--merge: give the shards' results directories")
    if into is None:
        raise click.UsageError("--merge: give --results OUT, the directory for the merged files")
    loaded = [load(p) for p in paths]
    doc = merge([(d, str(f)) for d, f in loaded])
    missing = doc["meta"]["merged"]["missing"]
    if missing:
        click.echo(f"dmalab: merged without shards {', '.join(missing)}", err=True)
    written = write_results_dir(doc, [from_json(r) for r in doc["results"]], into)
    failed = [r for r in doc["results"] if verdict(r["expectation"], r["outcome"]) == FAIL]
    lines = [f"{len(doc['results'])} results from {len(loaded)} shards",
             "results: " + ", ".join(map(str, written)),
             f"verdict: {'FAIL' if failed else 'PASS'}"]  # fmt: skip
    emit("\n".join(lines), output)
    if failed:
        raise click.exceptions.Exit(1)
