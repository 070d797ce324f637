"""`dmalab up TOPOLOGY`: boot a machine and keep it up until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.kernel_choice import KernelChoice
from dmalab.cli import signals
from dmalab.cli.completion import complete_topology
from dmalab.cli.options import emit, kernel_options, output_options, own_image
from dmalab.cli.params import ACCEL
from dmalab.errors import CheckFailed
from dmalab.machine import attach, launch
from dmalab.machine.topology import load_topology
from dmalab.machine.vm import Vm

READY_LINE = "ready: Ctrl-C stops the machine"
SUMMARY_COUNTERS = (
    "desc_completed", "desc_errors", "bytes_read", "bytes_written",
    "cache_hits", "cache_misses", "iommu_map_events", "violations_logged",
)  # fmt: skip


def progress(message: str) -> None:
    click.echo(f"up: {message}", err=True)


async def endpoints(vm: Vm) -> dict[str, Any]:
    """Where to reach the running machine, and its devices with their counters."""
    console_sock, agent_sock = attach.sockets(vm.run_dir)
    devices = []
    for id, dev in vm.devices.items():
        devices.append({"id": id, "qom_path": dev.path, "counters": await dev.counters()})
    return {
        "name": vm.name,
        "pid": vm.process.pid if vm.process else None,
        "accel": vm.accel,
        "boot_seconds": round(vm.boot_seconds or 0.0, 2),
        "run_dir": str(vm.run_dir),
        "qmp": str(vm.process.user_qmp_path) if vm.process else None,
        "console_log": str(vm.run_dir / "console.log"),
        "console": str(console_sock),
        "agent": str(agent_sock),
        "devices": devices,
    }


def describe(info: dict[str, Any]) -> str:
    run = info["run_dir"]
    lines = [
        f"{info['name']}: up in {info['boot_seconds']} s ({info['accel']}, QEMU pid {info['pid']})",
        f"  run dir  {run}",
        f"  qmp      {info['qmp']}",
        f"             qmp-shell {info['qmp']}   or   socat - UNIX-CONNECT:{info['qmp']}",
        f"  console  dmalab shell --attach {run}   (log: {info['console_log']})",
        f"  agent    dmalab shell --attach {run} --agent",
        "  devices",
    ]
    for dev in info["devices"]:
        c = dev["counters"]
        summary = " ".join(f"{k}={c[k]}" for k in SUMMARY_COUNTERS if k in c)
        lines.append(f"    {dev['id']:<6} {dev['qom_path']:<26} {summary}")
    return "\n".join(lines)


async def until_stopped(vm: Vm, stop: asyncio.Event) -> str:
    """Wait for `stop` (Ctrl-C, SIGTERM) or the machine's end; what ended it."""
    assert vm.process is not None
    waits = {
        asyncio.create_task(stop.wait()): "stop",
        asyncio.create_task(vm.process.exited()): "exit",
        asyncio.create_task(vm.guarded(asyncio.Event().wait())): "failed",
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    for task in done:
        if waits[task] == "failed":
            task.result()  # raises GuestFailed
    return next(waits[t] for t in done)


async def run(
    topology: str,
    accel: str | None,
    as_json: bool,
    output: Path | None = None,
    image: ImageBuild | None = None,
) -> None:
    topo = load_topology(topology)
    vm = await launch.prepare(
        topo, accel=accel, progress=progress, user_qmp=True, name=f"up-{topo.name}", image=image
    )
    progress(
        f"booting {topo.name} ({topo.iommu_kind}, {len(topo.devices)} ncdma, accel {vm.accel})"
    )
    await vm.__aenter__()  # interrupted, it removes its run directory itself
    stop = asyncio.Event()
    # Once up, a stop signal is the normal way to end: shut down and exit 0.
    with signals.handled_by_loop(stop.set, (signal.SIGINT, *signals.STOP_SIGNALS)):
        await _serve(vm, stop, as_json, output)
    progress("stopped; nothing left behind")


async def _serve(vm: Vm, stop: asyncio.Event, as_json: bool, output: Path | None) -> None:
    try:
        async with attach.serve(vm):
            info = await endpoints(vm)
            emit(json.dumps(info) if as_json else describe(info), output)
            click.echo(READY_LINE, err=as_json or output is not None)
            sys.stdout.flush()
            why = await until_stopped(vm, stop)
        if why == "exit":
            assert vm.process is not None
            status = await vm.process.wait_exit(0)
            if status != 0:
                raise CheckFailed(f"{vm.name}: QEMU exited with status {status}")
            progress("the guest powered off")
        else:
            progress("stopping")
    except BaseException as exc:
        await vm.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await vm.__aexit__(None, None, None)


@click.command("up", short_help="Boot a topology and keep it up until Ctrl-C.")
@click.argument("topology", shell_complete=complete_topology)
@click.option(
    "--accel",
    type=ACCEL,
    help="Override the topology's accelerator.",
)
@kernel_options
@output_options("Print the endpoints as one JSON object (the ready line goes to stderr).")
def command(
    topology: str,
    accel: str | None,
    kernel: KernelChoice | None,
    modules: Path | None,
    as_json: bool,
    output: Path | None,
) -> None:
    """Boot TOPOLOGY (a shipped name or a .toml path) and keep it running.

    Prints where to reach it: the run directory, a QMP socket for qmp-shell or socat, the console
    log, `dmalab shell --attach RUN_DIR` for the console and `--agent` for agent ops, and each
    device's QOM path with a counters summary. Ctrl-C (or SIGTERM, SIGHUP) shuts it down and
    removes everything (exit 0; during the boot it exits 130, 143 or 129). A guest failure exits
    1 and keeps the run directory.
    """
    arch = load_topology(topology).arch  # a bad topology fails before an image is built
    image = own_image(kernel, modules, arch)
    asyncio.run(run(topology, accel, as_json, output, image))
