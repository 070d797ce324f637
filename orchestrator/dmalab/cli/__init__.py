"""The `dmalab` command: one group, one small module per command group.

Every error is one line on stderr, `dmalab: error: ...`, with the exit code README's table gives:
errors dmalab knows about (`DmalabError`) carry their own (errors.py), click's usage errors exit
2, an operating-system error (a full disk, a directory that cannot be written) exits 3. Ctrl-C,
SIGTERM and SIGHUP stop a command the same way (cli/signals.py) and exit 128 + the signal number;
so does an output whose reader went away (SIGPIPE, 141). No tracebacks for any of them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from dmalab.cli import signals
from dmalab.errors import EXIT_ENVIRONMENT, DmalabError


def error_line(message: str) -> str:
    """`dmalab: error: MESSAGE` on one line, however many lines MESSAGE has."""
    return f"dmalab: error: {' '.join(message.split())}"


def usage_message(exc: click.ClickException) -> str:
    """Click's message for a usage error in dmalab's form: `run: --accel: 'fast' is not one of
    auto, tcg, kvm (see dmalab run --help)`."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else getattr(exc, "dmalab_command_path", None)
    param = getattr(exc, "param", None)
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        assert ctx is not None and isinstance(ctx.command, click.Group)
        text = f"give a command: {', '.join(ctx.command.list_commands(ctx))}"
    elif isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        hint = "/".join(param.opts) if isinstance(param, click.Option) else None
        hint = hint or (param.human_readable_name if param is not None else exc.param_hint)
        text = exc.message[:1].lower() + exc.message[1:]
        if param is not None and isinstance(param.type, click.Choice):
            choices = ", ".join(map(str, param.type.choices))
            text = re.sub(r"is not one of .*", f"is not one of {choices}", text)
        text = f"{hint}: {text}" if hint else text
    else:
        text = exc.format_message()
    text = text.strip().rstrip(".").replace(". Did you mean", "; did you mean")
    text = text[:1].lower() + text[1:]
    if path is not None:
        where = path.split(" ", 1)
        if len(where) == 2:
            text = f"{where[1]}: {text}"
        if isinstance(exc, click.UsageError):
            text += f" (see {path} --help)"
    return text


class Group(click.Group):
    """A click group whose every error is one line and the exit code README's table gives
    (its command groups use it too, so that their usage errors name the command)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        # Click raises some usage errors of a command before its context exists (a missing
        # option value): remember which command was being parsed, to name it then.
        ctx.meta[_PARSING] = f"{ctx.command_path} {name}"
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if getattr(exc, "ctx", None) is None and not hasattr(exc, "dmalab_command_path"):
                exc.dmalab_command_path = ctx.meta.get(_PARSING, ctx.command_path)  # type: ignore[attr-defined]
            raise
        except DmalabError as exc:
            click.echo(error_line(str(exc) or type(exc).__name__), err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader of our output went away (`dmalab run | head`): stop as SIGPIPE would,
            # quietly (the run has cleaned up like an interrupted one).
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.stdout, sys.stderr):
                os.dup2(devnull, stream.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as exc:
            # Whatever the operating system refused (ENOSPC while building, EACCES...): the
            # environment, named by the path involved.
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(error_line(f"{where}{exc.strerror or exc}"), err=True)
            ctx.exit(EXIT_ENVIRONMENT)
        except KeyboardInterrupt:
            click.echo(signals.interrupted_line(), err=True)
            ctx.exit(signals.exit_code())

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        with signals.stop_like_ctrl_c():
            try:
                code = super().main(args, prog_name, complete_var, False, **extra)
            except click.ClickException as exc:
                _exit(error_line(usage_message(exc)), exc.exit_code)
            except click.Abort:
                _exit(signals.interrupted_line(), signals.exit_code())
        sys.exit(code if isinstance(code, int) else 0)


def _exit(line: str, code: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(code)


_PARSING = "dmalab.parsing"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmalab", prog_name="dmalab")
def main() -> None:
    """Emulated noncoherent DMA devices (ncdma) behind real vIOMMUs, and the checks that prove
    buffer sharing correct.

    Builds go to ~/.cache/dmalab ($XDG_CACHE_HOME/dmalab, or $DMALAB_CACHE). Exit codes: 0 ok,
    1 a check failed, 2 bad input, 3 environment or build problem, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM), 129 hung up (SIGHUP), 141 output closed (`| head`).
    """


def _register() -> None:
    from dmalab.cli import bench, build, doctor, fuzz, lava, report, run, shell, spec, topology, up

    for module in (bench, build, doctor, fuzz, report, run, spec, topology, up, shell, lava):
        main.add_command(module.command)


_register()
