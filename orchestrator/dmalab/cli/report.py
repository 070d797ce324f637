"""`dmalab report`: the HTML report of a results directory, or two runs compared."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dmalab.cli.options import emit, output_options
from dmalab.errors import BadInput, EnvironmentProblem


@click.command("report", short_help="Render report.html from results.json, or compare two runs.")
@click.argument("results", required=False, type=click.Path(path_type=Path), metavar="[DIR]")
@click.option(
    "--compare", "pair", nargs=2, type=click.Path(path_type=Path), metavar="OLD NEW",
    help="Compare two runs (results directories or results.json files) instead of rendering.",
)  # fmt: skip
@output_options("With --compare: print the diff as JSON.")
@click.option(
    "--any-qemu", is_flag=True,
    help="With --compare: compare runs of different QEMU builds too (refused by default).",
)  # fmt: skip
def command(
    results: Path | None,
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

    Exit 2 when an input is missing, is not JSON or is not a dmalab results file.
    """
    from dmalab.scenarios import compare_results as cmp_mod

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
