"""Options several commands share, so that each means the same everywhere.

- `--json` / `--output FILE`: a command's result is text on stdout by default, JSON with
  `--json`, and either one goes into FILE instead of stdout with `--output FILE`. Progress and
  diagnostics never go there: they go to stderr.
- `--kernel` / `--modules`: the guest runs another kernel, Debian's of a series or the user's own
  (an image is built around it); `dmalab run` takes several.
- `--shard I/N`: part I of N of a command's run list (dmalab.selection, docs/cli.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dmalab.cli.params import INPUT_DIR, OUTPUT_FILE
from dmalab.errors import BadInput
from dmalab.selection import Shard

if TYPE_CHECKING:
    from dmalab.artifacts.image import ImageBuild
    from dmalab.artifacts.kernel_choice import KernelChoice

F = TypeVar("F", bound=Callable[..., Any])


def output_options(json_help: str) -> Callable[[F], F]:
    """`--json` (described by `json_help`) and `--output FILE`, as `as_json` and `output`."""

    def decorate(f: F) -> F:
        f = click.option(
            "--output", type=OUTPUT_FILE, metavar="FILE",
            help="Write the result (the JSON with --json) to FILE instead of stdout.",
        )(f)  # fmt: skip
        return click.option("--json", "as_json", is_flag=True, help=json_help)(f)

    return decorate


def emit(text: str, output: Path | None) -> None:
    """`text` (a command's whole result) to stdout, or to `output`."""
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n")
    except OSError as exc:
        raise BadInput(f"--output: {output}: cannot write: {exc.strerror or exc}") from None


def emit_json(data: Any, output: Path | None) -> None:
    emit(json.dumps(data, indent=2), output)


KERNEL_HELP = (
    "Boot this kernel instead of the default image's or the topology's: debian:SERIES, the "
    "newest Debian package of a series ({series}; plain debian is {default}), or your own "
    "kernel file (x86: a bzImage or vmlinux with CONFIG_PVH=y; arm64: an Image, gzip'd or not). "
    "A guest image is built around it (cached)."
)


def kernel_options(f: F | None = None, *, repeatable: bool = False) -> Any:
    """`--kernel` and `--modules`, as `kernel` (a KernelChoice, or a tuple of them when
    `repeatable`) and `modules`."""
    from dmalab.artifacts.debian_kernel import DEFAULT_SERIES, SERIES

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from dmalab.artifacts.kernel_choice import parse_kernel

        try:
            if repeatable:
                return tuple(parse_kernel(v) for v in value)
            return None if value is None else parse_kernel(value)
        except BadInput as exc:  # a usage error, named after the command as click's are
            raise click.BadParameter(str(exc).removeprefix("--kernel: ")) from None

    help_text = KERNEL_HELP.format(series=", ".join(SERIES), default=f"debian:{DEFAULT_SERIES}")
    if repeatable:
        help_text += " Repeat it to run on several kernels: the kernel is then an axis of the run."

    def decorate(f: F) -> F:
        f = click.option(
            "--modules", type=INPUT_DIR, metavar="DIR",
            help="Your kernel's lib/modules/<release> tree (its build/ gives the headers for "
            "ncdma.ko). Only with a --kernel FILE.",
        )(f)  # fmt: skip
        return click.option(
            "--kernel", multiple=repeatable, metavar="debian:SERIES|FILE", callback=parse,
            help=help_text,
        )(f)  # fmt: skip

    return decorate(f) if f is not None else decorate


def own_image(
    kernel: KernelChoice | None, modules: Path | None, arch: str = "x86_64"
) -> ImageBuild | None:
    """The `arch` guest image around `--kernel` (built unless cached), or None without it."""
    if kernel is None:
        if modules is not None:
            raise BadInput("--modules: give --kernel too (the kernel the modules belong to)")
        return None
    return kernel.with_modules(modules).image(arch)


def shard_option(what: str, note: str) -> Callable[[F], F]:
    """`--shard I/N` over `what` (the run list, as the help names it), as `shard`: a Shard;
    `note` ends the help."""

    def parse(ctx: click.Context, param: click.Parameter, text: str | None) -> Shard | None:
        return None if text is None else Shard.parse(text)

    return click.option(
        "--shard", metavar="I/N", callback=parse,
        help=f"Run only part I of N of {what}: N disjoint parts that together are the whole "
        f"run (docs/cli.md). {note}",
    )  # fmt: skip
