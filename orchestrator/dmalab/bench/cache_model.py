"""`dmalab bench cache-model`: what the CPU cache model (docs/cpu-cache-model.md) costs.

Two machines of the same layout: `arm64-noncoherent` as shipped (model on) and the same
topology with `coherency = "coherent"` (model off: a stock virt). Its devices stay
`coherent=true` on both, so the model is the only difference. Each round boots both, one after
the other (the order alternates from round to round), keeps both running and takes every
figure on one and then the other, sample by sample, so a neighbour's load falls on both:

- boot: starting QEMU until the guest agent answers (one per machine and round);
- suite: the seed scenarios (`scenarios.seeds.SEEDS`, every variant from the post-boot
  snapshot) run on the booted machine; their results may differ between on and off (only the
  model detects CPU-side mistakes), only the time is compared;
- dma: ncdma COPY of `COPY_BYTES` from one half of an exported buffer to the other, `COPIES`
  descriptors per sample through the agent (one round trip), in MB/s;
- cpu: the agent's pattern write of `CPU_BYTES` into a udmabuf through the CPU (xorshift per
  8 bytes, a store loop), in milliseconds: cacheable RAM, untouched by DMA, so what is measured
  is what the model adds to every CPU access (nothing, by design: it decides at TLB fill).

Targets: boot and suite with the model at most 1.3x without, the CPU loop at most 1.05x.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from dmalab.bench import MiB, envelope, mbps, target_lines
from dmalab.machine.agent import Desc
from dmalab.machine.topology import Topology, load_topology
from dmalab.provenance import machine_info
from dmalab.scenarios.runner import Machine, machine
from dmalab.scenarios.seeds import SEEDS

SCHEMA = "dmalab.bench.cache-model/1"
TOPOLOGY = "arm64-noncoherent"
MODES = ("on", "off")
ROUNDS = 5
SAMPLES = 5
COPY_BYTES = 16 * MiB
COPIES = 4
CPU_BYTES = 16 * MiB
DEVICE = "dma0"
#: on / off, at most.
TARGETS = {"boot": 1.3, "suite": 1.3, "cpu": 1.05}


def topologies() -> dict[str, Topology]:
    """The shipped noncoherent layout, and the same with the model off (devices untouched)."""
    on = load_topology(TOPOLOGY)
    off = dataclasses.replace(
        on,
        name=f"{on.name}-model-off",
        machine=dataclasses.replace(on.machine, coherency="coherent"),
    )
    return {"on": on, "off": off}


@dataclasses.dataclass
class _Bench:
    """One booted machine and the buffers its DMA and CPU samples use."""

    m: Machine
    dev: int = 0
    copy_att: int = 0
    cpu_buf: int = 0

    async def setup(self) -> None:
        await self.m.booted.fresh()  # back to the post-boot state after the suite
        agent = self.m.vm.agent
        self.dev = self.m.devices[DEVICE]
        buf = await agent.buf_create("NCDMA", 2 * COPY_BYTES, dev=self.dev)
        att = await agent.attach(buf.id, self.dev)
        await agent.map(att.id, "BIDIRECTIONAL", timeout_ms=60_000)
        self.copy_att = att.id
        self.cpu_buf = (await agent.buf_create("UDMABUF", CPU_BYTES)).id
        await agent.cpu_write_pattern(self.cpu_buf, 0, CPU_BYTES, 1)  # fault the pages in
        await self.dma()  # and the device's first translations

    async def dma(self) -> float:
        """MB/s of one batch of COPIES descriptors."""
        descs = [Desc.copy(self.copy_att, self.copy_att, COPY_BYTES, dst_off=COPY_BYTES)] * COPIES
        start = time.perf_counter()
        results = await self.m.vm.agent.run(self.dev, descs, timeout_ms=120_000)
        seconds = time.perf_counter() - start
        if [r.status for r in results] != ["OK"] * COPIES:
            raise RuntimeError(f"COPY ended {[r.status for r in results]}")
        return mbps(COPIES * COPY_BYTES, seconds)

    async def cpu(self, seed: int) -> float:
        """Milliseconds of one pattern write of CPU_BYTES."""
        start = time.perf_counter()
        await self.m.vm.agent.cpu_write_pattern(self.cpu_buf, 0, CPU_BYTES, seed)
        return (time.perf_counter() - start) * 1000


async def _suite(m: Machine) -> tuple[float, float, dict[str, int]]:
    """Seconds of the seed scenarios on `m`, the seconds of their snapshot restores, and their
    outcomes counted."""
    outcomes: dict[str, int] = {}
    restores = 0.0
    start = time.perf_counter()
    for sc in SEEDS:
        for r in await m.run(sc):
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
            restores += r.timing.get("restore_seconds", 0.0)
    return time.perf_counter() - start, restores, outcomes


async def _round(
    n: int, samples: dict[str, dict[str, list[float]]], outcomes: dict[str, dict[str, int]],
    log: Callable[[str], None], accel: str, sample_count: int,
) -> None:  # fmt: skip
    order = MODES if n % 2 == 0 else MODES[::-1]
    topos = topologies()
    async with contextlib.AsyncExitStack() as stack:
        benches: dict[str, _Bench] = {}
        for mode in order:
            log(f"bench cache-model: round {n + 1}, model {mode}: boot")
            t = topos[mode]
            m = await stack.enter_async_context(machine(t.name, loaded=t, accel=accel))
            samples[mode]["boot"].append(m.boot_seconds * 1000)
            benches[mode] = _Bench(m)
        for mode in order:
            log(f"bench cache-model: round {n + 1}, model {mode}: seed suite")
            seconds, restores, counted = await _suite(benches[mode].m)
            samples[mode]["suite"].append(seconds)
            samples[mode]["restores"].append(restores)
            outcomes[mode] = counted
        for mode in order:
            await benches[mode].setup()
        log(f"bench cache-model: round {n + 1}: DMA and CPU samples")
        for k in range(sample_count):
            for mode in order if k % 2 == 0 else order[::-1]:
                samples[mode]["dma"].append(await benches[mode].dma())
                samples[mode]["cpu"].append(await benches[mode].cpu(k + 2))


def _stat(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "samples": [round(v, 3) for v in values],
    }


def build_report(
    samples: dict[str, dict[str, list[float]]], outcomes: dict[str, dict[str, int]],
    *, command: str = "", machine_facts: dict[str, Any] | None = None, **facts: Any,
) -> dict[str, Any]:  # fmt: skip
    """The JSON report: per mode the statistics of each figure, on/off ratios of the medians
    and the targets."""
    results: dict[str, Any] = {
        mode: {fig: _stat(v) for fig, v in samples[mode].items()} for mode in MODES
    }
    ratios = {
        fig: round(results["on"][fig]["median"] / results["off"][fig]["median"], 3)
        for fig in samples["on"]
    }
    results["on_vs_off"] = ratios
    results["suite_outcomes"] = outcomes
    targets = [
        {"name": f"{fig}_on_vs_off", "value": ratios[fig], "target": f"<= {limit}",
         "pass": ratios[fig] <= limit}
        for fig, limit in TARGETS.items()
    ]  # fmt: skip
    return envelope(SCHEMA, command, machine_facts or {}, results, targets, **facts)


async def run(
    *, rounds: int = ROUNDS, samples: int = SAMPLES, accel: str = "tcg",
    log: Callable[[str], None] = lambda _m: None, command: str = "",
) -> dict[str, Any]:  # fmt: skip
    taken: dict[str, dict[str, list[float]]] = {
        mode: {"boot": [], "suite": [], "restores": [], "dma": [], "cpu": []} for mode in MODES
    }
    outcomes: dict[str, dict[str, int]] = {}
    for n in range(rounds):
        await _round(n, taken, outcomes, log, accel, samples)
    return build_report(
        taken, outcomes, command=command, machine_facts=machine_info(), topology=TOPOLOGY,
        rounds=rounds, samples_per_round=samples,
        units={"boot": "ms", "suite": "s", "restores": "s", "dma": "MB/s", "cpu": "ms"},
        method={"dma": f"{COPIES} x COPY of {COPY_BYTES >> 20} MiB by {DEVICE} per sample",
                "cpu": f"agent pattern write of {CPU_BYTES >> 20} MiB into a udmabuf",
                "suite": f"{len(SEEDS)} seed scenarios, every variant"},
    )  # fmt: skip


_ROWS = (
    ("boot", "boot to agent-ready", "ms", "{:.0f}"),
    ("suite", "seed suite", "s", "{:.2f}"),
    ("restores", "of which snapshot restores", "s", "{:.2f}"),
    ("dma", f"ncdma COPY, {COPY_BYTES >> 20} MiB", "MB/s", "{:.0f}"),
    ("cpu", f"CPU pattern write, {CPU_BYTES >> 20} MiB", "ms", "{:.1f}"),
)


def render_table(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = ["| measure | model on | model off | on / off |", "|---|---:|---:|---:|"]
    for fig, label, unit, fmt in _ROWS:
        on, off = r["on"][fig], r["off"][fig]
        cells = [f"{fmt.format(x['median'])} [{fmt.format(x['min'])}-{fmt.format(x['max'])}]"
                 for x in (on, off)]  # fmt: skip
        lines.append(f"| {label} ({unit}) | {cells[0]} | {cells[1]} | {r['on_vs_off'][fig]:.3f} |")
    lines.append("")
    lines += target_lines(report["targets"])
    return "\n".join(lines) + "\n"
