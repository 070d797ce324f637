"""`dmalab lava`: a run's results as LAVA results, and LAVA jobs that run the suite."""

from __future__ import annotations

from pathlib import Path

import click

from dmalab.cli import Group
from dmalab.cli.options import emit
from dmalab.cli.params import OUTPUT_FILE


@click.group("lava", cls=Group, short_help="LAVA results and jobs (docs/lava.md).")
def command() -> None:
    """Run dmalab on LAVA: turn a run's results into LAVA results, generate LAVA jobs (one per
    shard, and a guest-side smoke job) and submit them. docs/lava.md says how a lab adds dmalab
    and how the shards' results are merged into one report."""


@command.command("results", short_help="Record a run's results as LAVA test cases.")
@click.argument("results", type=click.Path(path_type=Path), metavar="RESULTS")
@click.option(
    "--suite", default="dmalab", show_default=True,
    help="The suite (test definition) name in the YAML; inside LAVA, LAVA names it.",
)  # fmt: skip
@click.option(
    "--yaml", "as_yaml", is_flag=True,
    help="Write LAVA's results YAML even where lava-test-case is on PATH.",
)  # fmt: skip
@click.option("--output", type=OUTPUT_FILE, metavar="FILE", help="Write the YAML to FILE.")
def results_command(results: Path, suite: str, as_yaml: bool, output: Path | None) -> None:
    """Record RESULTS (a results.json, or the directory `dmalab run --results` wrote it in) as
    LAVA results: per topology `lava-test-set start/stop TOPOLOGY`, per result `lava-test-case
    SCENARIO.VARIANT[.POLICY] --result pass|fail` (a faulty variant detected as expected passes;
    n/a is skip) with the IOMMU MAP events as its measurement where the variant mapped anything,
    then `dmalab-verdict`. Without lava-test-case on PATH (or with --yaml) print the same as
    LAVA's results YAML (a list of test cases with LAVA's export fields).

    Exit 0 when the results were recorded, whatever their verdict (the dmalab-verdict case
    carries it); 2 when RESULTS is not a dmalab results file; 3 when lava-test-case fails.
    """
    from dmalab.lava import results as lava_results
    from dmalab.scenarios.compare_results import load, results_of

    doc, _ = load(results)
    all_cases = lava_results.cases(results_of(doc))
    tools = None if as_yaml else lava_results.lava_tools()
    if tools is None:
        text = lava_results.as_yaml(all_cases, suite=suite)
        emit(text.rstrip("\n"), output)
        return
    if output is not None:
        raise click.UsageError("--output goes with the YAML (--yaml, or no lava-test-case)")
    lava_results.record(all_cases, tools)
    failed = sum(c.result == "fail" for c in all_cases[:-1])
    click.echo(f"recorded {len(all_cases)} LAVA test cases ({failed} failed)", err=True)
