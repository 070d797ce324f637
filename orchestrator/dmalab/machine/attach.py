"""Reaching a running machine from another process (`dmalab up`, then `dmalab shell --attach`).

`serve(vm)` listens on two unix sockets in the machine's run directory while the machine runs:

- `console.sock`: the serial console, both ways. A client first gets the last few KiB the
  console printed, then everything as it arrives; what it sends is typed on the console.
- `agent.sock`: the agent line language of `dmalab.machine.repl`. A client sends one line and
  gets the output followed by a line holding only `END_OF_REPLY` (a NUL byte).

The machine's own QMP monitor for people is `qmp.sock` beside them (`Vm(user_qmp=True)`). The
sockets live in the run directory, so they go away with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from dmalab.errors import EnvironmentProblem
from dmalab.machine import repl
from dmalab.machine.vm import Vm

CONSOLE_SOCKET = "console.sock"
AGENT_SOCKET = "agent.sock"
END_OF_REPLY = "\0"
CONSOLE_REPLAY = 4096


@contextlib.asynccontextmanager
async def serve(vm: Vm) -> AsyncIterator[None]:
    clients: set[asyncio.Task[None]] = set()

    def tracked(handler):  # type: ignore[no-untyped-def]
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            clients.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                clients.discard(task)
                writer.close()

        return run

    async def console(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert vm.console is not None
        stream = vm.console.stream()

        async def to_client() -> None:
            writer.write(vm.console.data[-CONSOLE_REPLAY:])
            await writer.drain()
            async for chunk in stream:
                writer.write(chunk)
                await writer.drain()

        out = asyncio.create_task(to_client())
        try:
            while data := await reader.read(4096):
                await vm.console_write(data)
        finally:
            out.cancel()
            with contextlib.suppress(BaseException):
                await out

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            output = await repl.execute(vm, line.decode(errors="replace"))
            writer.write(
                f"{output}\n{END_OF_REPLY}\n".encode() if output else f"{END_OF_REPLY}\n".encode()
            )
            await writer.drain()

    servers = []
    try:
        for handler, name in ((console, CONSOLE_SOCKET), (agent, AGENT_SOCKET)):
            path = vm.run_dir / name
            try:
                servers.append(await asyncio.start_unix_server(tracked(handler), path=path))
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot listen on {path}: {exc} (a unix socket path has at most 107 "
                    "bytes: set XDG_RUNTIME_DIR or TMPDIR to a shorter directory)"
                ) from None
        yield
    finally:
        for server in servers:
            server.close()
        for task in list(clients):
            task.cancel()
        for task in list(clients):
            with contextlib.suppress(BaseException):
                await task
        for name in (CONSOLE_SOCKET, AGENT_SOCKET):
            with contextlib.suppress(OSError):
                (vm.run_dir / name).unlink()


def sockets(run_dir: Path) -> tuple[Path, Path]:
    """(console socket, agent socket) of a machine served from `run_dir`."""
    return run_dir / CONSOLE_SOCKET, run_dir / AGENT_SOCKET
