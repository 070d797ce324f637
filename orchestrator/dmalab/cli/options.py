"""Options several commands share, so that each means the same everywhere.

- `--json` / `--output FILE`: a command's result is text on stdout by default, JSON with
  `--json`, and either one goes into FILE instead of stdout with `--output FILE`. Progress and
  diagnostics never go there: they go to stderr.
- `--kernel` / `--modules`: the guest runs the user's own kernel (an image is built around it).
- `--shard I/N`: part I of N of a command's run list (dmalab.selection, docs/cli.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dmalab.cli.params import INPUT_DIR, INPUT_FILE, OUTPUT_FILE
from dmalab.errors import BadInput
from dmalab.selection import Shard

if TYPE_CHECKING:
    from dmalab.artifacts.image import ImageBuild

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


def kernel_options(f: F) -> F:
    """`--kernel` and `--modules`, as `kernel` and `modules`."""
    f = click.option(
        "--modules", type=INPUT_DIR, metavar="DIR",
        help="Your kernel's lib/modules/<release> tree (its build/ gives the headers for "
        "ncdma.ko). Only with --kernel.",
    )(f)  # fmt: skip
    return click.option(
        "--kernel", type=INPUT_FILE, metavar="FILE",
        help="Boot your own kernel (x86: a bzImage or vmlinux with CONFIG_PVH=y; arm64: an "
        "Image, gzip'd or not) instead of Debian's or the topology's: a guest image is built "
        "around it (cached).",
    )(f)  # fmt: skip


def own_image(kernel: Path | None, modules: Path | None, arch: str = "x86_64") -> ImageBuild | None:
    """The `arch` guest image around `--kernel` (built unless cached), or None without it."""
    if kernel is None:
        if modules is not None:
            raise BadInput("--modules: give --kernel too (the kernel the modules belong to)")
        return None
    from dmalab.artifacts.image import ensure_image

    return ensure_image(kernel=kernel, modules=modules, arch=arch)


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
