"""Option types shared by the commands, checked while the command line is parsed, so that a bad
value is a usage error (one line, exit 2) before anything is built or booted."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

#: Accelerators a command line may ask for ("auto" probes KVM and falls back to TCG).
ACCEL = click.Choice(["auto", "tcg", "kvm"])


class Output(click.Path):
    """A directory (`directory=True`) or file the command writes at its end: checked at once
    by writing into it, so that a run does not go for an hour and then fail to save."""

    def __init__(self, *, directory: bool) -> None:
        super().__init__(file_okay=not directory, dir_okay=directory, path_type=Path)
        self.directory = directory

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path: Path = super().convert(value, param, ctx)
        where = path if self.directory else path.parent
        try:
            where.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=where):
                pass
        except OSError as exc:
            self.fail(f"{where}: cannot write there: {exc.strerror or exc}", param, ctx)
        return path


OUTPUT_DIR = Output(directory=True)
OUTPUT_FILE = Output(directory=False)
#: A file the command reads.
INPUT_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
#: A directory the command reads.
INPUT_DIR = click.Path(exists=True, file_okay=False, readable=True, path_type=Path)
