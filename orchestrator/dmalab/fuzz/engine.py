"""The engine: runs the generator's steps on a rig, checks the invariants after each, and
turns the first finding into a `CheckFailed` that names the replay."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import construct as c

from dmalab.errors import BadInput, CheckFailed
from dmalab.fuzz import checks, operations
from dmalab.fuzz.generator import BUFFER_SIZE, BUFFERS, Generator, Layout
from dmalab.fuzz.model import (
    MSI_WINDOW,
    AddressMap,
    RegModel,
    allocates_no_line,
    q35_address_map,
)
from dmalab.fuzz.operations import (
    KNOWN_RERR,
    REG,
    REGS_SPAN,
    ST,
    STATUS_BUSY,
    DescOp,
    Doorbell,
    Op,
    RegWrite,
    Step,
)
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice, ncdma_rig
from dmalab.machine.process import QemuDied
from dmalab.spec import ncdma as spec

#: Seconds the device may stay BUSY after a step before the engine calls it a hang.
QUIESCE_TIMEOUT = 30.0
LAST_OPS = 16


@dataclass(frozen=True)
class FuzzConfig:
    name: str
    device: str
    iommu: str | None = None
    summary: str = ""
    #: The machine: q35 (x86_64) or virt (aarch64, with iommu "smmuv3").
    arch: str = "x86_64"


class QemuBinaries(Protocol):
    """What runs a configuration: the QEMU command line start of each architecture."""

    def base_argv(self, arch: str = "x86_64") -> list[str]: ...


CONFIGS: dict[str, FuzzConfig] = {
    cfg.name: cfg
    for cfg in (
        FuzzConfig("coherent", "coherent=on", None, "no cache, no IOMMU"),
        FuzzConfig(
            "cached",
            "cache-size=4096,cache-ways=2",
            None,
            "4 KiB 2-way cache (constant evictions), no IOMMU",
        ),
        FuzzConfig(
            "coherent-iommu",
            "coherent=on,iotlb-entries=4",
            "intel-iommu,caching-mode=on",
            "no cache, intel-iommu, 4-entry IOTLB",
        ),
        FuzzConfig(
            "cached-iommu",
            "cache-size=4096,cache-ways=2,iotlb-entries=4",
            "intel-iommu,caching-mode=on",
            "small cache, intel-iommu, 4-entry IOTLB",
        ),
        FuzzConfig(
            "cached-iommu-notlb",
            "cache-size=4096,cache-ways=2,iotlb-entries=0",
            "intel-iommu,caching-mode=on",
            "small cache, intel-iommu, no IOTLB",
        ),
        FuzzConfig(
            "coherent-smmuv3",
            "coherent=on,iotlb-entries=4",
            "smmuv3",
            "no cache, arm virt SMMUv3 (UNMAP notifications only), 4-entry IOTLB",
            "aarch64",
        ),
        FuzzConfig(
            "cached-smmuv3",
            "cache-size=4096,cache-ways=2,iotlb-entries=4",
            "smmuv3",
            "small cache, arm virt SMMUv3, 4-entry IOTLB",
            "aarch64",
        ),
    )
}


@dataclass
class FuzzResult:
    config: str
    seed: int
    ops: int
    steps: int
    seconds: float
    descriptors: int
    statuses: dict[str, int]
    counters: dict[str, int]
    ring_errors: dict[str, int]
    digest: str

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "seed": self.seed,
            "ops": self.ops,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "ops_per_second": round(self.ops_per_second),
            "descriptors": self.descriptors,
            "statuses": self.statuses,
            "ring_errors": self.ring_errors,
            "counters": self.counters,
            "digest": self.digest,
        }


class FuzzEngine:
    def __init__(
        self, rig: NcdmaRig, dev: RigDevice, layout: Layout, seed: int, config: FuzzConfig
    ) -> None:
        self.rig = rig
        self.dev = dev
        self.q = rig.qtest
        self.bar0 = dev.host.bar0
        self.layout = layout
        self.seed = seed
        self.config = config
        self.gen = Generator(seed, config.name, layout)
        self.op_index = 0
        self.last: deque[tuple[int, str]] = deque(maxlen=LAST_OPS)
        self.digest = hashlib.sha256()
        self.counters: dict[str, int] | None = None
        self.statuses: dict[str, int] = {}
        self.ring_errors: dict[str, int] = {}
        self.descriptors = 0
        self.steps = 0

    def fail(self, what: str) -> CheckFailed:
        ops = "\n".join(f"  #{i}: {text}" for i, text in self.last)
        return CheckFailed(
            f"fuzz finding: seed {self.seed}, config {self.config.name}, op index "
            f"{max(self.op_index - 1, 0)} (step {self.steps}): {what}\n"
            f"replay: dmalab fuzz --seed {self.seed} --config {self.config.name} "
            f"--ops {self.op_index}\nlast operations:\n{ops}"
        )

    def _record(self, op: Op) -> None:
        text = str(op)
        self.last.append((self.op_index, text))
        self.digest.update(text.encode() + b"\n")
        if not isinstance(op, Doorbell):
            self.op_index += 1

    async def run(self, ops: int, progress: Callable[[int], None] | None = None) -> None:
        await self._check(Step("start", []))
        while self.op_index < ops:
            before = dataclasses.replace(self.gen.model)
            step = self.gen.step()
            budget = ops - self.op_index
            counted = [op for op in step.ops if not isinstance(op, Doorbell)]
            if len(counted) > budget:  # the last step is cut to the requested count
                step = _truncate(step, budget, self.layout.ring_entries)
                self.gen.model = dataclasses.replace(before)
                for op in step.ops:
                    self.gen.apply(op)
                if not step.ops:
                    break
            self.steps += 1
            try:
                await self._run_step(step, before)
                await self._check(step)
            except CheckFailed:
                raise
            except Exception as exc:
                raise self.fail(f"{type(exc).__name__}: {exc}") from exc
            if progress is not None:
                progress(self.op_index)

    # -- running -------------------------------------------------------------------------------

    async def _run_step(self, step: Step, before: RegModel) -> None:
        kind = "desc" if step.kind.startswith("desc") else step.kind
        runner = {
            "desc": self._run_descs,
            "reg": self._run_regs,
            "mem": self._run_mem,
            "map": self._run_maps,
            "stats": self._run_stats,
        }[kind]
        await runner(step, before)

    async def _run_descs(self, step: Step, before: RegModel) -> None:
        q = self.q
        # Everything before the doorbell: register writes (re-arming), then the descriptors.
        pending = []
        descs: list[DescOp] = []
        for op in step.ops:
            if isinstance(op, RegWrite):
                self._record(op)
                pending.append(q.submit(f"writel {self.bar0 + op.offset:#x} {op.value:#x}"))
            elif isinstance(op, DescOp):
                descs.append(op)
        if step.healthy:
            await self._write_descs(step.slots, descs)
        else:  # a hostile doorbell: descriptors go at the start of our ring
            await q.write(self.layout.ring_pa, b"".join(d.raw() for d in descs))
        for d in descs:
            self._record(d)
        for f in pending:
            await f
        bell = step.ops[-1]
        assert isinstance(bell, Doorbell)
        self._record(bell)
        await q.writel(self.bar0 + REG["RING_TAIL"], bell.tail)
        await self._quiesce()

    async def _run_regs(self, step: Step, before: RegModel) -> None:
        pending = []
        model = dataclasses.replace(before)  # replay the model alongside
        for op in step.ops:
            assert isinstance(op, RegWrite)
            self._record(op)
            cmd = "writeq" if op.width == 8 else "writel"
            pending.append(self.q.submit(f"{cmd} {self.bar0 + op.offset:#x} {op.value:#x}"))
            bell = model.rings_bell(op.offset, op.value) or (
                op.width == 8 and model.rings_bell(op.offset + 4, op.value >> 32)
            )
            model.write(op.offset, op.value)
            if op.width == 8:
                model.write(op.offset + 4, op.value >> 32)
            if bell:  # let the device run before the next write: keeps runs deterministic
                for f in pending:
                    await f
                pending = []
                await self._quiesce()
        for f in pending:
            await f
        await self._quiesce()

    async def _run_mem(self, step: Step, before: RegModel) -> None:
        pending = []
        for op in step.ops:
            assert isinstance(op, operations.MemWrite)
            self._record(op)
            pending.append(self.q.write(op.pa, op.data))
        await asyncio.gather(*pending)

    async def _run_maps(self, step: Step, before: RegModel) -> None:
        for op in step.ops:
            assert isinstance(op, operations.MapOp)
            self._record(op)
            if op.pa is None:
                await self.rig.unmap(self.dev, op.iova, PAGE)
            else:
                await self.rig.map(
                    self.dev, op.pa, PAGE, iova=op.iova, read=op.read, write=op.write
                )

    async def _run_stats(self, step: Step, before: RegModel) -> None:
        for op in step.ops:
            self._record(op)
        await self.rig.reset_stats(self.dev)
        self.counters = None

    async def _write_descs(self, slots: list[int], descs: list[DescOp]) -> None:
        if not descs:
            return
        entries = self.layout.ring_entries
        run_start, run = slots[0], bytearray()
        futures = []
        for slot, d in zip(slots, descs, strict=True):
            run += d.raw()
            if slot == entries - 1:
                futures.append(
                    self.q.write(self.layout.ring_pa + run_start * spec.DESC_SIZE, bytes(run))
                )
                run_start, run = 0, bytearray()
        if run:
            futures.append(
                self.q.write(self.layout.ring_pa + run_start * spec.DESC_SIZE, bytes(run))
            )
        await asyncio.gather(*futures)

    async def _quiesce(self) -> None:
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        while await self.q.readl(self.bar0 + REG["STATUS"]) & STATUS_BUSY:
            if time.monotonic() > deadline:
                raise self.fail(f"device still BUSY {QUIESCE_TIMEOUT} s after the step (hang)")
            await asyncio.sleep(0)

    # -- checking ------------------------------------------------------------------------------

    async def _check(self, step: Step) -> None:
        regs, counters, ring = await self._read_back(step)
        try:
            qmp_counters = await asyncio.wait_for(self.rig.qom(self.dev, "counters"), 10.0)
        except Exception as exc:
            raise self.fail(f"QEMU does not answer QMP: {exc!r}") from exc
        try:
            checks.counters_agree(counters, qmp_counters)
            checks.registers(regs, self.gen.model)
            if regs["ERROR"]:
                name = KNOWN_RERR[regs["ERROR"]]
                self.ring_errors[name] = self.ring_errors.get(name, 0) + 1
            completed = self._check_ring(step, regs, ring) if step.slots else None
            if self.counters is not None:
                checks.counters_grew(self.counters, counters, completed)
                if step.slots and self.layout.cached:
                    descs = [op for op in step.ops if isinstance(op, DescOp)]
                    lay = self.layout
                    if all(allocates_no_line(d, lay.addresses, lay.max_xfer) for d in descs):
                        checks.no_line_allocated(self.counters, counters)
        except checks.Violation as exc:
            raise self.fail(str(exc)) from None
        self.counters = counters

    async def _read_back(self, step: Step) -> tuple[dict[str, int], dict[str, int], bytes]:
        """Registers ID..COMPLETED, the BAR0 counters and, after a healthy batch, the ring."""
        q = self.q
        regs_f = q.submit(f"b64read {self.bar0:#x} {REGS_SPAN:#x}")
        cnt_f = q.submit(
            f"b64read {self.bar0 + spec.COUNTERS_OFFSET:#x} {spec.Counters.sizeof():#x}"
        )
        ring_f = None
        if step.slots:
            ring_f = q.read(self.layout.ring_pa, self.layout.ring_entries * spec.DESC_SIZE)
        regs_raw = base64.b64decode(await regs_f)
        cnt_raw = base64.b64decode(await cnt_f)
        ring = await ring_f if ring_f is not None else b""
        regs = dict(zip(spec.REG, c.Int32ul[REGS_SPAN // 4].parse(regs_raw), strict=False))
        parsed = spec.Counters.parse(cnt_raw)
        return regs, {name: parsed[name] for name in spec.COUNTER_NAMES}, ring

    def _check_ring(self, step: Step, regs: dict[str, int], ring: bytes) -> tuple[int, int]:
        """The healthy batch ran to its doorbell and every descriptor completed as documented:
        (OK, failed) descriptors."""
        if regs["ERROR"]:
            raise checks.Violation(f"the healthy ring stopped: {KNOWN_RERR[regs['ERROR']]}")
        bell = step.ops[-1]
        assert isinstance(bell, Doorbell)
        if regs["RING_HEAD"] != bell.tail:
            raise checks.Violation(f"RING_HEAD {regs['RING_HEAD']}, expected {bell.tail}")
        ok = bad = 0
        descs = [op for op in step.ops if isinstance(op, DescOp)]
        for slot, d in zip(step.slots, descs, strict=True):
            raw = ring[slot * spec.DESC_SIZE : (slot + 1) * spec.DESC_SIZE]
            entry = spec.RawDescriptor.parse(raw)
            status = entry.status  # a Status name, or the number when it is none
            st = ST[status] if isinstance(status, str) else status
            name = checks.completion(d, st, entry.done, self.layout)
            self.statuses[name] = self.statuses.get(name, 0) + 1
            ok += name == "OK"
            bad += name != "OK"
        self.descriptors += len(descs)
        return ok, bad


def _truncate(step: Step, budget: int, entries: int) -> Step:
    """The first `budget` counted operations of a step (descriptor steps keep their doorbell)."""
    kept: list[Op] = []
    slots: list[int] = []
    n = 0
    d = 0
    for op in step.ops:
        if isinstance(op, Doorbell):
            continue
        if n == budget:
            break
        kept.append(op)
        if isinstance(op, DescOp) and step.slots:
            slots.append(step.slots[d])
        d += isinstance(op, DescOp)
        n += 1
    if step.kind.startswith("desc"):
        ndesc = sum(isinstance(o, DescOp) for o in kept)
        if ndesc == 0:
            # only re-arm writes fit: run them as a register step
            return Step("reg", kept)
        bell = step.ops[-1]
        assert isinstance(bell, Doorbell)
        if step.healthy:
            bell = Doorbell((slots[-1] + 1) % entries)
        kept.append(bell)
    return Step(step.kind, kept, slots, step.healthy)


# ----------------------------------------------------------------------------------------------
# Entry points


async def fuzz_config(
    qemu: QemuBinaries,
    config: FuzzConfig,
    *,
    seed: int,
    ops: int,
    artifacts_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> FuzzResult:
    """Run `ops` operations of `config` from `seed`; raise CheckFailed on the first finding."""
    engine: FuzzEngine | None = None
    started = time.monotonic()
    try:
        async with ncdma_rig(
            qemu.base_argv(config.arch), (config.device,), iommu=config.iommu,
            arch=config.arch, artifacts_dir=artifacts_dir,
        ) as rig:  # fmt: skip
            dev = rig.devices[0]
            layout = await _layout(rig, dev)
            engine = FuzzEngine(rig, dev, layout, seed, config)
            started = time.monotonic()
            await engine.run(
                ops, None if progress is None else lambda n: progress(config.name, n, ops)
            )
            seconds = time.monotonic() - started
            counters = engine.counters or await dev.host.counters()
    except QemuDied as exc:
        if engine is None:
            raise
        cause = exc.__cause__
        head = str(cause) if isinstance(cause, CheckFailed) else str(engine.fail("QEMU died"))
        raise CheckFailed(f"{head}\n{exc}") from exc
    return FuzzResult(
        config=config.name,
        seed=seed,
        ops=engine.op_index,
        steps=engine.steps,
        seconds=seconds,
        descriptors=engine.descriptors,
        statuses=dict(sorted(engine.statuses.items())),
        counters=counters,
        ring_errors=dict(sorted(engine.ring_errors.items())),
        digest=engine.digest.hexdigest(),
    )


async def _layout(rig: NcdmaRig, dev: RigDevice) -> Layout:
    buf_pa, buf_iova = [], []
    for _ in range(BUFFERS):
        pa = rig.alloc(BUFFER_SIZE)
        buf_pa.append(pa)
        buf_iova.append(await rig.map(dev, pa, BUFFER_SIZE))
    host = dev.host
    q35 = rig.vm.board.arch == "x86_64"
    return Layout(
        iommu=rig.iommu is not None,
        ring_pa=host.ring_pa,
        ring_iova=host.ring_iova,
        ring_entries=host.entries,
        buf_pa=buf_pa,
        buf_iova=buf_iova,
        ram_end=rig.vm.ram_end,
        bar0=host.bar0,
        max_xfer=await host.reg("MAX_XFER"),
        cached=bool(await host.reg("CACHE_LINE")),
        msi_window=MSI_WINDOW if q35 else None,
        addresses=(
            q35_address_map(iommu=rig.iommu is not None, ram_end=rig.vm.ram_end, bar0=host.bar0)
            if q35
            else AddressMap()
        ),
    )


def resolve_configs(name: str) -> list[FuzzConfig]:
    if name == "all":
        return list(CONFIGS.values())
    if name not in CONFIGS:
        raise BadInput(
            f"unknown fuzz configuration {name!r}: choose from {', '.join(CONFIGS)} or all"
        )
    return [CONFIGS[name]]


@dataclass(frozen=True)
class FuzzItem:
    """One run of `dmalab fuzz`: `ops` operations of `config` from `seed`."""

    seed: int
    config: FuzzConfig
    ops: int


def plan(seeds: Sequence[int], ops: int, configs: Sequence[FuzzConfig]) -> list[FuzzItem]:
    """Every run, seed by seed: each seed's `ops` operations shared evenly by `configs`. A
    config's share depends only on its place in `configs`, so a `--shard` of this list runs
    exactly what the whole list runs for its items."""
    return [
        FuzzItem(seed, config, ops // len(configs) + (1 if i < ops % len(configs) else 0))
        for seed in seeds
        for i, config in enumerate(configs)
    ]


async def fuzz_items(
    qemu: QemuBinaries,
    items: Sequence[FuzzItem],
    *,
    artifacts_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[FuzzResult]:
    """Run `items` one after the other; raise CheckFailed on the first finding."""
    results = []
    for item in items:
        results.append(
            await fuzz_config(
                qemu,
                item.config,
                seed=item.seed,
                ops=item.ops,
                artifacts_dir=artifacts_dir,
                progress=progress,
            )
        )
    return results


async def fuzz(
    qemu: QemuBinaries,
    *,
    seed: int,
    ops: int,
    configs: Sequence[FuzzConfig] | None = None,
    artifacts_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[FuzzResult]:
    """`ops` operations in total, shared evenly by `configs` (all of them by default)."""
    configs = list(configs if configs is not None else CONFIGS.values())
    items = plan([seed], ops, configs)
    return await fuzz_items(qemu, items, artifacts_dir=artifacts_dir, progress=progress)
