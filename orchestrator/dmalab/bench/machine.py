"""`dmalab bench machine`: how fast the machine layer is (times in milliseconds, medians).

- counters: one `qom-get counters` of an ncdma over QMP (target <= 0.5 ms);
- memory: 64 MiB of guest RAM (guest paused, so the bytes hold still) checked against expected
  bytes through the shared mapping's zero-copy view, against `pmemsave` of the same 64 MiB to a
  file, read back and checked, in the same run (target: mapping >= 5x faster); a plain copy out
  of the mapping is reported beside it (on a machine with little memory bandwidth the copy
  itself dominates);
- restore: `snapshot-load` of a snapshot taken after boot until the agent answers again
  (target <= 300 ms);
- boot: a cold boot under TCG, from starting QEMU until the agent answers HELLO.

Every figure is measured on the q35 + intel-iommu + ncdma machine the tests use; with an arm64
image, cold boot, agent echo and snapshot restore are measured on virt + SMMUv3 + ncdma as well
(`aarch64_*`), in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.bench import target_lines
from dmalab.machine.compare_bytes import compare
from dmalab.machine.guestmem import MiB, PmemsaveMemory
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.snapshot import Snapshots
from dmalab.machine.topology import minimal_topology
from dmalab.machine.vm import Vm
from dmalab.provenance import machine_info, qemu_info

SCHEMA = "dmalab.bench.machine/1"
RAM_MIB = 512
READ_BYTES = 64 * MiB
READ_PA = 16 * MiB
TARGETS = {
    "counters_ms": ("<=", 0.5),
    "memory_speedup": (">=", 5.0),
    "restore_ms": ("<=", 300.0),
    "agent_echo_ms": ("<=", 1.0),
    "boot_ms": ("<=", 2500.0),
    "aarch64_boot_ms": ("<=", 3000.0),
    "aarch64_restore_ms": ("<=", 300.0),
}
#: The vIOMMU of the machine measured, per architecture.
IOMMU = {"x86_64": "intel-iommu", "aarch64": "smmuv3"}


def _vm(qemu: QemuBuild, image: ImageBuild, **kwargs: Any) -> Vm:
    iommu = IOMMU[image.arch]
    topology = minimal_topology("bench", arch=image.arch, iommu=iommu, memory_mib=RAM_MIB)
    boot = Boot(image.kernel, image.initramfs, image.cmdline_for(iommu))
    return Vm(
        qemu.base_argv(image.arch),
        lambda fd: qemu_argv(topology, boot, accel="tcg", ram_fd=fd),
        ram_mib=RAM_MIB,
        name="bench",
        topology=topology,
        **kwargs,
    )


def _stat(samples: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "samples": len(samples),
    }


@contextlib.asynccontextmanager
async def _last_boot(
    qemu: QemuBuild, image: ImageBuild, repeats: int, boots: list[float], log: Callable[[str], None]
) -> AsyncIterator[Vm]:
    """Boot `repeats` times, each cold boot to agent-ready timed into `boots` (ms); yield the
    last machine, still running, for the other measurements."""
    for i in range(repeats):
        log(f"bench machine: {image.arch} cold boot {i + 1}/{repeats}")
        start = time.perf_counter()
        async with _vm(qemu, image) as vm:
            boots.append((time.perf_counter() - start) * 1000)
            if i == repeats - 1:
                yield vm


async def _timed(count: int, op: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """`op` run `count` times: milliseconds per call."""
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - t) * 1000)
    return _stat(samples)


async def _snapshots(vm: Vm, repeats: int) -> tuple[float, dict[str, Any]]:
    """(save ms, restore-to-agent-ready ms stats) of a snapshot taken now."""
    snaps = Snapshots(vm)
    save = round(await snaps.save("bench") * 1000, 1)
    restores = []
    for _ in range(repeats):
        await vm.agent.echo(b"x")
        restores.append(await snaps.restore("bench") * 1000)
        await asyncio.sleep(0.2)
    return save, _stat(restores)


async def _arch_figures(
    qemu: QemuBuild, image: ImageBuild, repeats: int, echoes: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Cold boot, agent echo and snapshot restore of `image`'s architecture, keys prefixed."""
    arch = image.arch
    boot: list[float] = []
    out: dict[str, Any] = {}
    async with _last_boot(qemu, image, repeats, boot, log) as vm:
        out[f"{arch}_agent_echo_ms"] = await _timed(echoes, lambda: vm.agent.echo(b"x"))
        out[f"{arch}_save_ms"], out[f"{arch}_restore_ms"] = await _snapshots(vm, repeats)
    out[f"{arch}_boot_ms"] = _stat(boot)
    return out


async def _memory(vm: Vm, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """64 MiB checked through the mapping, copied out of it, and through pmemsave."""
    out: dict[str, Any] = {}
    log("bench machine: 64 MiB host reads, mapping and pmemsave (guest paused)")
    assert vm.ram is not None
    pmem = PmemsaveMemory(vm.qmp, vm.run_dir)
    await vm.qmp.execute("stop")  # the same bytes for every read
    expected = await vm.ram.read(READ_PA, READ_BYTES)
    copied, viewed, saved = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = await vm.ram.read(READ_PA, READ_BYTES)  # a copy into new bytes
        copied.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        same_view = compare(expected, vm.ram.view(READ_PA, READ_BYTES)) is None
        viewed.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        same_saved = compare(expected, await pmem.read(READ_PA, READ_BYTES)) is None
        saved.append((time.perf_counter() - t) * 1000)
        if a != expected or not same_view or not same_saved:
            out["memory_mismatch"] = True
        del a
    await vm.qmp.execute("cont")
    out["memory_copy_ms"] = _stat(copied)
    out["memory_view_compare_ms"] = _stat(viewed)
    out["memory_pmemsave_compare_ms"] = _stat(saved)
    out["memory_speedup"] = round(statistics.median(saved) / statistics.median(viewed), 1)
    out["memory_copy_speedup"] = round(statistics.median(saved) / statistics.median(copied), 1)
    return out


async def run(
    qemu: QemuBuild,
    image: ImageBuild,
    *,
    arm64: ImageBuild | None = None,
    repeats: int = 5,
    counter_reads: int = 200,
    log: Callable[[str], None] = lambda _m: None,
    command: str = "",
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    boot: list[float] = []
    async with _last_boot(qemu, image, repeats, boot, log) as vm:
        dev = vm.device()
        log("bench machine: QMP counter fetches")
        await dev.counters()
        results["counters_ms"] = await _timed(counter_reads, dev.counters)
        results["qmp_query_status_ms"] = await _timed(
            counter_reads, lambda: vm.qmp.execute("query-status")
        )
        log("bench machine: guest agent round trips")
        results["agent_echo_ms"] = await _timed(counter_reads, lambda: vm.agent.echo(b"x"))

        results.update(await _memory(vm, repeats, log))

        log("bench machine: snapshot save and restores")
        results["save_ms"], results["restore_ms"] = await _snapshots(vm, repeats)
    results["boot_ms"] = _stat(boot)
    if arm64 is not None:
        results.update(await _arch_figures(qemu, arm64, repeats, counter_reads, log))

    targets = []
    for name, (op, limit) in TARGETS.items():
        if name not in results:
            continue
        value = results[name]["median"] if isinstance(results[name], dict) else results[name]
        ok = value <= limit if op == "<=" else value >= limit
        targets.append({"name": name, "value": value, "target": f"{op} {limit}", "pass": ok})
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": machine_info(),
        "qemu": qemu_info(qemu),
        "kernel": image.kernel_release,
        "ram_mib": RAM_MIB,
        "repeats": repeats,
        "results": results,
        "targets": targets,
        "all_targets_pass": all(t["pass"] for t in targets) and "memory_mismatch" not in results,
    }


def render_table(report: dict[str, Any]) -> str:
    r = report["results"]
    rows = [
        ("QMP qom-get counters", f"{r['counters_ms']['median']:.3f} ms"),
        ("QMP query-status (round trip reference)", f"{r['qmp_query_status_ms']['median']:.3f} ms"),
        ("guest agent echo round trip", f"{r['agent_echo_ms']['median']:.3f} ms"),
        (
            "64 MiB checked against expected, mapping view",
            f"{r['memory_view_compare_ms']['median']:.1f} ms",
        ),
        ("64 MiB copied out of the mapping", f"{r['memory_copy_ms']['median']:.1f} ms"),
        ("64 MiB pmemsave + read + check", f"{r['memory_pmemsave_compare_ms']['median']:.1f} ms"),
        (
            "speedup, view / copy vs pmemsave",
            f"{r['memory_speedup']:.1f}x / {r['memory_copy_speedup']:.1f}x",
        ),
        ("snapshot save", f"{r['save_ms']:.0f} ms"),
        ("snapshot restore to agent-ready", f"{r['restore_ms']['median']:.0f} ms"),
        ("cold boot to agent-ready (TCG)", f"{r['boot_ms']['median']:.0f} ms"),
    ]
    if "aarch64_boot_ms" in r:
        rows += [
            (
                "arm64 (virt, SMMUv3): guest agent echo",
                f"{r['aarch64_agent_echo_ms']['median']:.3f} ms",
            ),
            ("arm64: snapshot save", f"{r['aarch64_save_ms']:.0f} ms"),
            (
                "arm64: snapshot restore to agent-ready",
                f"{r['aarch64_restore_ms']['median']:.0f} ms",
            ),
            ("arm64: cold boot to agent-ready (TCG)", f"{r['aarch64_boot_ms']['median']:.0f} ms"),
        ]
    lines = ["| measure | median |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    lines.append("")
    lines += target_lines(report["targets"])
    return "\n".join(lines) + "\n"


def run_sync(qemu: QemuBuild, image: ImageBuild, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run(qemu, image, **kwargs))
