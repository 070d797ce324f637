"""`dmalab spec`: files generated from the specifications: the C headers from
orchestrator/dmalab/spec/, and the JSON Schemas of topology files, scenario files and
results.json from the code that reads and writes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dmalab.artifacts.cache import repo_root
from dmalab.cli import Group
from dmalab.errors import CheckFailed
from dmalab.spec import agent_cheader, cheader

#: (committed file, generator, what it is made from); paths are looked up when used.
Generated = tuple[tuple[Callable[[], Path], Callable[[], str], str], ...]


def header_path() -> Path:
    """The committed ncdma C header, qemu-devices/ncdma-hw.h."""
    return repo_root() / "qemu-devices" / cheader.HEADER_NAME


def agent_header_path() -> Path:
    """The committed agent protocol header, guest-tests/agent/agent-proto.h."""
    return repo_root() / "guest-tests" / "agent" / agent_cheader.HEADER_NAME


HEADERS: Generated = (
    (lambda: header_path(), cheader.generate, "orchestrator/dmalab/spec/ncdma.py"),
    (lambda: agent_header_path(), agent_cheader.generate, "orchestrator/dmalab/spec/agent.py"),
)


def schema_path(name: str) -> Path:
    """A committed JSON Schema, docs/schemas/NAME.schema.json."""
    return repo_root() / "docs" / "schemas" / f"{name}.schema.json"


def _json(make: Callable[[], dict[str, Any]]) -> Callable[[], str]:
    def generate() -> str:
        return json.dumps(make(), indent=2) + "\n"

    return generate


def _schemas() -> Generated:
    # Imported when asked for: the readers they come from are heavier than the headers.
    from dmalab.machine import topology_schema
    from dmalab.scenarios import results_schema, scenario_schema

    return (
        (lambda: schema_path("topology"), _json(topology_schema.schema),
         "orchestrator/dmalab/machine/topology.py"),
        (lambda: schema_path("scenario-file"), _json(scenario_schema.schema),
         "orchestrator/dmalab/scenarios/declarative.py"),
        (lambda: schema_path("results"), _json(results_schema.schema),
         "orchestrator/dmalab/scenarios/results.py"),
    )  # fmt: skip


@click.group("spec", cls=Group, short_help="Files generated from the specifications.")
def command() -> None:
    """Files generated from the specifications: C headers from the construct specifications
    (orchestrator/dmalab/spec/: the ncdma hardware interface and the guest agent protocol), and
    JSON Schemas from the code that reads topology and scenario files and writes results.json."""


def _write_or_check(files: Generated, check: bool, command: str) -> None:
    for where, generate, source in files:
        path = where()
        text = generate()
        if check:
            if not path.exists() or path.read_text() != text:
                raise CheckFailed(
                    f"{path} differs from {source}: run `dmalab spec {command}` and commit the "
                    "result"
                )
            click.echo(f"{path} is up to date")
        elif path.exists() and path.read_text() == text:
            click.echo(f"unchanged: {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            click.echo(f"wrote {path}")


@command.command("header", short_help="Write (or --check) the generated C headers.")
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 if a committed header differs from its specification.",
)
def header(check: bool) -> None:
    """Write qemu-devices/ncdma-hw.h (shared by the QEMU device and the guest driver) and
    guest-tests/agent/agent-proto.h (the guest agent's protocol)."""
    _write_or_check(HEADERS, check, "header")


@command.command("schema", short_help="Write (or --check) the generated JSON Schemas.")
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 if a committed schema differs from the code it comes from.",
)
def schema(check: bool) -> None:
    """Write docs/schemas/topology.schema.json, scenario-file.schema.json and
    results.schema.json (docs/schemas.md)."""
    _write_or_check(_schemas(), check, "schema")
