"""One QEMU process in a private run directory, with its QMP monitor connected.

`QemuProcess` is an async context manager. On entry it makes a run directory (mode 0700), starts
QEMU in its own process group with stdout and stderr in `qemu.log`, and connects a
`qemu.qmp.QMPClient` whose events are appended to `qmp-events.jsonl`. On exit it asks QEMU to
`quit`, escalates to SIGTERM and then SIGKILL for the whole process group, and waits for the exit,
whatever happened in the body (exception, cancellation, QEMU dying on its own).

Every socket to QEMU is one end of a `socketpair()` handed over as `-chardev socket,fd=N`, so
there is no path to wait for, no connect retry loop and no stale socket file: QEMU holds its end
before it starts, and its exit closes the connection.

After a clean run the run directory is removed, and so it is after an interruption (the body
was cancelled or got KeyboardInterrupt: someone stopped the run, QEMU did not fail) unless the
caller gave an artifacts directory; then it is moved there and a warning says where. A run
failed when the body raised any other exception, QEMU exited before it was asked to (see
`wait_exit` for exits that are expected), or it needed a signal to exit; then the run directory
is kept (or moved into the caller's artifacts directory) and the error says where: `QemuDied`
names it in its message, any other exception of the body gets a note (PEP 678). `QemuDied`
replaces a body exception that QEMU's death caused.

QEMU dies with the process that started it, even when that one is SIGKILLed and runs no clean-up
(PR_SET_PDEATHSIG). The run directory left behind then holds `owner` (pid and start time of the
process that made it); the next QemuProcess removes such directories whose owner is gone. A run
directory kept on purpose has no `owner`, so it stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from qemu.qmp import EventListener, ExecInterruptedError, QMPClient

from dmalab.errors import CheckFailed, EnvironmentProblem

log = logging.getLogger(__name__)

QEMU_LOG = "qemu.log"
EVENTS_LOG = "qmp-events.jsonl"
USER_QMP_SOCKET = "qmp.sock"
OWNER_FILE = "owner"
RUN_DIR_PREFIX = "dmalab-"
_ARTIFACT_FILES = f"{QEMU_LOG}, {EVENTS_LOG}"
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class QemuStartFailed(EnvironmentProblem):
    """QEMU exited or did not answer on QMP while starting (bad option, missing firmware...)."""


class QemuDied(CheckFailed):
    """QEMU exited without being asked to, or did not exit cleanly when asked."""


def runtime_base() -> Path:
    """Where run directories go: `$XDG_RUNTIME_DIR` when usable, else the system temp dir."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg)
    return Path(tempfile.gettempdir())


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, names it uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid, started = (run_dir / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return True  # not ours to judge: kept on purpose, or from an older dmalab
    return _start_time(int(pid)) == started


def remove_stale_run_dirs(base: Path) -> list[Path]:
    """Remove the run directories under `base` whose owner process is gone (it was killed
    before it could clean up); the ones removed."""
    removed = []
    for run_dir in base.glob(f"{RUN_DIR_PREFIX}*"):
        if run_dir.is_dir() and not run_dir.is_symlink() and not _owner_alive(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


def _die_with_parent(parent: int) -> None:
    """In the child before exec: be SIGKILLed when the parent dies, even by SIGKILL."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _stopped(exc: BaseException | None) -> bool:
    """Someone stopped the run rather than it failing: a cancellation or a signal, or the reader
    of our output went away (`dmalab run | head`)."""
    return exc is not None and (not isinstance(exc, Exception) or isinstance(exc, BrokenPipeError))


def log_tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log file, for error messages (empty if there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class QemuProcess:
    """A running QEMU: `qmp` (connected QMPClient), `pid`, `run_dir`, `channel(name)`.

    `argv` is the whole command line except the monitor (added here). `channels` names extra
    socket chardevs to create (`-chardev socket,id=NAME,fd=N`); refer to them in `argv` by id,
    e.g. `-qtest chardev:qtest`, and get our end with `channel(NAME)` once started.
    `artifacts_dir`: on failure the run directory is moved there instead of kept in place.
    `pass_fds`: more file descriptors QEMU inherits (e.g. a memfd for guest RAM); the caller
    keeps and closes its own copies.
    `user_qmp`: a second QMP monitor on the unix socket `qmp.sock` in the run directory, for
    people and other programs (`qmp-shell`, `socat`); ours stays private.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "qemu",
        channels: Sequence[str] = (),
        artifacts_dir: Path | None = None,
        start_timeout: float = 30.0,
        quit_timeout: float = 10.0,
        term_timeout: float = 5.0,
        pass_fds: Sequence[int] = (),
        user_qmp: bool = False,
    ) -> None:
        if "qmp" in channels:
            raise ValueError("the channel name 'qmp' is taken by the monitor")
        self.name = name
        self._argv = list(argv)
        self._channel_names = list(channels)
        self._artifacts_dir = artifacts_dir
        self._start_timeout = start_timeout
        self._quit_timeout = quit_timeout
        self._term_timeout = term_timeout
        self._pass_fds = list(pass_fds)
        self._user_qmp = user_qmp

        self.run_dir: Path | None = None
        self.qmp = QMPClient(name)
        self._proc: asyncio.subprocess.Process | None = None
        self._channels: dict[str, socket.socket] = {}
        self._events_task: asyncio.Task[None] | None = None
        self._exit_expected = False
        self._signalled = False  # we had to signal QEMU to make it exit

    # ------------------------------------------------------------------------------------------
    # What the body uses

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("QEMU is not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def log_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / QEMU_LOG

    @property
    def events_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / EVENTS_LOG

    @property
    def user_qmp_path(self) -> Path | None:
        """The second QMP monitor's socket (`user_qmp=True`), else None."""
        if not self._user_qmp or self.run_dir is None:
            return None
        return self.run_dir / USER_QMP_SOCKET

    async def exited(self) -> int:
        """Wait until QEMU exits, however that happens (an unasked exit stays a failure)."""
        assert self._proc is not None
        return await self._proc.wait()

    def channel(self, name: str) -> socket.socket:
        """Our end of the socket chardev `name` (the caller owns it from here on)."""
        return self._channels.pop(name)

    async def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit on its own (e.g. guest poweroff); such an exit is not a failure."""
        assert self._proc is not None
        self._exit_expected = True
        return await asyncio.wait_for(self._proc.wait(), timeout)

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    async def __aenter__(self) -> Self:
        base = runtime_base()
        remove_stale_run_dirs(base)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{self.name}-", dir=base))
        (self.run_dir / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        try:
            await self._start()
        except BaseException as exc:
            self._kill_group(signal.SIGKILL)
            if self._proc is not None:
                with contextlib.suppress(Exception, TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), self._term_timeout)
            await self._disconnect()
            if not isinstance(exc, Exception):
                self._interrupted()
                raise
            where = self._keep_run_dir()
            tail = log_tail(where / QEMU_LOG)
            raise QemuStartFailed(
                f"QEMU {self.name} did not start ({exc}): it {describe_status(self.returncode)}; "
                f"run directory kept at {where} ({_ARTIFACT_FILES})"
                + (f"; its log ends:\n{tail}" if tail else "")
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        died_unasked = self.returncode is not None and not self._exit_expected
        try:
            clean = await self._stop()
            await self._disconnect()
        except BaseException as err:
            # Interrupted while stopping (cancelled again): never leave QEMU or its files behind.
            self._kill_group(signal.SIGKILL)
            self._release()
            if isinstance(err, Exception):
                err.add_note(self._kept_note(self._keep_run_dir()))
            else:
                self._interrupted()
            raise
        self._kill_group(signal.SIGKILL)  # anything QEMU left in its group
        self._release()
        assert self.run_dir is not None and self._proc is not None

        if exc is None and clean and not died_unasked:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        if clean and not died_unasked and _stopped(exc):
            self._interrupted()
            return  # the cancellation propagates
        where = self._keep_run_dir()
        if clean and not died_unasked:
            assert exc is not None
            exc.add_note(self._kept_note(where))
            return  # the body's exception propagates
        tail = log_tail(where / QEMU_LOG)
        failure = QemuDied(
            f"QEMU {self.name} (pid {self._proc.pid}) {describe_status(self.returncode)}"
            + (
                " while in use"
                if died_unasked
                else " after it ignored quit"
                if self._signalled
                else ""
            )
            + f"; run directory kept at {where} ({_ARTIFACT_FILES})"
            + (f"; its log ends:\n{tail}" if tail else "")
        )
        if exc is None:
            raise failure
        if isinstance(exc, Exception):
            raise failure from exc  # QEMU's death is the root cause of the body's error
        exc.add_note(str(failure))  # cancellation and the like keep propagating as they are

    async def _start(self) -> None:
        assert self.run_dir is not None
        theirs: list[socket.socket] = []
        argv = list(self._argv)
        for name in ["qmp", *self._channel_names]:
            ours, their_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._channels[name] = ours
            theirs.append(their_end)
            argv += ["-chardev", f"socket,id={name},fd={their_end.fileno()}"]
        argv += ["-mon", "chardev=qmp,mode=control"]
        if self.user_qmp_path is not None:
            argv += [
                "-chardev", f"socket,id=user-qmp,path={self.user_qmp_path},server=on,wait=off",
                "-mon", "chardev=user-qmp,mode=control",
            ]  # fmt: skip
        (self.run_dir / "argv.json").write_text(json.dumps(argv, indent=1) + "\n")
        (self.run_dir / EVENTS_LOG).touch()

        try:
            with (self.run_dir / QEMU_LOG).open("wb") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=[s.fileno() for s in theirs] + self._pass_fds,
                    process_group=0,
                    preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                )
        except OSError as exc:
            raise QemuStartFailed(f"cannot run {argv[0]}: {exc}") from exc
        finally:
            for s in theirs:
                s.close()  # QEMU holds its own copy; ours must go so its exit reads as EOF
        log.debug("started %s: pid %d, run directory %s", self.name, self._proc.pid, self.run_dir)

        listener = EventListener()
        self.qmp.register_listener(listener)
        self._events_task = asyncio.create_task(self._record_events(listener))
        try:
            await asyncio.wait_for(self.qmp.connect(self._channels.pop("qmp")), self._start_timeout)
        except TimeoutError as exc:
            raise QemuStartFailed(f"no QMP greeting within {self._start_timeout} s") from exc

    async def _record_events(self, listener: EventListener) -> None:
        assert self.run_dir is not None
        with (self.run_dir / EVENTS_LOG).open("a") as f:
            while True:
                event = await listener.get()
                record = {"received": time.time(), **json.loads(bytes(event))}
                f.write(json.dumps(record) + "\n")
                f.flush()

    async def _stop(self) -> bool:
        """Make QEMU exit and reap it; True when it exited with status 0 without signals."""
        proc = self._proc
        if proc is None:
            return False
        if proc.returncode is None:
            grace = self._quit_timeout
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), self._quit_timeout)
            except (ExecInterruptedError, EOFError, ConnectionError):
                pass  # QEMU may close the monitor before the reply: it is on its way out
            except TimeoutError:
                grace = 0.0  # stuck: go straight to signals
            except Exception as exc:
                log.debug("%s: quit failed: %r", self.name, exc)
                grace = 1.0  # the monitor is gone: QEMU is probably exiting already
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        if proc.returncode is not None:
            return proc.returncode == 0
        log.warning("%s (pid %d) did not quit: sending SIGTERM", self.name, proc.pid)
        self._signalled = True
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._term_timeout)
        except TimeoutError:
            log.warning("%s (pid %d) ignored SIGTERM: sending SIGKILL", self.name, proc.pid)
            self._kill_group(signal.SIGKILL)
            await proc.wait()
        return False

    def _kill_group(self, sig: signal.Signals) -> None:
        """Signal QEMU's process group (whatever QEMU started too); quiet if it is gone."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task

    def _release(self) -> None:
        """Close what we hold (sockets, the event recorder); needs no awaiting."""
        if self._events_task is not None:
            self._events_task.cancel()
        for s in self._channels.values():
            s.close()
        self._channels.clear()

    def _interrupted(self) -> None:
        """Someone stopped the run: nothing failed, so nothing is kept unless asked for."""
        assert self.run_dir is not None
        if self._artifacts_dir is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            log.warning("%s", self._kept_note(self._keep_run_dir()))

    def _keep_run_dir(self) -> Path:
        assert self.run_dir is not None
        (self.run_dir / OWNER_FILE).unlink(missing_ok=True)  # kept on purpose: not stale
        if self._artifacts_dir is None:
            return self.run_dir
        target = self._artifacts_dir / self.run_dir.name
        self._artifacts_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(self.run_dir, target)
        return target

    def _kept_note(self, where: Path) -> str:
        return (
            f"QEMU {self.name} {describe_status(self.returncode)}; "
            f"run directory kept at {where} ({_ARTIFACT_FILES})"
        )
