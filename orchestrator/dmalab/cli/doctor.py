"""`dmalab doctor`: check the prerequisites and say how to fix each gap."""

from __future__ import annotations

import click

from dmalab import doctor


@click.command("doctor", short_help="Check prerequisites, builds and KVM; say how to fix each.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def command(as_json: bool) -> None:
    """Check Python, Debian packages, the cache, the QEMU build for this checkout, the guest image
    and KVM, without building or installing anything. Exit 0 when everything needed is there,
    1 otherwise; each problem comes with the command that fixes it."""
    findings = doctor.diagnose()
    click.echo(doctor.as_json(findings) if as_json else doctor.render(findings))
    if not all(f.ok for f in findings):
        raise click.exceptions.Exit(1)
