"""`dmalab spec`: C headers generated from the specifications in orchestrator/dmalab/spec/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from dmalab.artifacts.cache import repo_root
from dmalab.cli import Group
from dmalab.errors import CheckFailed
from dmalab.spec import agent_cheader, cheader


def header_path() -> Path:
    """The committed ncdma C header, qemu-devices/ncdma-hw.h."""
    return repo_root() / "qemu-devices" / cheader.HEADER_NAME


def agent_header_path() -> Path:
    """The committed agent protocol header, guest-tests/agent/agent-proto.h."""
    return repo_root() / "guest-tests" / "agent" / agent_cheader.HEADER_NAME


#: (committed header, generator, the specification it comes from); paths are looked up when used.
HEADERS: tuple[tuple[Callable[[], Path], Callable[[], str], str], ...] = (
    (lambda: header_path(), cheader.generate, "orchestrator/dmalab/spec/ncdma.py"),
    (lambda: agent_header_path(), agent_cheader.generate, "orchestrator/dmalab/spec/agent.py"),
)


@click.group("spec", cls=Group, short_help="C headers generated from the specifications.")
def command() -> None:
    """C headers generated from the construct specifications (orchestrator/dmalab/spec/): the
    ncdma hardware interface and the guest agent protocol."""


@command.command("header", short_help="Write (or --check) the generated C headers.")
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 if a committed header differs from its specification.",
)
def header(check: bool) -> None:
    """Write qemu-devices/ncdma-hw.h (shared by the QEMU device and the guest driver) and
    guest-tests/agent/agent-proto.h (the guest agent's protocol)."""
    for where, generate, source in HEADERS:
        path = where()
        text = generate()
        if check:
            if not path.exists() or path.read_text() != text:
                raise CheckFailed(
                    f"{path} differs from {source}: run `dmalab spec header` and commit the result"
                )
            click.echo(f"{path} is up to date")
        elif path.exists() and path.read_text() == text:
            click.echo(f"unchanged: {path}")
        else:
            path.write_text(text)
            click.echo(f"wrote {path}")
