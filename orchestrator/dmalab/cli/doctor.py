"""`dmalab doctor`: check the prerequisites and say how to fix each gap."""

from __future__ import annotations

from pathlib import Path

import click

from dmalab import doctor
from dmalab.cli.options import emit, output_options
from dmalab.errors import EXIT_ENVIRONMENT


@click.command("doctor", short_help="Check prerequisites, builds and KVM; say how to fix each.")
@output_options("Print the findings as JSON.")
def command(as_json: bool, output: Path | None) -> None:
    """Check Python, Debian packages, the cache, the QEMU build for this checkout, the guest image
    and KVM, without building or installing anything. Exit 0 when everything needed is there,
    3 (an environment problem) otherwise; each problem comes with the command that fixes it."""
    findings = doctor.diagnose()
    emit(doctor.as_json(findings) if as_json else doctor.render(findings), output)
    if not all(f.ok for f in findings):
        raise click.exceptions.Exit(EXIT_ENVIRONMENT)
