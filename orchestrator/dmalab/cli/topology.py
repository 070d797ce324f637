"""`dmalab topology`: list, check and explain topology files."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from dmalab.cli import Group
from dmalab.cli.completion import complete_topology
from dmalab.cli.options import emit, emit_json, output_options
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import load_topology, shipped_topologies


@click.group("topology", cls=Group, short_help="List and check topology files.")
def command() -> None:
    """Topologies describe the machine to boot: memory, vIOMMU, bridges, ncdma devices, kernel.

    A TOPOLOGY is the name of a shipped one (`dmalab topology list`) or a path to a .toml file;
    docs/topology.md describes the format.
    """


@command.command("list")
@output_options("Print a JSON list instead of a table.")
def list_(as_json: bool, output: Path | None) -> None:
    """The topologies that come with dmalab."""
    rows = [(name, load_topology(name).description) for name in shipped_topologies()]
    if as_json:
        emit_json([{"name": n, "description": d} for n, d in rows], output)
        return
    width = max(len(n) for n, _ in rows)
    emit("\n".join(f"{name:<{width}}  {description}" for name, description in rows), output)


@command.command("check")
@click.argument("topology", shell_complete=complete_topology)
@click.option(
    "--argv",
    "show_argv",
    is_flag=True,
    help="Also print the QEMU command line (kernel and initrd shown as placeholders).",
)
def check(topology: str, show_argv: bool) -> None:
    """Validate TOPOLOGY; exit 2 with one line naming file, field and problem if it is wrong."""
    topo = load_topology(topology)
    click.echo(
        f"{topo.path}: ok: {len(topo.devices)} ncdma, iommu {topo.iommu_kind}, "
        f"{topo.machine.memory_mib} MiB, accel {topo.machine.accel}"
    )
    if show_argv:
        boot = Boot(Path("KERNEL"), Path("INITRD"), "CMDLINE")
        accel = "kvm" if topo.machine.accel == "kvm" else "tcg"
        click.echo(shlex.join(qemu_argv(topo, boot, accel=accel, ram_fd=3)))
