"""A booted guest: QEMU, its console, the guest agent, guest RAM and the ncdma devices.

`Vm` is an async context manager over `QemuProcess`. On entry it creates the guest RAM as a
shared memfd (`guestmem.SharedRam`), starts QEMU with two more socket channels, `console`
(recorded continuously to `console.log` in the run directory, and readable as a stream) and
`agent` (the virtio-serial port of `dmalab-agent`), and waits until the guest is ready: the agent
answers HELLO, or, for a guest without the agent, `DMALAB-READY` appears on the console.

While it runs, a watchdog turns guest failures into errors instead of hangs: "Kernel panic" on
the console, the QMP event `GUEST_PANICKED`, or a stop in the `internal-error` state (what
`KVM internal error` leaves behind). The failure closes the agent connection, so a request in
flight fails at once, and the `Vm` raises `GuestFailed` with the console's tail. Every wait has a
timeout (boot, agent requests, shutdown).

On exit QEMU is asked to `quit`, then signalled, and always reaped (`QemuProcess`). When the run
failed (the body raised, was cancelled, the guest failed or QEMU died), the ncdma devices'
counters, violations and transactions are fetched over QMP before QEMU goes away and written as
`ncdma-<id>.json` beside `console.log`, `qmp-events.jsonl` and `qemu.log` in the kept run
directory. The RAM memfd has no name in any file system and is closed on exit.

`Vm` takes a function from the RAM fd to a command line; `launch.boot(topology)` gives it the
topology's (`qemu_argv`), the one place a QEMU command line is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from qemu.qmp import EventListener

from dmalab.errors import CheckFailed
from dmalab.machine.agent import AgentClient, AgentConnectionLost, Hello
from dmalab.machine.devices import NcdmaQmp
from dmalab.machine.guestmem import MiB, PmemsaveMemory, SharedRam, ram_layout
from dmalab.machine.process import QemuDied, QemuProcess, log_tail
from dmalab.machine.topology import Topology

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

CONSOLE_LOG = "console.log"
READY_MARKER = "DMALAB-READY"
PANIC_PATTERNS = (re.compile(rb"Kernel panic - not syncing[^\n]*"),)
#: Run states that mean the guest cannot go on (`query-status`).
FATAL_STATES = {"internal-error", "guest-panicked", "io-error", "shutdown"}


class GuestFailed(CheckFailed):
    """The guest panicked, stopped on an internal error, or did not become ready in time."""


class BootTimeout(GuestFailed):
    """The guest was not ready within the boot timeout."""


class Console:
    """The guest console: appended to a file as it arrives, searchable, and streamable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = bytearray()
        self._file = path.open("ab")
        self._changed = asyncio.Event()
        self._queues: list[asyncio.Queue[bytes | None]] = []
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        self._file.write(chunk)
        self._file.flush()
        for q in self._queues:
            q.put_nowait(chunk)
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()
            for q in self._queues:
                q.put_nowait(None)
            self._changed.set()

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    def text(self) -> str:
        return self._data.decode(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text().replace("\r", "").splitlines()[-lines:])

    async def wait_for(
        self, pattern: str | bytes | re.Pattern[bytes], timeout: float, *, start: int = 0
    ) -> re.Match[bytes]:
        """The first match of `pattern` at or after byte `start` (raises TimeoutError)."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        async with asyncio.timeout(timeout):
            while True:
                match = regex.search(self._data, start)
                if match:
                    return match
                if self.closed:
                    raise EOFError("the console closed")
                await self._changed.wait()

    async def stream(self) -> AsyncIterator[bytes]:
        """Console bytes from now on, as they arrive, until the console closes."""
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queues.append(q)
        try:
            while (chunk := await q.get()) is not None:
                yield chunk
        finally:
            self._queues.remove(q)


class Vm:
    """One guest. `argv` maps the RAM memfd's fd (None without shared RAM) to the command line
    after `qemu_base` (binary and -L dirs)."""

    def __init__(
        self,
        qemu_base: Sequence[str],
        argv: Callable[[int | None], Sequence[str]],
        *,
        ram_mib: int = 512,
        shared_ram: bool = True,
        agent: bool = True,
        ready: str | None = None,
        ncdma: Sequence[str] = ("ncdma0",),
        name: str = "vm",
        boot_timeout: float = 60.0,
        agent_timeout: float = 30.0,
        quit_timeout: float = 5.0,
        artifacts_dir: Path | None = None,
        user_qmp: bool = False,
        topology: Topology | None = None,
        accel: str | None = None,
    ) -> None:
        self.name = name
        #: What this machine was built from, when it came from a topology (`launch.boot`).
        self.topology = topology
        self.accel = accel
        self._user_qmp = user_qmp
        self._qemu_base = list(qemu_base)
        self._argv = argv
        self.ram_mib = ram_mib
        self._shared_ram = shared_ram
        self._want_agent = agent
        self.ready_by = ready or ("agent" if agent else "marker")
        if self.ready_by not in ("agent", "marker", "none"):
            raise ValueError(f"ready={ready!r}: expected agent, marker or none")
        self.ncdma_ids = list(ncdma)
        self.boot_timeout = boot_timeout
        self.agent_timeout = agent_timeout
        self._quit_timeout = quit_timeout
        self._artifacts_dir = artifacts_dir

        self.ram: SharedRam | None = None
        self.process: QemuProcess | None = None
        self.console: Console | None = None
        self._agent: AgentClient | None = None
        self.hello: Hello | None = None
        self.devices: dict[str, NcdmaQmp] = {}
        self.boot_seconds: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._console_sock: socket.socket | None = None
        self._failure: GuestFailed | None = None
        self._failed = asyncio.Event()

    # -----------------------------------------------------------------------------------------
    # What the body uses

    @property
    def qmp(self) -> Any:
        assert self.process is not None
        return self.process.qmp

    @property
    def run_dir(self) -> Path:
        assert self.process is not None and self.process.run_dir is not None
        return self.process.run_dir

    @property
    def agent(self) -> AgentClient:
        if self._agent is None:
            raise CheckFailed(f"{self.name}: this machine has no guest agent")
        return self._agent

    @property
    def memory(self) -> SharedRam | PmemsaveMemory:
        """Guest RAM: the shared mapping, else `pmemsave` (read-only)."""
        return self.ram if self.ram is not None else PmemsaveMemory(self.qmp, self.run_dir)

    def device(self, id: str | None = None) -> NcdmaQmp:
        return self.devices[id or self.ncdma_ids[0]]

    async def console_write(self, data: bytes) -> None:
        """Type `data` on the serial console (the init keeps a shell there beside the agent)."""
        if self._console_sock is None:
            raise CheckFailed(f"{self.name}: the console is closed")
        await asyncio.get_running_loop().sock_sendall(self._console_sock, data)

    @property
    def failure(self) -> GuestFailed | None:
        return self._failure

    def check(self) -> None:
        """Raise the guest's failure, if it failed."""
        if self._failure is not None:
            raise self._failure

    async def guarded(self, awaitable: Any, timeout: float | None = None) -> Any:
        """Await `awaitable`, but raise `GuestFailed` as soon as the guest fails."""
        task = asyncio.ensure_future(awaitable)
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            done, _ = await asyncio.wait(
                {task, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            self.check()
            raise TimeoutError(f"{self.name}: no result within {timeout} s")
        finally:
            for t in (task, failed):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t

    async def wait_ready(self, timeout: float | None = None) -> float:
        """Wait for the guest to be ready (agent HELLO or the console marker); seconds taken."""
        timeout = self.boot_timeout if timeout is None else timeout
        start = time.perf_counter()
        try:
            if self.ready_by == "agent":
                self.hello = await self.guarded(self.agent.hello(), timeout)
            elif self.ready_by == "marker":
                assert self.console is not None
                await self.guarded(self.console.wait_for(READY_MARKER, timeout), timeout)
        except (TimeoutError, AgentConnectionLost) as exc:
            self.check()
            assert self.process is not None
            if self.process.returncode is not None:
                raise  # QemuProcess reports the death on exit
            raise BootTimeout(
                f"{self.name}: guest not ready ({self.ready_by}) within {timeout} s; "
                f"console ends:\n{self._console_tail()}"
            ) from exc
        return time.perf_counter() - start

    async def poweroff(self, timeout: float = 10.0) -> None:
        """Power the guest off (sysrq through the agent, else QMP quit) and wait for QEMU's exit."""
        assert self.process is not None
        if self._agent is not None:
            with contextlib.suppress(Exception):
                await self._agent.write_file("/proc/sysrq-trigger", "o")
        else:
            with contextlib.suppress(Exception):
                await self.qmp.execute("quit")
        await self.process.wait_exit(timeout)

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self._start()
            if self.ready_by != "none":
                self.boot_seconds = await self.wait_ready()
        except BaseException as exc:
            if await self._finish(type(exc), exc, exc.__traceback__):
                assert self._failure is not None
                raise self._failure from exc
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self._finish(exc_type, exc, tb, raise_failure=True)
        return False

    async def _start(self) -> None:
        if self._shared_ram:
            arch = self.topology.arch if self.topology else "x86_64"
            size = self.ram_mib * MiB
            self.ram = SharedRam(
                size, name=f"dmalab-{self.name}-ram", layout=ram_layout(arch, size)
            )
        ram_fd = self.ram.fd if self.ram is not None else None
        channels = ["console"] + (["agent"] if self._want_agent else [])
        process = QemuProcess(
            [*self._qemu_base, *self._argv(ram_fd)],
            name=self.name,
            channels=channels,
            artifacts_dir=self._artifacts_dir,
            quit_timeout=self._quit_timeout,
            pass_fds=[ram_fd] if ram_fd is not None else [],
            user_qmp=self._user_qmp,
        )
        # A process whose start failed has cleaned up after itself and says why: it is not
        # ours to stop (stopping it again would hide that reason).
        await process.__aenter__()
        self.process = process
        self.console = Console(self.run_dir / CONSOLE_LOG)
        self._console_sock = self.process.channel("console")
        self._tasks.append(asyncio.create_task(self._read_console(), name=f"{self.name}-console"))
        listener = EventListener()
        self.qmp.register_listener(listener)
        self._tasks.append(
            asyncio.create_task(self._watch_events(listener), name=f"{self.name}-events")
        )
        if self._want_agent:
            self._agent = await AgentClient.over_socket(
                self.process.channel("agent"), timeout=self.agent_timeout
            )
        self.devices = {i: NcdmaQmp(self.qmp, i) for i in self.ncdma_ids}

    async def _read_console(self) -> None:
        assert self._console_sock is not None and self.console is not None
        sock = self._console_sock
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        window = b""
        try:
            while True:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                self.console.feed(chunk)
                window = (window + chunk)[-4096:]
                for pattern in PANIC_PATTERNS:
                    match = pattern.search(window)
                    if match and self._failure is None:
                        # let the rest of the panic report arrive for the error message
                        await asyncio.sleep(0.2)
                        self._fail(f"guest kernel panic: {match.group().decode(errors='replace')}")
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.console.close()

    async def _watch_events(self, listener: EventListener) -> None:
        while True:
            event = await listener.get()
            name = event["event"]
            if name == "GUEST_PANICKED":
                self._fail(f"guest panicked (QMP GUEST_PANICKED {event.get('data')})")
            elif name == "STOP":
                try:
                    status = await asyncio.wait_for(self.qmp.execute("query-status"), 5)
                except Exception:
                    continue
                if status.get("status") in FATAL_STATES - {"shutdown"}:
                    self._fail(
                        f"guest stopped: run state {status['status']} "
                        f"(QEMU log: {log_tail(self.process.log_path, 3) if self.process else ''})"
                    )

    def _fail(self, what: str) -> None:
        if self._failure is not None:
            return
        self._failure = GuestFailed(f"{self.name}: {what}; console ends:\n{self._console_tail()}")
        self._failed.set()
        if self._agent is not None:
            asyncio.get_running_loop().create_task(self._agent.close())

    def _console_tail(self, lines: int = 20) -> str:
        return self.console.tail(lines) if self.console is not None else ""

    async def _save_device_artifacts(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            return
        for id, dev in self.devices.items():
            try:
                data = await asyncio.wait_for(dev.dump(), 5)
            except Exception as exc:
                data = {"id": id, "error": f"{type(exc).__name__}: {exc}"}
            (self.run_dir / f"ncdma-{id}.json").write_text(json.dumps(data, indent=1) + "\n")

    async def _finish(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        *,
        raise_failure: bool = False,
    ) -> bool:
        """Stop everything; True when the guest's failure should replace `exc`."""
        failure = self._failure
        try:
            if self.process is not None and self.process.run_dir is not None:
                if exc is not None or failure is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._save_device_artifacts())
                if self._agent is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._agent.close(), 2)
                for task in self._tasks:
                    task.cancel()
                for task in self._tasks:
                    with contextlib.suppress(BaseException):
                        await task
                self._tasks.clear()
                if self.console is not None:
                    self.console.close()
                passed = exc if exc is not None else failure
                try:
                    await self.process.__aexit__(
                        type(passed) if passed is not None else None,
                        passed,
                        passed.__traceback__ if passed is not None else None,
                    )
                except QemuDied as died:
                    if failure is None:
                        raise
                    failure.add_note(str(died))
        finally:
            if self._console_sock is not None:
                self._console_sock.close()
                self._console_sock = None
            if self.ram is not None:
                self.ram.close()
                self.ram = None
        replace = failure is not None and (exc is None or isinstance(exc, Exception))
        if replace and raise_failure:
            assert failure is not None
            if exc is None:
                raise failure
            raise failure from exc
        return replace
