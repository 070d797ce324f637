"""`dmalab lava`: a run's results as LAVA results, and LAVA jobs that run the suite."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dmalab.cli import Group
from dmalab.cli.completion import complete_topology
from dmalab.cli.options import emit
from dmalab.cli.params import INPUT_FILE, OUTPUT_DIR, OUTPUT_FILE


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


@command.command("job", short_help="Write LAVA jobs: one per shard, and a guest smoke job.")
@click.option("--shards", "count", type=click.IntRange(1, 999), default=1, show_default=True,
              help="Split the run into this many jobs (dmalab run --shard I/N).")  # fmt: skip
@click.option("--output", "out_dir", type=OUTPUT_DIR, required=True, metavar="DIR",
              help="Write the jobs here, one YAML file each.")  # fmt: skip
@click.option("--image", metavar="NAME",
              help="The runner image (default: localhost/dmalab-runner:<commit>, as `dmalab "
              "build runner-image` tags it).")  # fmt: skip
@click.option(
    "--pull",
    is_flag=True,
    help="LAVA pulls --image from its registry (default: the image is on the worker).",
)
@click.option("--minutes", type=click.IntRange(1, 24 * 60), default=60, show_default=True,
              help="Each shard's test timeout; the job's is 15 minutes more.")  # fmt: skip
@click.option("--name", default="dmalab", show_default=True, help="Prefix of the job names.")
@click.option("--smoke", "smoke_topologies", multiple=True, metavar="TOPOLOGY",
              default=("default",), show_default=True, shell_complete=complete_topology,
              help="Also write a guest smoke job on the qemu device type for this topology "
              "(repeatable; --no-smoke for none).")  # fmt: skip
@click.option("--no-smoke", is_flag=True, help="Write no smoke job.")
@click.option(
    "--kernel-url",
    metavar="URL",
    help="The smoke job's kernel (default: file:// of the built guest image's).",
)
@click.option(
    "--initrd-url",
    metavar="URL",
    help="The smoke job's initramfs (default: file:// of the built guest image's).",
)
@click.option("--check", is_flag=True,
              help="Validate every job with LAVA's own schema (Debian's lava-common, fetched "
              "into the cache).")  # fmt: skip
@click.option("--submit", is_flag=True, help="Submit the jobs with `lavacli jobs submit`.")
@click.option("--identity", metavar="NAME", help="With --submit: lavacli's identity.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- RUN OPTIONS]")
def job_command(
    count: int, out_dir: Path, image: str | None, pull: bool, minutes: int, name: str,
    smoke_topologies: tuple[str, ...], no_smoke: bool, kernel_url: str | None,
    initrd_url: str | None, check: bool, submit: bool, identity: str | None,
    run_args: tuple[str, ...],
) -> None:  # fmt: skip
    """Write LAVA job definitions into DIR: `shard-I-of-N.yaml` for I = 1..N, each running
    `dmalab run --shard I/N [RUN OPTIONS]` in the runner image on LAVA's docker device type and
    recording the results with `dmalab lava results`; and `smoke-TOPOLOGY.yaml`, a job on
    LAVA's qemu device type that boots dmalab's QEMU (first on the worker's PATH) with the
    topology's devices and vIOMMU and the guest image, and checks that every ncdma device
    probed and passes its self-test. Prints the files written (and with --submit the job ids).

    RUN OPTIONS after `--` go to every shard's `dmalab run`, e.g. `-- --matrix -k revoke`.
    Merge the shards' results.json files with `dmalab report --merge` (docs/lava.md).
    """
    from dmalab.lava import jobs as lava_jobs
    from dmalab.lava.job_files import smoke_jobs, write_jobs

    if identity and not submit:
        raise click.UsageError("--identity goes with --submit")
    if (kernel_url or initrd_url) and no_smoke:
        raise click.UsageError("--kernel-url and --initrd-url go with a smoke job")
    shard = lava_jobs.ShardJobs(
        count=count, image=image or default_image(), local=not pull, run_args=run_args,
        minutes=minutes, name=name,
    )  # fmt: skip
    jobs = {f"shard-{i}-of-{count}.yaml": lava_jobs.shard_job(i, shard)
            for i in range(1, count + 1)}  # fmt: skip
    if not no_smoke:
        jobs.update(smoke_jobs(smoke_topologies, name, kernel_url, initrd_url))
    if check:
        from dmalab.lava.schema import validate_jobs

        validate_jobs(jobs)
    files = write_jobs(jobs, out_dir)
    lines = [str(f) for f in files]
    if submit:
        from dmalab.lava.submit import submit as submit_jobs

        ids = submit_jobs(files, identity)
        lines = [f"{f} {i}" for f, i in zip(files, ids, strict=False)]
    emit("\n".join(lines), None)


def default_image() -> str:
    """The runner image `dmalab build runner-image` tags for this checkout."""
    from dmalab.artifacts.runner_image import image_name

    return image_name()


@command.command("run-job", short_help="Run a LAVA job here with LAVA's own dispatcher.")
@click.argument("job_file", type=INPUT_FILE, metavar="JOB")
@click.option(
    "--output-dir",
    "out_dir",
    type=OUTPUT_DIR,
    required=True,
    metavar="DIR",
    help="The dispatcher's log (lava-run.log), device.yaml and results go here.",
)
@click.option("--timeout", type=click.IntRange(1, 24 * 3600), default=3600, show_default=True,
              help="Seconds before the dispatcher is stopped.")  # fmt: skip
@click.option("--volume", "volumes", multiple=True, metavar="HOST:CONTAINER",
              help="For the docker device type: a volume for the container, as a lab's device "
              "dictionary gives it (docker_volumes); repeatable.")  # fmt: skip
def run_job_command(job_file: Path, out_dir: Path, timeout: int, volumes: tuple[str, ...]) -> None:
    """Run JOB (e.g. a smoke job `dmalab lava job` wrote) on this machine with LAVA's own
    dispatcher, `lava-run`, from Debian's packages unpacked into the cache and a venv of its
    dependencies (made the first time), with no LAVA server: the device configuration is
    rendered from LAVA's device-type template with the job's context, and dmalab's QEMU goes
    first on PATH (for the docker device type, a `docker` that runs podman). Prints each test
    case the job's test shell recorded (DEFINITION[.SET].CASE: RESULT) and the job's result.

    Exit 0 when the job completed and every test case passed, 1 otherwise.
    """
    from dmalab.artifacts.lava_dispatcher import ensure_dispatcher
    from dmalab.artifacts.progress import Progress
    from dmalab.artifacts.qemu import ensure_qemu
    from dmalab.errors import BadInput, CheckFailed
    from dmalab.lava.local_run import run_job

    dispatcher = ensure_dispatcher(lambda m: click.echo(m, err=True))
    qemu = ensure_qemu(Progress())
    click.echo(f"lava-run {job_file} ...", err=True)
    bad = [v for v in volumes if ":" not in v or not v.startswith("/")]
    if bad:
        raise BadInput(f"--volume: {bad[0]!r} is not HOST:CONTAINER with an absolute HOST path")
    device_vars = {"docker_volumes": list(volumes)} if volumes else None
    # The dispatcher's working directory is /var/lib/lava/dispatcher/tmp/<job id>: one per run.
    job_id = os.getpid()
    done = run_job(dispatcher, job_file, out_dir, qemu, timeout=timeout, device_vars=device_vars,
                   job_id=job_id)  # fmt: skip
    lines = [".".join(str(c[k]) for k in ("definition", "set", "case") if k in c)
             + f": {c.get('result', '?')}" for c in done.cases]  # fmt: skip
    lines.append(f"job: {done.job_result} in {done.seconds:.1f} s ({done.log})")
    emit("\n".join(lines), None)
    if not done.ok:
        why = done.error or ("a test case failed" if done.cases else "no test case recorded")
        raise CheckFailed(f"lava job {job_file}: {why} (see {done.log})")
