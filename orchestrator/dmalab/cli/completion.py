"""Shell completion of option values (click's `_DMALAB_COMPLETE`, docs/cli.md): what exists to
choose from, looked up when the shell asks."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem


def complete_topology(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shipped topology names, and files for a path to a .toml file."""
    from dmalab.machine.topology import shipped_topologies

    names = [CompletionItem(n) for n in shipped_topologies() if n.startswith(incomplete)]
    return [*names, CompletionItem(incomplete, type="file")]


def complete_policy(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    from dmalab.scenarios.api import POLICIES

    return [CompletionItem(p) for p in POLICIES if p.startswith(incomplete)]
