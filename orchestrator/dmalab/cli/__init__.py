"""The `dmalab` command: one group, one small module per command group.

Errors dmalab knows about (`DmalabError`) become one line on stderr, `dmalab: error: ...`, and the
exit code the error class documents (errors.py); Ctrl-C exits 130. No tracebacks for either.
"""

from __future__ import annotations

from typing import Any

import click

from dmalab.errors import DmalabError

EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """A click group that reports DmalabError as one line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DmalabError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"dmalab: error: {message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("dmalab: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmalab", prog_name="dmalab")
def main() -> None:
    """Emulated noncoherent DMA devices (ncdma) behind real vIOMMUs, and the checks that prove
    buffer sharing correct.

    Builds go to ~/.cache/dmalab ($XDG_CACHE_HOME/dmalab, or $DMALAB_CACHE). Exit codes: 0 ok,
    1 a check failed, 2 bad input, 3 environment or build problem, 130 interrupted.
    """


def _register() -> None:
    from dmalab.cli import bench, build, doctor, fuzz, report, run, shell, spec, topology, up

    for module in (bench, build, doctor, fuzz, report, run, spec, topology, up, shell):
        main.add_command(module.command)


_register()
