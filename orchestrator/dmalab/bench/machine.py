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

Every figure is measured on the q35 + intel-iommu + ncdma machine the tests use.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine.compare import compare
from dmalab.machine.guestmem import MiB, PmemsaveMemory
from dmalab.machine.snapshot import Snapshots
from dmalab.machine.vm import Vm, q35_argv
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
}


def _vm(qemu: QemuBuild, image: ImageBuild, **kwargs: Any) -> Vm:
    cmdline = image.cmdline_for("intel-iommu")
    return Vm(
        qemu.base_argv(),
        lambda fd: q35_argv(image.kernel, image.initramfs, cmdline, ram_fd=fd, ram_mib=RAM_MIB),
        ram_mib=RAM_MIB,
        name="bench",
        **kwargs,
    )


def _stat(samples: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "samples": len(samples),
    }


async def run(
    qemu: QemuBuild,
    image: ImageBuild,
    *,
    repeats: int = 5,
    counter_reads: int = 200,
    log: Callable[[str], None] = lambda _m: None,
    command: str = "",
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    boot: list[float] = []
    for i in range(repeats):
        log(f"bench machine: cold boot {i + 1}/{repeats}")
        start = time.perf_counter()
        async with _vm(qemu, image) as vm:
            boot.append((time.perf_counter() - start) * 1000)
            if i < repeats - 1:
                continue
            dev = vm.device()
            log("bench machine: QMP counter fetches")
            await dev.counters()
            samples = []
            for _ in range(counter_reads):
                t = time.perf_counter()
                await dev.counters()
                samples.append((time.perf_counter() - t) * 1000)
            results["counters_ms"] = _stat(samples)
            samples = []
            for _ in range(counter_reads):
                t = time.perf_counter()
                await vm.qmp.execute("query-status")
                samples.append((time.perf_counter() - t) * 1000)
            results["qmp_query_status_ms"] = _stat(samples)

            log("bench machine: guest agent round trips")
            samples = []
            for _ in range(counter_reads):
                t = time.perf_counter()
                await vm.agent.echo(b"x")
                samples.append((time.perf_counter() - t) * 1000)
            results["agent_echo_ms"] = _stat(samples)

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
                    results["memory_mismatch"] = True
                del a
            await vm.qmp.execute("cont")
            results["memory_copy_ms"] = _stat(copied)
            results["memory_view_compare_ms"] = _stat(viewed)
            results["memory_pmemsave_compare_ms"] = _stat(saved)
            results["memory_speedup"] = round(
                statistics.median(saved) / statistics.median(viewed), 1
            )
            results["memory_copy_speedup"] = round(
                statistics.median(saved) / statistics.median(copied), 1
            )

            log("bench machine: snapshot save and restores")
            snaps = Snapshots(vm)
            results["save_ms"] = round(await snaps.save("bench") * 1000, 1)
            restores = []
            for _ in range(repeats):
                await vm.agent.echo(b"x")
                restores.append(await snaps.restore("bench") * 1000)
                await asyncio.sleep(0.2)
            results["restore_ms"] = _stat(restores)
    results["boot_ms"] = _stat(boot)

    targets = []
    for name, (op, limit) in TARGETS.items():
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
    lines = ["| measure | median |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    lines.append("")
    for t in report["targets"]:
        lines.append(
            f"target {t['name']} {t['target']}: {t['value']} {'pass' if t['pass'] else 'MISSED'}"
        )
    return "\n".join(lines) + "\n"


def run_sync(qemu: QemuBuild, image: ImageBuild, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run(qemu, image, **kwargs))
