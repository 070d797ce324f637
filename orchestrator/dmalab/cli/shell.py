"""`dmalab shell`: the guest's serial console (or agent ops) at the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import click

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.kernel_choice import KernelChoice
from dmalab.cli.completion import complete_topology
from dmalab.cli.options import kernel_options, own_image
from dmalab.cli.params import ACCEL, INPUT_DIR
from dmalab.errors import BadInput, EnvironmentProblem
from dmalab.machine import attach, launch, repl
from dmalab.machine.topology import load_topology
from dmalab.machine.vm import Vm

QUIT_KEY = b"\x1d"  # Ctrl-]
PROMPT = "agent> "


def progress(message: str) -> None:
    click.echo(f"shell: {message}", err=True)


@contextlib.contextmanager
def raw_terminal(fd: int):  # type: ignore[no-untyped-def]
    """The terminal in raw mode (every key goes to the guest), restored afterwards."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb", 0)
    )
    return reader


async def console(output: AsyncIterator[bytes], send: Callable[[bytes], Awaitable[None]]) -> None:
    """Relay the console to stdout and stdin to the console until Ctrl-] (or the console ends)."""
    out = sys.stdout.buffer
    click.echo("console: Ctrl-] quits", err=True)

    async def show() -> None:
        async for chunk in output:
            out.write(chunk)
            out.flush()

    stdin = await _stdin()

    async def type_keys() -> None:
        while data := await stdin.read(1024):
            quit_at = data.find(QUIT_KEY)
            if quit_at >= 0:
                if quit_at:
                    await send(data[:quit_at])
                return
            await send(data)

    with raw_terminal(0):
        tasks = [asyncio.create_task(show()), asyncio.create_task(type_keys())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    click.echo("\r\nconsole: closed", err=True)


async def agent_repl(run_line: Callable[[str], Awaitable[str]]) -> None:
    """Read agent ops line by line (`help` lists them) until end of input or `quit`."""
    stdin = await _stdin()
    click.echo("agent ops: help lists them; quit or Ctrl-D ends", err=True)
    while True:
        click.echo(PROMPT, nl=False)
        line = (await stdin.readline()).decode(errors="replace")
        if not line or line.strip() in ("quit", "exit"):
            click.echo()
            return
        output = await run_line(line)
        if output:
            click.echo(output)


async def attached(run_dir: Path, agent: bool) -> None:
    console_sock, agent_sock = attach.sockets(run_dir)
    path = agent_sock if agent else console_sock
    if not path.is_socket():
        raise BadInput(f"{run_dir}: not the run directory of a `dmalab up` (no {path.name})")
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        raise EnvironmentProblem(
            f"{run_dir}: no machine to attach to ({exc}); is `dmalab up` running?"
        ) from None
    try:
        if agent:

            async def run_line(line: str) -> str:
                writer.write(line.rstrip("\n").encode() + b"\n")
                await writer.drain()
                lines = []
                while (reply := await reader.readline()) and reply != b"\0\n":
                    lines.append(reply.decode(errors="replace"))
                if not reply:
                    raise EnvironmentProblem("the machine went away")
                return "".join(lines).rstrip("\n")

            await agent_repl(run_line)
        else:

            async def output() -> AsyncIterator[bytes]:
                while chunk := await reader.read(65536):
                    yield chunk

            async def send(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            await console(output(), send)
    finally:
        writer.close()


async def booted(
    topology: str, accel: str | None, agent: bool, image: ImageBuild | None = None
) -> None:
    async with launch.boot(
        topology, accel=accel, progress=progress, name="shell", image=image
    ) as vm:
        progress(f"{vm.name} is up ({vm.accel}, booted in {vm.boot_seconds:.1f} s)")
        if agent:
            await agent_repl(lambda line: repl.execute(vm, line))
        else:
            await console(_console_from(vm), vm.console_write)


async def _console_from(vm: Vm) -> AsyncIterator[bytes]:
    assert vm.console is not None
    stream = vm.console.stream()
    await vm.console_write(b"\n")  # a fresh prompt
    async for chunk in stream:
        yield chunk


@click.command("shell", short_help="The guest console (or agent ops) at the terminal.")
@click.argument("topology", required=False, shell_complete=complete_topology)
@click.option(
    "--attach",
    "run_dir",
    type=INPUT_DIR,
    help="Attach to the machine `dmalab up` runs from RUN_DIR instead of booting one.",
)
@click.option(
    "--agent",
    is_flag=True,
    help="Agent ops (hello, devices, stats DEV, buf-create ...) instead of the console.",
)
@click.option(
    "--accel",
    type=ACCEL,
    help="Override the topology's accelerator.",
)
@kernel_options
def command(
    topology: str | None,
    run_dir: Path | None,
    agent: bool,
    accel: str | None,
    kernel: KernelChoice | None,
    modules: Path | None,
) -> None:
    """Boot TOPOLOGY and open its serial console in raw mode (Ctrl-] quits and shuts it down),
    or with --attach RUN_DIR open the console of a machine `dmalab up` keeps running (Ctrl-]
    only detaches).

    With --agent, a prompt of guest agent ops instead; `help` lists them:
    hello, devices, stats DEV, buf-create KIND SIZE [DEV], buf-free BUF,
    buf-pages BUF [FIRST [COUNT]], read BUF OFFSET LEN, write-pattern BUF OFFSET LEN SEED.
    """
    if (topology is None) == (run_dir is None):
        raise BadInput("give a TOPOLOGY to boot or --attach RUN_DIR, not both or neither")
    if run_dir is not None:
        if kernel is not None or modules is not None:
            raise BadInput("--kernel/--modules: only when booting a TOPOLOGY, not with --attach")
        asyncio.run(attached(run_dir, agent))
    else:
        assert topology is not None
        arch = load_topology(topology).arch  # a bad topology fails before an image is built
        asyncio.run(booted(topology, accel, agent, own_image(kernel, modules, arch)))
