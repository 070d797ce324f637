"""`dmalab build`: build (or find in the cache) what a run needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.cli.params import INPUT_DIR, INPUT_FILE
from dmalab.errors import EnvironmentProblem

_IMAGE_MODULE = "dmalab.artifacts.image"


def _image_available() -> bool:
    return importlib.util.find_spec(_IMAGE_MODULE) is not None


def _build_image(kernel: Path | None, modules: Path | None) -> Path:
    """Build the guest image (reporting its own progress on stderr); return its manifest."""
    from dmalab.artifacts import image

    return image.ensure_image(kernel=kernel, modules=modules).manifest


@click.command("build", short_help="Build QEMU and the guest image (cached).")
@click.argument("what", type=click.Choice(["qemu", "image", "all"]), default="all", required=False)
@click.option(
    "--refresh",
    is_flag=True,
    help="Look up the newest Debian QEMU 10.0 source again (by default the version found by the "
    "first build is kept, so rebuilds are reproducible).",
)
@click.option(
    "--kernel",
    type=INPUT_FILE,
    help="Build the image around your own kernel (a bzImage or vmlinux with CONFIG_PVH=y) "
    "instead of Debian's.",
)
@click.option(
    "--modules",
    type=INPUT_DIR,
    help="Your kernel's lib/modules/<release> tree (its build/ gives the headers for ncdma.ko).",
)
def command(what: str, refresh: bool, kernel: Path | None, modules: Path | None) -> None:
    """Build QEMU with the ncdma devices and the guest image, or find them in the cache.

    WHAT is qemu, image or all (the default). Nothing is rebuilt when nothing changed; a changed
    file in qemu-devices/ recompiles only what depends on it. Progress goes to stderr; the path of
    each result is printed on stdout: the QEMU binary, then the image's manifest.json.
    Set DMALAB_QEMU=/path/to/qemu-system-x86_64 to use your own QEMU instead.
    """
    progress = Progress()
    if what in ("qemu", "all"):
        qemu = ensure_qemu(progress, refresh=refresh)
        click.echo(str(qemu.binary))
    if what in ("image", "all"):
        if not _image_available():
            if what == "image":
                raise EnvironmentProblem("building the guest image is not available yet")
            return
        click.echo(str(_build_image(kernel, modules)))
