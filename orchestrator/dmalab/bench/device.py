"""`dmalab bench device`: COPY throughput of ncdma in several configurations, against host memcpy.

For each configuration a q35 (or arm virt) machine boots under qtest with one ncdma (and
intel-iommu or SMMUv3 where the configuration asks for it). For each size, one source and one
destination buffer are allocated and, behind the IOMMU, mapped once, so mapping costs are never
timed. A batch of K COPY descriptors of that size (enough to move `batch_bytes`, at most what the
ring holds) is written into the ring untimed; the clock runs from the doorbell (the `RING_TAIL`
write) until `RING_HEAD` reaches the end of the batch. With the device cache on, the batch ends
with a CLEAN of the destination: the write-back that makes the data visible to the CPU is part of
the work. Every repetition starts with a cold device cache (an untimed CLEAN_INVALIDATE of the
whole cache).

Throughput is bytes copied / elapsed time; each figure is the median of `repeats` batches. Host
memcpy of the same sizes is measured in the same run (half before, half after the device) and
every ratio compares figures of the same run.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dmalab.artifacts.qemu import QemuBuild
from dmalab.bench import KiB, MiB, Stat, mbps, ratio, size_label
from dmalab.bench import memcpy as host_memcpy
from dmalab.errors import BadInput, CheckFailed
from dmalab.machine.ncdma_host import NcdmaHost, copy, fill, fill_bytes, maint
from dmalab.machine.ncdma_rig import NcdmaRig, ncdma_rig
from dmalab.provenance import machine_info, qemu_info

SCHEMA = "dmalab.bench.device/1"
SIZES = (4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB)
BATCH_BYTES = 64 * MiB
REPEATS = 11
#: Ring entries: enough for a 64 MiB batch of 4 KiB copies plus the final CLEAN.
RING_ENTRIES = 32768
MIN_MEMORY_MIB = 512
#: The device's own limit on one descriptor (`max-xfer` default).
MAX_SIZE = 64 * MiB
PATTERN = 0x0123_4567_89AB_CDEF
#: The counters worth keeping with each result (deltas over the last timed batch).
COUNTERS = (
    "desc_completed", "bytes_read", "bytes_written", "cache_hits", "cache_misses",
    "cache_evictions", "cache_writebacks", "iotlb_hits", "iotlb_misses",
)  # fmt: skip
IOMMU = "intel-iommu,caching-mode=on"


@dataclass(frozen=True)
class DeviceConfig:
    """One way to build the device: extra `-device ncdma` properties and an optional vIOMMU."""

    name: str
    label: str
    device: str = ""
    iommu: str | None = None
    #: q35 (x86_64) or virt (aarch64, where the vIOMMU is "smmuv3").
    arch: str = "x86_64"

    @property
    def cached(self) -> bool:
        return "coherent=on" not in self.device.split(",")


CONFIGS = (
    DeviceConfig("coherent", "coherent=on", "coherent=on"),
    DeviceConfig("cache", "cache on"),
    DeviceConfig("iommu-iotlb", "intel-iommu, IOTLB on", iommu=IOMMU),
    DeviceConfig("iommu-no-iotlb", "intel-iommu, iotlb-entries=0", "iotlb-entries=0", iommu=IOMMU),
    DeviceConfig("virt-cache", "arm virt, cache on", arch="aarch64"),
    DeviceConfig("smmuv3-iotlb", "SMMUv3, IOTLB on", iommu="smmuv3", arch="aarch64"),
    DeviceConfig("smmuv3-no-iotlb", "SMMUv3, iotlb-entries=0", "iotlb-entries=0", iommu="smmuv3",
                 arch="aarch64"),
)  # fmt: skip


def baseline_of(config: DeviceConfig, configs: Sequence[DeviceConfig]) -> DeviceConfig | None:
    """For a configuration behind an IOMMU: the one on the same machine without IOMMU and with
    the same cache setting."""
    if config.iommu is None:
        return None
    for other in configs:
        if other.iommu is None and other.cached == config.cached and other.arch == config.arch:
            return other
    return None


@dataclass(frozen=True)
class Target:
    name: str
    config: str
    size: int
    #: "memcpy": against host memcpy; "baseline": against the same device without IOMMU.
    reference: str
    threshold: float
    description: str


TARGETS = (
    Target("coherent-vs-memcpy", "coherent", 16 * MiB, "memcpy", 0.30,
           "coherent=on >= 30% of host memcpy at 16 MiB"),
    Target("cache-vs-memcpy", "cache", 16 * MiB, "memcpy", 0.05,
           "cache on >= 5% of host memcpy at 16 MiB"),
    Target("iommu-iotlb-vs-no-iommu", "iommu-iotlb", 16 * MiB, "baseline", 0.50,
           "intel-iommu with IOTLB >= 50% of the same device (cache on) without IOMMU at 16 MiB"),
    Target("smmuv3-iotlb-vs-no-iommu", "smmuv3-iotlb", 16 * MiB, "baseline", 0.50,
           "SMMUv3 with IOTLB >= 50% of the same device (cache on, virt) without IOMMU at 16 MiB"),
)  # fmt: skip


@dataclass
class Measurement:
    """The timed batches of one configuration and size."""

    size: int
    descriptors: int
    stat: Stat
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def batch_bytes(self) -> int:
        return self.size * self.descriptors


# ----------------------------------------------------------------------------------------------
# Pure parts: the report, its targets, the table


def build_report(
    *,
    sizes: Sequence[int],
    memcpy: dict[int, Stat],
    memcpy_counts: dict[int, int],
    device: dict[str, dict[int, Measurement]],
    configs: Sequence[DeviceConfig] = CONFIGS,
    targets: Sequence[Target] = TARGETS,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document: metadata, memcpy, per-configuration results with ratios, targets."""
    report: dict[str, Any] = {"schema": SCHEMA, **(meta or {})}
    report["sizes"] = list(sizes)
    report["memcpy"] = [
        {"size": s, "label": size_label(s), "copies": memcpy_counts[s], **memcpy[s].to_json()}
        for s in sizes
    ]
    entries = []
    for config in configs:
        if config.name not in device:
            continue
        base = baseline_of(config, configs)
        results = []
        for s in sizes:
            m = device[config.name].get(s)
            if m is None:
                continue
            base_m = device.get(base.name, {}).get(s) if base else None
            mc = memcpy.get(s)
            results.append({
                "size": s,
                "label": size_label(s),
                "descriptors": m.descriptors,
                "batch_bytes": m.batch_bytes,
                **m.stat.to_json(),
                "vs_memcpy": _round(ratio(m.stat.median, mc.median if mc else None)),
                "vs_baseline": _round(ratio(m.stat.median, base_m.stat.median if base_m else None)),
                "counters": dict(m.counters),
            })  # fmt: skip
        entries.append({
            "name": config.name,
            "label": config.label,
            "device": f"ncdma{',' + config.device if config.device else ''}",
            "iommu": config.iommu,
            "cached": config.cached,
            "baseline": base.name if base else None,
            "results": results,
        })  # fmt: skip
    report["configs"] = entries
    report["targets"] = evaluate_targets(report, targets)
    report["all_targets_pass"] = all(t["pass"] is True for t in report["targets"])
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _result(report: dict[str, Any], config: str, size: int) -> dict[str, Any] | None:
    for entry in report.get("configs", []):
        if entry["name"] == config:
            for result in entry["results"]:
                if result["size"] == size:
                    return result
    return None


def evaluate_targets(report: dict[str, Any], targets: Sequence[Target] = TARGETS) -> list[dict]:
    """Each target with its measured ratio and a pass flag (None when it was not measured)."""
    out = []
    for t in targets:
        result = _result(report, t.config, t.size)
        key = "vs_memcpy" if t.reference == "memcpy" else "vs_baseline"
        value = result.get(key) if result else None
        out.append({
            "name": t.name,
            "description": t.description,
            "config": t.config,
            "size": t.size,
            "reference": t.reference,
            "threshold": t.threshold,
            "value": value,
            "pass": None if value is None else value >= t.threshold,
        })  # fmt: skip
    return out


def render_table(report: dict[str, Any]) -> str:
    """Markdown tables: medians in MB/s, then ratios, then the targets."""
    sizes = report["sizes"]
    memcpy = {m["size"]: m for m in report["memcpy"]}
    configs = report["configs"]
    lines = ["COPY throughput, MB/s (median of repeated batches; min-max in brackets)", ""]
    header = ["size", "host memcpy", *(c["label"] for c in configs)]
    rows = []
    for s in sizes:
        row = [size_label(s), _cell(memcpy.get(s))]
        for c in configs:
            row.append(_cell(next((r for r in c["results"] if r["size"] == s), None)))
        rows.append(row)
    lines += _markdown(header, rows)

    lines += ["", "Ratios (same run): device / host memcpy; behind the IOMMU also / same device "
              "without IOMMU", ""]  # fmt: skip
    header = ["size"]
    for c in configs:
        header.append(f"{c['label']} / memcpy")
        if c["baseline"]:
            base = next((b for b in configs if b["name"] == c["baseline"]), None)
            header.append(f"{c['label']} / {base['label'] if base else c['baseline']}")
    rows = []
    for s in sizes:
        row = [size_label(s)]
        for c in configs:
            r = next((r for r in c["results"] if r["size"] == s), None)
            row.append(_pct(r.get("vs_memcpy") if r else None))
            if c["baseline"]:
                row.append(_pct(r.get("vs_baseline") if r else None))
        rows.append(row)
    lines += _markdown(header, rows)

    lines += ["", "Targets", ""]
    rows = []
    for t in report["targets"]:
        verdict = "not measured" if t["pass"] is None else "PASS" if t["pass"] else "FAIL"
        rows.append([t["description"], _pct(t["value"]), verdict])
    lines += _markdown(["target", "measured", "result"], rows)
    return "\n".join(lines) + "\n"


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return f"{result['median_mbps']:.0f} [{result['min_mbps']:.0f}-{result['max_mbps']:.0f}]"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [line(header), sep, *(line(r) for r in rows)]


# ----------------------------------------------------------------------------------------------
# Measuring


def check_sizes(sizes: Sequence[int]) -> list[int]:
    """Sorted, distinct sizes, each a whole number of 4 KiB pages and at most MAX_SIZE."""
    if not sizes:
        raise BadInput("no sizes to measure")
    for s in sizes:
        if s <= 0 or s % 4096 or s > MAX_SIZE:
            raise BadInput(f"size {s} must be a positive multiple of 4096 up to {MAX_SIZE}")
    return sorted(set(sizes))


def memory_mib_for(sizes: Sequence[int], ring_entries: int = RING_ENTRIES) -> int:
    """Guest RAM for a source and a destination of every size, the ring and page tables."""
    need = 2 * sum(sizes) + ring_entries * 64 + 64 * MiB  # +64: low memory, tables, slack
    return max(MIN_MEMORY_MIB, -(-need // MiB))


async def _run_batch(host: NcdmaHost, count: int, timeout: float) -> float:
    """Ring the doorbell for entries [0, count) and wait for the last one; seconds elapsed."""
    start = time.perf_counter()
    await host.set_reg("RING_TAIL", count)
    polls = 0
    while await host.reg("RING_HEAD") != count:
        polls += 1
        if polls % 256 == 0:
            await host.check_running()
            if time.perf_counter() - start > timeout:
                raise CheckFailed(f"ncdma did not finish a batch of {count} within {timeout} s")
    elapsed = time.perf_counter() - start
    host.tail = count
    return elapsed


async def measure_size(
    rig: NcdmaRig, cached: bool, size: int, *, repeats: int, batch_bytes: int, timeout: float
) -> Measurement:
    dev = rig.devices[0]
    host = dev.host
    src_pa, dst_pa = rig.alloc(size), rig.alloc(size)
    src = await rig.map(dev, src_pa, size)
    dst = await rig.map(dev, dst_pa, size)
    # The source gets known contents from the device itself, written back to memory.
    for c in await host.submit([fill(src, size, PATTERN), maint("CLEAN", src, size)]):
        if not c.ok:
            raise CheckFailed(f"preparing a {size_label(size)} source: {c.status}")
    count = host_memcpy.batch_count(size, batch_bytes, host.entries - 2)
    descs = [copy(dst, src, size, cookie=i) for i in range(count)]
    if cached:
        descs.append(maint("CLEAN", dst, size, cookie=count))
    image = b"".join(d.build() for d in descs)
    samples, counters = [], {}
    for _ in range(repeats):
        # Untimed: a cold device cache, an empty ring (HEAD = TAIL = 0), the batch written.
        await host.submit([maint("CLEAN_INVALIDATE")])
        await host.enable()
        await rig.qtest.write(host.ring_pa, image)
        before = await host.counters()
        elapsed = await _run_batch(host, len(descs), timeout)
        after = await host.counters()
        delta = {k: after[k] - before[k] for k in after}
        if delta["desc_errors"] or delta["desc_completed"] != len(descs):
            raise CheckFailed(
                f"{size_label(size)} batch: {delta['desc_completed']} of {len(descs)} "
                f"descriptors completed, {delta['desc_errors']} failed"
            )
        samples.append(mbps(size * count, elapsed))
        counters = {k: delta[k] for k in COUNTERS}
    expected = fill_bytes(size, PATTERN)
    page = min(size, 4096)
    for off in sorted({0, size - page}):
        if await rig.qtest.read(dst_pa + off, page) != expected[off : off + page]:
            raise CheckFailed(
                f"{size_label(size)} copy: wrong bytes at destination offset {off:#x}"
            )
    return Measurement(size, count, Stat.of(samples), counters)


async def measure_config(
    qemu_argv: Sequence[str],
    config: DeviceConfig,
    sizes: Sequence[int],
    *,
    repeats: int,
    batch_bytes: int,
    timeout: float = 300.0,
    log: Callable[[str], None] = lambda _: None,
) -> dict[int, Measurement]:
    out = {}
    async with ncdma_rig(
        qemu_argv,
        (config.device,),
        iommu=config.iommu,
        arch=config.arch,
        memory_mib=memory_mib_for(sizes),
        ring_entries=RING_ENTRIES,
    ) as rig:
        for size in sizes:
            m = await measure_size(rig, config.cached, size, repeats=repeats,
                                   batch_bytes=batch_bytes, timeout=timeout)  # fmt: skip
            log(f"bench device: {config.label}, {size_label(size)}: "
                f"{m.stat.median:.0f} MB/s (x{m.descriptors}, {repeats} runs)")  # fmt: skip
            out[size] = m
    return out


async def run(
    qemu: QemuBuild,
    *,
    sizes: Sequence[int] = SIZES,
    repeats: int = REPEATS,
    batch_bytes: int = BATCH_BYTES,
    configs: Sequence[DeviceConfig] = CONFIGS,
    log: Callable[[str], None] = lambda _: None,
    command: str | None = None,
) -> dict[str, Any]:
    """Measure memcpy and every configuration; the report build_report() describes."""
    sizes = check_sizes(sizes)
    if repeats < 1 or batch_bytes < 1:
        raise BadInput("repeats and batch size must be positive")
    started = datetime.datetime.now(datetime.UTC)
    counts = {s: host_memcpy.batch_count(s, batch_bytes) for s in sizes}
    before_reps, after_reps = (repeats + 1) // 2, repeats // 2
    memcpy_samples: dict[int, list[float]] = {s: [] for s in sizes}

    def measure_memcpy(reps: int) -> None:
        for s in sizes:
            if reps:
                memcpy_samples[s] += host_memcpy.measure(s, counts[s], reps).samples

    log("bench device: host memcpy")
    measure_memcpy(before_reps)
    device = {}
    for config in configs:
        log(f"bench device: {config.label}")
        device[config.name] = await measure_config(
            qemu.base_argv(config.arch),
            config,
            sizes,
            repeats=repeats,
            batch_bytes=batch_bytes,
            log=log,
        )
    log("bench device: host memcpy again")
    measure_memcpy(after_reps)
    memcpy = {s: Stat.of(v) for s, v in memcpy_samples.items()}
    for s in sizes:
        log(f"bench device: host memcpy, {size_label(s)}: {memcpy[s].median:.0f} MB/s")
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "qemu": qemu_info(qemu),
        "method": {
            "batch_bytes": batch_bytes,
            "repeats": repeats,
            "ring_entries": RING_ENTRIES,
            "memory_mib": memory_mib_for(sizes),
            "unit": "MB/s = 10^6 bytes per second",
            "timed": "doorbell (RING_TAIL write) to RING_HEAD reaching the end of the batch",
            "cache_on_batches_end_with": "CLEAN of the destination",
            "cold_device_cache_each_batch": True,
            "memcpy": "libc memmove via ctypes between two preallocated buffers, "
            "same bytes per batch as the device",
            "memcpy_call_overhead_ns": round(host_memcpy.call_overhead_ns(), 1),
        },
    }
    return build_report(sizes=sizes, memcpy=memcpy, memcpy_counts=counts, device=device,
                        configs=configs, meta=meta)  # fmt: skip


def run_sync(qemu: QemuBuild, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run(qemu, **kwargs))
