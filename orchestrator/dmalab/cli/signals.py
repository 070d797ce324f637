"""SIGTERM and SIGHUP stop a command exactly as Ctrl-C does.

Nightly jobs are stopped by a timeout's SIGTERM, terminals close with SIGHUP; both must run the
same clean-up as Ctrl-C (every QEMU stopped, run directories removed). So their handler hands
the signal to whatever handles SIGINT at that moment: Python's (a KeyboardInterrupt) or
asyncio.run's (the main task is cancelled and its clean-up runs, then KeyboardInterrupt). The
first signal received decides the exit code, 128 + its number: 130 SIGINT, 143 SIGTERM,
129 SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_received: list[signal.Signals] = []


def _forward(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(signal.Signals(signum))
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        handler = signal.default_int_handler
    handler(signal.SIGINT, frame)


def received() -> signal.Signals:
    """The signal that stopped the command (SIGINT when none of ours came: Ctrl-C)."""
    return _received[0] if _received else signal.SIGINT


def interrupted_line() -> str:
    """What dmalab says when a signal stopped it: `dmalab: interrupted by SIGTERM`."""
    return f"dmalab: interrupted by {received().name}"


def exit_code() -> int:
    return 128 + received().value


@contextlib.contextmanager
def stop_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP act as SIGINT for the duration of the block.

    A shell starts background jobs with SIGINT ignored; a SIGINT sent to dmalab on purpose
    should still stop it, and asyncio.run only turns SIGINT into a cancellation when Python's
    own handler is installed, so that handler is put back for the block."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    _received.clear()
    if not callable(saved[signal.SIGINT]):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _forward)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def handled_by_loop(
    callback: Callable[[], object], signals: tuple[signal.Signals, ...]
) -> Iterator[None]:
    """While the block runs, `signals` call `callback` in the running event loop instead of
    stopping the command; the handlers from before come back afterwards (the loop's own
    removal would leave SIGTERM at its default, which kills without clean-up)."""
    loop = asyncio.get_running_loop()
    saved = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, saved[sig] if saved[sig] is not None else signal.SIG_DFL)
