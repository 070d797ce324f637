"""Run scenarios: boot each topology, save a snapshot, restore it before every variant.

`run_suite(topologies, scenarios)` returns a `SuiteRun`: a `Result` per (topology, kernel,
policy, scenario, variant) in that canonical order (the kernel an axis only when `kernels` are
given: each topology then boots each kernel's image, and results name the kernel), the run's
`meta` (what it ran and what produced it: QEMU build, guest image, accelerator, host, dmalab
commit) and its wall times. Results name a
topology by its `name`; `meta` maps each name to the file it came from. Each machine is a
`machine.booted.BootedMachine`: booted, the guest's `/dev/ncdmaN` matched to the topology's device
ids by PCI address, devices that share an IOMMU group noted (seed 004), and the state right after
that saved; every variant starts from it, so results depend neither on the order nor on which
machine ran them (but for what the guest's physical page layout decides: docs/scenarios.md,
"Determinism"). That is what lets `jobs` machines run at once with the same results. Wall times
go to `timing` only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild, ensure_qemu
from dmalab.errors import BadInput, CheckFailed
from dmalab.machine.booted import BootedMachine
from dmalab.machine.devices import pci_names
from dmalab.machine.guest_modules import load_module
from dmalab.machine.guest_trace import GuestTrace
from dmalab.machine.launch import topology_image
from dmalab.machine.topology import Topology, load_topology
from dmalab.provenance import dmalab_commit, image_info, machine_info, qemu_info
from dmalab.scenarios.api import Run
from dmalab.scenarios.codec import DEFAULT_SEED
from dmalab.scenarios.declarations import POLICIES, Scenario, Variant, cell_expectation
from dmalab.scenarios.results import Result, as_json, outcome, suite_ok
from dmalab.scenarios.suite import SUITE, Item, plan

SHIPPED = ("default", "virtio-iommu", "arm64-smmuv3", "arm64-virtio-iommu", "arm64-noncoherent")
#: `dmalab run --matrix` without -t: the x86 topologies and the coherent baseline.
MATRIX_TOPOLOGIES = ("default", "virtio-iommu", "coherent")
VARIANT_TIMEOUT_S = 60.0
#: Another machine of a topology that already has one is booted only when each would still
#: run this many variants: a boot and a snapshot cost about as much as ten variants.
JOIN_MIN_VARIANTS = 10


async def device_map(vm: Any) -> tuple[dict[str, int], tuple[str, str] | None]:
    """Topology id -> guest device index, and the first two devices sharing an IOMMU group."""
    addr = await pci_names(vm.qmp)
    index: dict[str, int] = {}
    groups: dict[int, list[str]] = {}
    for i in range(vm.hello.devices):
        info = await vm.agent.device_info(i)
        qid = addr[info.pci_name]
        index[qid] = i
        groups.setdefault(info.iommu_group, []).append(qid)
    shared = next((tuple(sorted(g))[:2] for g in groups.values() if len(g) >= 2), None)
    return dict(sorted(index.items())), shared  # type: ignore[return-value]


def all_coherent(topology: Topology) -> bool:
    """Whether every device of the topology is coherent (no device cache): the baseline."""
    return bool(topology.devices) and all(d.coherent for d in topology.devices)


def _skipped(sc: Scenario, v: Variant, topology: str, why: str, policy: str | None) -> Result:
    return Result(sc.name, sc.seed, topology, v.name, v.expect, "unavailable", list(v.steps),
                  [], [], {}, [], note=why, policy=policy, timing={"seconds": 0.0})  # fmt: skip


async def run_variant(
    run: Run, sc: Scenario, expect: str, steps: Sequence[int], why: str = ""
) -> Result:
    """Run `sc`'s body for `run.variant` and judge it against `expect` at `steps`."""
    v = run.variant
    start = time.perf_counter()
    error = None
    try:
        await run.start()
        await asyncio.wait_for(sc.body(run), VARIANT_TIMEOUT_S)
        await run.finish()
    except Exception as exc:  # the variant failed to run: report it, go on with the next
        error = f"{type(exc).__name__}: {exc}"
        run.scheduler.cancel()
        if not isinstance(exc, CheckFailed):
            error += "\n" + traceback.format_exc(limit=4)
    findings = run.final_findings()
    judged = "FAIL" if error else outcome(expect, steps, findings)
    evidence = [f.line for f in findings]
    if error:
        evidence.append(f"error: {error}")
    order = sorted(run.records, key=lambda r: r.order)
    note = run.note or (
        "steps completed in the order " + ", ".join(str(r.step) for r in order)
        if run.concurrent
        else ""
    )
    return Result(
        scenario=sc.name,
        seed=sc.seed,
        topology=run.topology,
        variant=v.name,
        expectation=expect,
        outcome=judged,
        expected_steps=list(steps),
        detected_steps=sorted({f.step for f in findings}),
        evidence=evidence,
        counters=run.counters_total(),
        steps=order,
        note="; ".join(x for x in (why, note) if x),
        machine=run.machine,
        timing={
            "seconds": round(time.perf_counter() - start, 3),
            "wait_seconds": round(run.scheduler.wait_seconds, 3),
        },
    )


class Machine:
    """A topology's machine for the scenarios: the booted machine and its post-boot snapshot
    (`machine.booted.BootedMachine`, in `booted` once entered) and what the scenarios need to
    know of it. `await m.run(scenario)` runs every variant, each from the snapshot."""

    def __init__(self, topology: Topology) -> None:
        # Results name the topology, never the file it came from (that goes to `meta`).
        self.topology = topology.name
        self.coherent = all_coherent(topology)
        self.platform = topology.machine.coherency
        self.arch = topology.arch
        #: The kernel's label in a run given kernels: results carry it.
        self.kernel: str | None = None
        self.devices: dict[str, int] = {}
        self.shared: tuple[str, str] | None = None
        self._booted: BootedMachine | None = None

    @property
    def booted(self) -> BootedMachine:
        assert self._booted is not None, "the machine is not booted"
        return self._booted

    @booted.setter
    def booted(self, booted: BootedMachine) -> None:
        self._booted = booted

    @property
    def vm(self) -> Any:
        return self.booted.vm

    @property
    def boot_seconds(self) -> float:
        return self.booted.boot_seconds

    @property
    def save_seconds(self) -> float:
        return self.booted.save_seconds

    async def prepare(self, vm: Any) -> None:
        """Before the snapshot is saved: match the guest's devices to the topology's, switch
        the guest kernel's trace events on (every variant's `Run.start` then finds them on,
        instead of paying for the switch each time), and on the noncoherent platform load
        vgem, an exporter the `platform` scenarios drive, where the image carries it."""
        self.devices, self.shared = await device_map(vm)
        await GuestTrace(vm.agent).start()
        if self.platform == "noncoherent":
            await load_module(vm.agent, "vgem")

    async def run_one(
        self, sc: Scenario, v: Variant, *, policy: str = "base", seed: int = DEFAULT_SEED,
        matrix: bool = False,
    ) -> Result:  # fmt: skip
        """One variant under `policy` (a matrix cell when `matrix`), from the snapshot."""
        run = Run(self.vm, self.devices, self.topology, v, shared=self.shared, policy=policy,
                  seed=seed)  # fmt: skip
        expect, steps, why = cell_expectation(v, policy, self.coherent, self.platform)
        label = policy if matrix else None
        skip = why if expect == "n/a" else (sc.unavailable(run) if sc.unavailable else None)
        if inspect.isawaitable(skip):  # it asks the guest
            skip = await skip
        if skip:
            r = _skipped(sc, v, self.topology, skip, label)
            r.arch, r.kernel = self.arch, self.kernel
            return r
        restore_s = await self.booted.fresh()
        r = await run_variant(run, sc, expect, steps, why)
        r.policy = label
        r.arch, r.kernel = self.arch, self.kernel
        r.timing["restore_seconds"] = round(restore_s, 3)
        return r

    async def run(
        self, sc: Scenario, variants: Sequence[str] | None = None,
        on_result: Callable[[Result], None] | None = None, *, policy: str = "base",
        seed: int = DEFAULT_SEED,
    ) -> list[Result]:  # fmt: skip
        out = []
        for v in sc.variants:
            if variants is not None and v.name not in variants:
                continue
            r = await self.run_one(sc, v, policy=policy, seed=seed)
            out.append(r)
            if on_result:
                on_result(r)
        return out


@contextlib.asynccontextmanager
async def machine(
    topology: str,
    *,
    accel: str | None = None,
    artifacts_dir: Path | None = None,
    loaded: Topology | None = None,
    name: str | None = None,
    **boot_options: Any,
) -> AsyncIterator[Machine]:
    """Boot `topology` (a shipped name or a file; `loaded` if already read) and yield it with
    its snapshot saved; the machine is shut down on the way out, whatever happened.
    `boot_options` go to `launch.boot` (qemu, image)."""
    if name:
        boot_options["name"] = name
    topo = loaded or load_topology(topology)
    m = Machine(topo)
    async with BootedMachine(
        topo, setup=m.prepare, accel=accel, artifacts_dir=artifacts_dir, **boot_options
    ) as booted:
        m.booted = booted
        yield m


# ---------------------------------------------------------------------------------------------
# The suite, on one machine per topology or several at once


@dataclass
class SuiteRun:
    results: list[Result]
    meta: dict[str, Any]
    #: Whole-run wall times: `wall_seconds` and one entry per machine booted.
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return suite_ok(self.results)

    def doc(self) -> dict[str, Any]:
        """What results.json holds."""
        return {"meta": self.meta, "results": as_json(self.results), "timing": self.timing}


def dmalab_version() -> str:
    try:
        return metadata.version("dmalab")
    except metadata.PackageNotFoundError:
        return "unknown"


#: A kind of machine: a topology (as given) booting a kernel (its label; None: its own image's).
MachineKey = tuple[str, str | None]


class _Jobs:
    """The machines of a suite run: which topology (and kernel) a free job boots next, and what
    each machine did (`machines`, for the run's timing)."""

    def __init__(
        self,
        items: Sequence[Item],
        loaded: dict[str, Topology],
        *,
        seed: int,
        matrix: bool,
        accel: str | None,
        artifacts_dir: Path | None,
        on_result: Callable[[Result], None] | None,
        qemu: QemuBuild,
        images: dict[MachineKey, ImageBuild],
    ) -> None:
        self.topologies: list[MachineKey] = list(images)
        self.loaded = loaded
        self.queues = {k: collections.deque(i for i in items if i.machine == k) for k in images}
        self.running = dict.fromkeys(self.topologies, 0)
        self.booted = dict.fromkeys(self.topologies, 0)
        self.results: dict[int, Result] = {}
        self.machines: list[dict[str, Any]] = []
        self.seed, self.matrix, self.accel = seed, matrix, accel
        self.artifacts_dir, self.on_result = artifacts_dir, on_result
        self.qemu, self.images = qemu, images

    def pick(self) -> MachineKey | None:
        """A topology nobody has started yet, in the order given; else the one with the most
        variants left per machine, if each would still run JOIN_MIN_VARIANTS; else None."""
        for t in self.topologies:
            if self.queues[t] and self.booted[t] == 0:
                return t
        left = [t for t in self.topologies if self.queues[t]]
        if not left:
            return None
        best = max(left, key=lambda t: len(self.queues[t]) / (self.running[t] + 1))
        share = len(self.queues[best]) / (self.running[best] + 1)
        return best if share >= JOIN_MIN_VARIANTS else None

    async def job(self) -> None:
        while (topo := self.pick()) is not None:
            self.booted[topo] += 1
            self.running[topo] += 1
            number = self.booted[topo]
            entry: dict[str, Any] = {"topology": self.loaded[topo[0]].name, "vm": number}
            if topo[1] is not None:
                entry["kernel"] = topo[1]
            self.machines.append(entry)
            t0 = time.perf_counter()
            try:
                await self._machine(topo, number, entry)
            finally:
                self.running[topo] -= 1
                entry["seconds"] = round(time.perf_counter() - t0, 3)

    async def _machine(self, key: MachineKey, number: int, entry: dict[str, Any]) -> None:
        """Boot machine `number` of `key` and run its variants until none is left."""
        topo, kernel = key
        name = self.loaded[topo].name + (f"-{_file_word(kernel)}" if kernel else "")
        async with machine(
            topo, accel=self.accel, artifacts_dir=self.artifacts_dir, loaded=self.loaded[topo],
            name=f"{name}-{number}", qemu=self.qemu, image=self.images[key],
        ) as m:  # fmt: skip
            m.kernel = kernel
            entry["accel"] = m.vm.accel
            entry["boot_seconds"] = round(m.boot_seconds, 3)
            entry["snapshot_seconds"] = round(m.save_seconds, 3)
            entry["variants"] = 0
            while self.queues[key]:
                item = self.queues[key].popleft()
                r = await m.run_one(item.scenario, item.variant, policy=item.policy,
                                    seed=self.seed, matrix=self.matrix)  # fmt: skip
                r.timing["vm"] = number
                self.results[item.index] = r
                entry["variants"] += 1
                if self.on_result:
                    self.on_result(r)


async def run_suite(
    topologies: Sequence[str] = SHIPPED,
    scenarios: Sequence[Scenario] = SUITE,
    *,
    policies: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
    jobs: int = 1,
    accel: str | None = None,
    artifacts_dir: Path | None = None,
    on_result: Callable[[Result], None] | None = None,
    items: Sequence[Item] | None = None,
    image: ImageBuild | None = None,
    kernels: Mapping[str, Mapping[str, ImageBuild]] | None = None,
) -> SuiteRun:
    """Every variant of `scenarios` on every topology (under every policy of a matrix run:
    `policies` given), on at most `jobs` machines at once; only `items` when given (a part of
    `plan`'s list for the same arguments: `dmalab run -k/--shard`). `image` replaces every
    topology's guest image; `kernels` (label -> guest architecture -> image; `dmalab run
    --kernel`, repeatable) makes the kernel an axis: every topology boots each kernel's image
    of its architecture, and each result names its kernel.

    A job boots a machine of a topology nobody has started yet, in the order given; once every
    topology has one, a free job boots another machine of the topology with the most variants
    left per machine, if each would still run `JOIN_MIN_VARIANTS`. The machines of a topology
    take its variants one by one, in the canonical order. `on_result` sees each result as it
    arrives; the returned results are in the canonical order."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    matrix = policies is not None
    pols = list(policies) if policies is not None else ["base"]
    for p in pols:
        if p not in POLICIES:
            raise ValueError(f"unknown policy {p!r}")
    loaded = {t: load_topology(t) for t in topologies}  # a bad topology fails before any boot
    _names_unique(loaded)
    labels: list[str | None] = list(kernels) if kernels else [None]
    images: dict[MachineKey, ImageBuild]
    if kernels:  # each kernel on every topology; no topology's own image is needed
        qemu = ensure_qemu()
        images = {(t, k): kernels[k][loaded[t].arch] for t in loaded for k in kernels}
    elif image is None:
        qemu, own = artifacts_for(loaded)
        images = {(t, None): own[t] for t in loaded}
    else:  # --kernel: the user's kernel on every topology; no other image is needed
        qemu, images = ensure_qemu(), {(t, None): image for t in loaded}
    if items is None:
        items = plan(topologies, scenarios, pols, labels)
    run = _Jobs(items, loaded, seed=seed, matrix=matrix, accel=accel,
                artifacts_dir=artifacts_dir, on_result=on_result, qemu=qemu,
                images=images)  # fmt: skip
    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(jobs, len(items)) or 1):
                group.create_task(run.job())
    except BaseExceptionGroup as eg:
        # One job failed and the others were cancelled (their machines are shut down by now):
        # report the failure itself, not the group.
        raise _first(eg) from None
    meta = {
        "seed": seed,
        "topologies": [loaded[t].name for t in topologies],
        "scenarios": [sc.name for sc in scenarios],
        "policies": pols,
        "matrix": matrix,
        "dmalab": dmalab_version(),
        **provenance(loaded, qemu, {t: images[t, labels[0]] for t in loaded}, run.machines),
    }
    if kernels:  # which image each topology booted is per kernel
        meta.pop("guest")
        meta["kernels"] = {
            label: {arch: image_info(built) for arch, built in per_arch.items()}
            for label, per_arch in kernels.items()
        }
    timing = {"wall_seconds": round(time.perf_counter() - start, 3), "machines": run.machines}
    return SuiteRun([run.results[i.index] for i in items], meta, timing)


def _file_word(label: str) -> str:
    """A kernel's label in a machine's name (its run directory): debian:6.1 -> debian-6.1."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label)


def _names_unique(loaded: dict[str, Topology]) -> None:
    """Results are keyed by topology name: two files with one name cannot run together."""
    seen: dict[str, str] = {}
    for given, topo in loaded.items():
        if topo.name in seen:
            raise BadInput(
                f"topologies {seen[topo.name]} and {given} are both named {topo.name!r} "
                "(results are keyed by name)"
            )
        seen[topo.name] = given


def artifacts_for(loaded: dict[str, Topology]) -> tuple[QemuBuild, dict[str, Any]]:
    """The QEMU and each topology's guest image, found once for all the run's machines."""
    return ensure_qemu(), {t: topology_image(topo) for t, topo in loaded.items()}


def provenance(
    loaded: dict[str, Topology],
    qemu: QemuBuild,
    images: dict[str, Any],
    machines: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """What produced the run: where each topology came from, the accelerator its machines
    actually ran under, the guest image it booted, the QEMU build, the host, the commit."""
    accel: dict[str, list[str]] = {}
    for m in machines:
        if "accel" in m:
            accel.setdefault(m["topology"], []).append(m["accel"])
    info = qemu_info(qemu)
    return {
        "topology_files": {t.name: str(t.path) for t in loaded.values()},
        "accel": {name: "/".join(sorted(set(used))) for name, used in accel.items()},
        "guest": {loaded[t].name: image_info(image) for t, image in images.items()},
        "qemu": {k: info[k] for k in ("version", "build_key", "binary")},
        "host": machine_info(),
        "dmalab_commit": dmalab_commit(),
    }


def _first(eg: BaseExceptionGroup) -> BaseException:
    """The first exception of a group that is not a cancellation (nested groups flattened)."""
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return eg.exceptions[0]


async def run_topology(
    topology: str,
    scenarios: Sequence[Scenario] = SUITE,
    **kwargs: Any,
) -> list[Result]:
    return (await run_suite([topology], scenarios, **kwargs)).results
