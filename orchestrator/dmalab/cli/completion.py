"""Shell completion of option values (click's `_DMALAB_COMPLETE`, docs/cli.md): what exists to
choose from, looked up when the shell asks."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem


def complete_topology(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem | str]:
    """Shipped topology names, and .toml files and folders for a path."""
    from dmalab.machine.topology import shipped_topologies

    names: list[CompletionItem | str] = [
        n for n in shipped_topologies() if n.startswith(incomplete)
    ]
    return [*names, CompletionItem(incomplete, type="file")]


def complete_policy(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem | str]:
    from dmalab.scenarios.api import POLICIES

    return [p for p in POLICIES if p.startswith(incomplete)]
