"""`dmalab bench`: throughput measurements. Results on stdout as tables (or JSON), progress on
stderr."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.bench import device as device_bench
from dmalab.bench import parse_size
from dmalab.bench import qemu as qemu_bench
from dmalab.bench import suite as suite_bench
from dmalab.cli import Group
from dmalab.cli.options import emit, emit_json, output_options
from dmalab.cli.params import ACCEL
from dmalab.errors import BadInput, CheckFailed


@click.group("bench", cls=Group, short_help="Measure throughput (ncdma against host memcpy).")
def command() -> None:
    """Throughput benchmarks. Figures are medians of repeated runs and every ratio compares
    figures measured in the same run."""


def _finish(
    report: dict[str, Any], table: str, as_json: bool, output: Path | None, check: bool
) -> None:
    """Print the table (or the JSON), and with --check fail on a missed target."""
    if as_json:
        emit_json(report, output)
    else:
        emit(table.rstrip("\n"), output)
    if check and not report["all_targets_pass"]:
        missed = [t["name"] for t in report["targets"] if t["pass"] is not True]
        raise CheckFailed(f"targets missed: {', '.join(missed)}")


def _sizes(values: tuple[str, ...]) -> list[int]:
    sizes = []
    for value in values:
        for part in value.split(","):
            try:
                sizes.append(parse_size(part))
            except ValueError as exc:
                raise BadInput(f"--size: {exc}") from None
    try:
        return device_bench.check_sizes(sizes) if sizes else []
    except BadInput as exc:
        raise BadInput(f"--size: {exc}") from None


@command.command("device", short_help="COPY throughput of ncdma in four configurations.")
@output_options(
    "Print the full results (machine, QEMU, medians, ratios, targets) as JSON instead of the table."
)
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
@click.option(
    "--repeats",
    type=click.IntRange(1, 1000),
    default=device_bench.REPEATS,
    show_default=True,
    help="Timed batches per configuration and size.",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    metavar="SIZE[,SIZE...]",
    help="Copy sizes such as 4K, 64K, 1M, 16M (multiples of 4 KiB). Default: 4K,64K,1M,16M.",
)
@click.option(
    "--batch-mib",
    type=click.IntRange(1, 4096),
    default=device_bench.BATCH_BYTES >> 20,
    show_default=True,
    help="Bytes one batch moves (fewer if the ring fills first).",
)
def device(as_json: bool, output: Path | None, check: bool, repeats: int, sizes: tuple[str, ...],
           batch_mib: int) -> None:  # fmt: skip
    """Measure ncdma COPY throughput with coherent=on, with the device cache, and behind
    intel-iommu with and without the device IOTLB, against host memcpy of the same sizes.

    A table goes to stdout, progress to stderr. The exit code is 0 whatever the targets say,
    unless --check is given.
    """
    chosen = _sizes(sizes) or device_bench.SIZES  # a bad size fails before QEMU is looked for
    progress = Progress()
    qemu = ensure_qemu(progress)
    report = device_bench.run_sync(
        qemu,
        sizes=chosen,
        repeats=repeats,
        batch_bytes=batch_mib << 20,
        log=progress.note,
        command=shlex.join(["dmalab", *sys.argv[1:]]),
    )
    _finish(report, device_bench.render_table(report), as_json, output, check)


@command.command("machine", short_help="QMP, guest memory, snapshot restore and boot times.")
@output_options(
    "Print the full results (machine, QEMU, medians, targets) as JSON instead of the table."
)
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
@click.option(
    "--repeats",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Boots, 64 MiB reads and restores measured.",
)
def machine(as_json: bool, output: Path | None, check: bool, repeats: int) -> None:
    """Measure the machine layer on the q35 + intel-iommu + ncdma guest under TCG: a QMP
    counter fetch, reading 64 MiB of guest RAM through the shared mapping against pmemsave,
    snapshot restore until the agent answers, and a cold boot; then cold boot, agent echo and
    snapshot restore on the arm64 virt + SMMUv3 + ncdma guest, in the same run.
    """
    from dmalab.artifacts.image import ensure_image
    from dmalab.bench import machine as machine_bench  # slow to import: only when used

    progress = Progress()
    qemu = ensure_qemu(progress)
    image = ensure_image()
    report = machine_bench.run_sync(
        qemu,
        image,
        arm64=ensure_image(arch="aarch64"),
        repeats=repeats,
        log=progress.note,
        command=shlex.join(["dmalab", *sys.argv[1:]]),
    )
    _finish(report, machine_bench.render_table(report), as_json, output, check)


@command.command("image", short_help="Guest image build time, cold and cached.")
@output_options(
    "Print the full results (machine, kernel, times, targets) as JSON instead of the table."
)
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
def image(as_json: bool, output: Path | None, check: bool) -> None:
    """Build each architecture's guest image in a private empty cache (downloads included, as
    on a new machine), then again with everything cached. Your own cache is not touched."""
    from dmalab.bench import image as image_bench

    progress = Progress()
    report = image_bench.run(log=progress.note, command=shlex.join(["dmalab", *sys.argv[1:]]))
    _finish(report, image_bench.render_table(report), as_json, output, check)


@command.command("qemu", short_help="QEMU build time (both targets), cold and unchanged.")
@output_options("Print the full results (machine, times, targets) as JSON instead of the table.")
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
def qemu(as_json: bool, output: Path | None, check: bool) -> None:
    """Build QEMU (qemu-system-x86_64 and qemu-system-aarch64) in a private empty cache, source
    download included, as on a new machine; then ask for it again with nothing changed. Your
    own cache is not touched. Takes several minutes."""
    progress = Progress()
    report = qemu_bench.run(
        progress=progress, log=progress.note, command=shlex.join(["dmalab", *sys.argv[1:]])
    )
    _finish(report, qemu_bench.render_table(report), as_json, output, check)


@command.command("suite", short_help="Wall time of the built-in suite, -j 1 against -j 2.")
@output_options(
    "Print the full results (machine, every run, where its time went, speed-up, targets) as "
    "JSON instead of the table."
)
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
@click.option("--accel", type=ACCEL, help="Override the topologies' accelerator.")
@click.option(
    "--arch", type=click.Choice(sorted(suite_bench.TARGETS_S)), default="all", show_default=True,
    help="Run only this architecture's topologies (dmalab run --arch).",
)  # fmt: skip
@click.option(
    "--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
    help="Also run the suite from this dmalab checkout (its orchestrator/), each run right "
    "before the same run of this one, and give the ratios.",
)  # fmt: skip
def suite(
    as_json: bool,
    output: Path | None,
    check: bool,
    accel: str | None,
    arch: str,
    baseline: Path | None,
) -> None:
    """Run `dmalab run` (the whole built-in suite on the shipped topologies, or one
    architecture's) with -j 1, then with -j 2, and report each one's wall time against its
    target, where the time went (boots, snapshots, restores, steps, waits, reports, the
    exclusive variants), the speed-up, and whether all runs wrote the same results.
    """
    from dmalab.artifacts.image import ensure_image

    if baseline is not None and not (baseline / "orchestrator" / "dmalab").is_dir():
        raise BadInput(f"--baseline: {baseline} is not a dmalab checkout (no orchestrator/dmalab)")
    progress = Progress()
    ensure_qemu(progress)
    ensure_image()
    report = suite_bench.run(
        arch=arch, accel=accel, baseline=baseline, log=progress.note,
        command=shlex.join(["dmalab", *sys.argv[1:]]),
    )  # fmt: skip
    _finish(report, suite_bench.render_table(report), as_json, output, check)


@command.command("cache-model", short_help="The CPU cache model on against off (arm64).")
@output_options(
    "Print the full results (machine, samples, medians, ratios, targets) as JSON instead of the "
    "table."
)
@click.option("--check", is_flag=True, help="Exit 1 if a target is missed.")
@click.option(
    "--rounds", type=click.IntRange(1, 50), default=5, show_default=True,
    help="Boots (and seed suites) per machine; each round boots both.",
)  # fmt: skip
@click.option(
    "--samples", type=click.IntRange(1, 100), default=5, show_default=True,
    help="DMA and CPU samples per machine and round.",
)  # fmt: skip
def cache_model(as_json: bool, output: Path | None, check: bool, rounds: int,
                samples: int) -> None:  # fmt: skip
    """Boot arm64-noncoherent with the CPU cache model and the same layout without it, side by
    side, and compare boot to agent-ready, the seed suite's wall time, ncdma COPY throughput
    and a CPU-bound guest loop, each ratio from figures of the same run."""
    import asyncio

    from dmalab.artifacts.image import ensure_image
    from dmalab.bench import cache_model as cache_bench  # imports the scenarios: only when used

    progress = Progress()
    ensure_qemu(progress)
    ensure_image(arch="aarch64")
    report = asyncio.run(
        cache_bench.run(
            rounds=rounds, samples=samples, log=progress.note,
            command=shlex.join(["dmalab", *sys.argv[1:]]),
        )
    )  # fmt: skip
    _finish(report, cache_bench.render_table(report), as_json, output, check)
