"""`dmalab build`: build (or find in the cache) what a run needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dmalab.artifacts import image
from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ARCHES, ensure_qemu
from dmalab.cli.options import kernel_options
from dmalab.cli.params import OUTPUT_FILE
from dmalab.errors import BadInput

if TYPE_CHECKING:
    from dmalab.artifacts.kernel_choice import KernelChoice


@click.command("build", short_help="Build QEMU and the guest image (cached).")
@click.argument(
    "what", type=click.Choice(["qemu", "image", "all", "runner-image"]), default="all",
    required=False,
)  # fmt: skip
@click.option(
    "--refresh",
    is_flag=True,
    help="Look up the newest Debian QEMU 10.0 source again (by default the version found by the "
    "first build is kept, so rebuilds are reproducible).",
)
@kernel_options
@click.option(
    "--arch",
    "arches",
    type=click.Choice(["all", *ARCHES]),
    default="all",
    show_default=True,
    help="Guest architecture of the image (QEMU always has both); with --kernel, the kernel's "
    "own by default.",
)
@click.option(
    "--export", type=OUTPUT_FILE, metavar="FILE",
    help="With runner-image: also write the image to FILE as an OCI archive (podman load -i).",
)  # fmt: skip
def command(
    what: str, refresh: bool, kernel: KernelChoice | None, modules: Path | None, arches: str,
    export: Path | None,
) -> None:  # fmt: skip
    """Build QEMU with the ncdma devices and the guest image, or find them in the cache.

    WHAT is qemu, image or all (the default). QEMU is built for both guest architectures
    (qemu-system-x86_64 and qemu-system-aarch64, one configure); the image for each --arch.
    Nothing is rebuilt when nothing changed; a changed file in qemu-devices/ recompiles only what
    depends on it. Progress goes to stderr; the path of each result is printed on stdout: the
    QEMU binaries, then each image's manifest.json. Set DMALAB_QEMU=/path/to/qemu-system-x86_64
    (and DMALAB_QEMU_AARCH64=/path/to/qemu-system-aarch64) to use your own QEMU instead.

    runner-image builds the container image LAVA's docker device type runs (docs/lava.md):
    dmalab, its QEMU, the firmware and both guest images, tagged
    localhost/dmalab-runner:<commit>, with mmdebstrap and podman; rebuilt only when what goes
    into it changed. Prints the image's name; --export FILE also writes it as an OCI archive.
    """
    if what == "runner-image":
        _runner_image(kernel, modules, arches, refresh, export)
        return
    if export is not None:
        raise click.UsageError("--export goes with runner-image")
    if kernel is not None:
        kernel = kernel.with_modules(modules)
    elif modules is not None:
        raise BadInput("--modules: give --kernel too (the kernel the modules belong to)")
    if kernel is not None and kernel.file is not None and arches == "all":
        arches = kernel.arch or "x86_64"  # a file of neither kind fails in the build
    chosen = ARCHES if arches == "all" else (arches,)
    progress = Progress()
    if what in ("qemu", "all"):
        qemu = ensure_qemu(progress, refresh=refresh)
        for arch in chosen:
            # A user's own QEMU may be for one architecture only: ask for the other to hear why.
            if arches != "all" or arch in qemu.binaries:
                click.echo(str(qemu.binary_for(arch)))
    if what in ("image", "all"):
        for arch in chosen:
            build = image.ensure_image(arch=arch) if kernel is None else kernel.image(arch)
            click.echo(str(build.manifest))


def _runner_image(
    kernel: KernelChoice | None, modules: Path | None, arches: str, refresh: bool,
    export: Path | None,
) -> None:  # fmt: skip
    from dmalab.artifacts import runner_image

    if kernel is not None or modules is not None or arches != "all" or refresh:
        raise click.UsageError("runner-image takes only --export (it carries both images)")
    built = runner_image.ensure_runner_image(lambda m: click.echo(m, err=True))
    size = runner_image.image_size(built.name) / 1e6
    verb = "built" if built.built else "up to date"
    click.echo(f"runner image {verb} in {built.seconds:.0f} s: {built.name}, {size:.0f} MB",
               err=True)  # fmt: skip
    if export is not None:
        runner_image.export(built.name, export)
        click.echo(f"exported: {export} ({export.stat().st_size / 1e6:.0f} MB)", err=True)
    click.echo(built.name)
