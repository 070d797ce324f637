"""`dmalab spec`: files generated from the ncdma specification (orchestrator/dmalab/spec/)."""

from __future__ import annotations

from pathlib import Path

import click

from dmalab.artifacts.cache import repo_root
from dmalab.errors import CheckFailed
from dmalab.spec import cheader


def header_path() -> Path:
    """The committed C header, qemu-devices/ncdma-hw.h."""
    return repo_root() / "qemu-devices" / cheader.HEADER_NAME


@click.group("spec", short_help="Files generated from the ncdma specification.")
def command() -> None:
    """Files generated from the ncdma specification (orchestrator/dmalab/spec/ncdma.py)."""


@command.command("header", short_help="Write (or --check) qemu-devices/ncdma-hw.h.")
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 if the committed header differs from the specification.",
)
def header(check: bool) -> None:
    """Write qemu-devices/ncdma-hw.h, the C view of the specification shared by the QEMU device
    and the guest driver."""
    path = header_path()
    if check:
        current = path.read_text() if path.exists() else None
        if current != cheader.generate():
            raise CheckFailed(
                f"{path} differs from orchestrator/dmalab/spec/ncdma.py: "
                "run `dmalab spec header` and commit the result"
            )
        click.echo(f"{path} is up to date")
        return
    changed = cheader.write(path)
    click.echo(f"{'wrote' if changed else 'unchanged:'} {path}")
