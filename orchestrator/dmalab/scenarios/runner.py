"""Run scenarios: boot each topology once, save a snapshot, restore it before every variant.

`run_suite(topologies, scenarios)` returns a `Result` per (scenario, topology, variant). Each
machine is booted with `launch.boot`, the guest's `/dev/ncdmaN` are matched to the topology's
device ids by PCI address, devices that share an IOMMU group are noted (seed 004), and the state
right after boot is saved; every variant starts from it, so results do not depend on the order
or on what ran before. Wall times go to `Result.timing` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dmalab.errors import CheckFailed
from dmalab.machine.devices import _walk_pci
from dmalab.machine.launch import boot
from dmalab.machine.snapshot import Snapshots
from dmalab.scenarios.api import Result, Run, Scenario, Variant, verdict
from dmalab.scenarios.suite import SUITE

SHIPPED = ("default", "virtio-iommu")
VARIANT_TIMEOUT_S = 60.0


async def device_map(vm: Any) -> tuple[dict[str, int], tuple[str, str] | None]:
    """Topology id -> guest device index, and the first two devices sharing an IOMMU group."""
    addr = {}
    for bus in await vm.qmp.execute("query-pci"):
        for dev in _walk_pci(bus["devices"]):
            if dev.get("qdev_id"):
                addr[f"0000:{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']}"] = dev["qdev_id"]
    index: dict[str, int] = {}
    groups: dict[int, list[str]] = {}
    for i in range(vm.hello.devices):
        info = await vm.agent.device_info(i)
        qid = addr[info.pci_name]
        index[qid] = i
        groups.setdefault(info.iommu_group, []).append(qid)
    shared = next((tuple(sorted(g))[:2] for g in groups.values() if len(g) >= 2), None)
    return dict(sorted(index.items())), shared  # type: ignore[return-value]


async def run_variant(
    vm: Any, devices: dict[str, int], shared: Any, topology: str, sc: Scenario, v: Variant
) -> Result:
    run = Run(vm, devices, topology, v, shared=shared)
    start = time.perf_counter()
    why = sc.unavailable(run) if sc.unavailable else None
    if why:
        return Result(sc.name, sc.seed, topology, v.name, v.expect, "unavailable", list(v.steps),
                      [], [], {}, [], note=why, timing={"seconds": 0.0})  # fmt: skip
    error = None
    try:
        await run.start()
        await asyncio.wait_for(sc.body(run), VARIANT_TIMEOUT_S)
    except Exception as exc:  # the variant failed to run: report it, go on with the next
        error = f"{type(exc).__name__}: {exc}"
        for task in run._chains.values():
            task.cancel()
        if not isinstance(exc, CheckFailed):
            error += "\n" + traceback.format_exc(limit=4)
    findings = run.final_findings()
    outcome = "FAIL" if error else verdict(v.expect, v.steps, findings)
    evidence = [f.line for f in findings]
    if error:
        evidence.append(f"error: {error}")
    return Result(
        scenario=sc.name,
        seed=sc.seed,
        topology=topology,
        variant=v.name,
        expectation=v.expect,
        outcome=outcome,
        expected_steps=list(v.steps),
        detected_steps=sorted({f.step for f in findings}),
        evidence=evidence,
        counters=run.counters_total(),
        steps=sorted(run.records, key=lambda r: r.order),
        note=run.note
        or (
            "steps completed in the order "
            + ", ".join(str(r.step) for r in sorted(run.records, key=lambda r: r.order))
            if run.concurrent
            else ""
        ),
        machine=run.machine,
        timing={"seconds": round(time.perf_counter() - start, 3)},
    )


class Machine:
    """A booted topology with its post-boot snapshot: `await m.run(scenario)` runs every variant,
    each from the snapshot."""

    def __init__(self, vm: Any, topology: str) -> None:
        self.vm = vm
        self.topology = topology
        self.snaps = Snapshots(vm)
        self.devices: dict[str, int] = {}
        self.shared: tuple[str, str] | None = None
        self.boot_seconds = 0.0
        self._fresh = True

    async def prepare(self) -> None:
        self.devices, self.shared = await device_map(self.vm)
        await self.snaps.save("booted")

    async def run(
        self, sc: Scenario, variants: Sequence[str] | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> list[Result]:  # fmt: skip
        out = []
        for v in sc.variants:
            if variants is not None and v.name not in variants:
                continue
            restore_s = 0.0
            if not self._fresh:
                restore_s = await self.snaps.restore("booted")
            self._fresh = False
            r = await run_variant(self.vm, self.devices, self.shared, self.topology, sc, v)
            r.timing["restore_seconds"] = round(restore_s, 3)
            out.append(r)
            if on_result:
                on_result(r)
        return out


@contextlib.asynccontextmanager
async def machine(
    topology: str, *, accel: str | None = None, artifacts_dir: Path | None = None
) -> AsyncIterator[Machine]:
    t0 = time.perf_counter()
    async with boot(topology, accel=accel, artifacts_dir=artifacts_dir) as vm:
        m = Machine(vm, topology)
        m.boot_seconds = time.perf_counter() - t0
        await m.prepare()
        yield m


async def run_topology(
    topology: str,
    scenarios: Sequence[Scenario] = SUITE,
    *,
    accel: str | None = None,
    artifacts_dir: Path | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    results: list[Result] = []
    async with machine(topology, accel=accel, artifacts_dir=artifacts_dir) as m:
        for sc in scenarios:
            results += await m.run(sc, on_result=on_result)
        if results:
            results[0].timing["boot_seconds"] = round(m.boot_seconds, 3)
    return results


async def run_suite(
    topologies: Sequence[str] = SHIPPED,
    scenarios: Sequence[Scenario] = SUITE,
    **kwargs: Any,
) -> list[Result]:
    results = []
    for topo in topologies:
        results += await run_topology(topo, scenarios, **kwargs)
    return results


def suite_ok(results: Sequence[Result]) -> bool:
    return all(r.ok for r in results)


def as_json(results: Sequence[Result], *, timing: bool = True) -> list[dict[str, Any]]:
    """JSON-ready results; `timing=False` leaves out what differs from run to run (wall times,
    physical addresses), for comparing two runs."""
    out = []
    for r in results:
        d = asdict(r)
        if not timing:
            d.pop("timing")
            d.pop("machine")
        out.append(d)
    return out
