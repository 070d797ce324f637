"""Progress of long builds on stderr: one updating line on a terminal, a line every ~10% in logs.

Builds report phases ("fetch", "configure", ...) and, for the long ones, steps done out of a total.
Nothing here decides what to build; it only tells the person (or the CI log) how far it got.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports `<what>: <phase> [N/M]` lines to a stream (stderr by default).

    On a terminal the step counter rewrites one line in place; otherwise (CI logs, files) a line is
    written when the phase starts and then about every 10% of its steps, so logs stay short.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else _isatty(self.stream)
        self._label = ""
        self._started = 0.0
        self._open_line = False
        self._last_decile = -1

    def phase(self, what: str, phase: str) -> None:
        """A new phase begins, e.g. phase("qemu", "configure")."""
        self._end_line()
        self._label = f"{what}: {phase}"
        self._started = time.monotonic()
        self._last_decile = -1
        self._write(f"{self._label} ...\n")

    def step(self, done: int, total: int) -> None:
        """done of total steps of the current phase are finished."""
        if total <= 0:
            return
        percent = min(100, done * 100 // total)
        text = f"{self._label} {done}/{total} ({percent}%)"
        if self.tty:
            self._write(f"\r\x1b[K{text}")
            self._open_line = True
            return
        decile = percent // 10
        if decile > self._last_decile:
            self._last_decile = decile
            self._write(f"{text}\n")

    def note(self, message: str) -> None:
        """A one-off remark (e.g. which version was chosen)."""
        self._end_line()
        self._write(f"{message}\n")

    def done(self, message: str | None = None) -> None:
        """The current phase ended; on a terminal, close the updating line."""
        self._end_line()
        if message:
            self._write(f"{message}\n")

    def _end_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class SilentProgress(Progress):
    """Reports nothing (library use, tests)."""

    def _write(self, text: str) -> None:
        pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
