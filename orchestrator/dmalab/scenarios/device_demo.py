"""The device demonstration: one copy through a cached ncdma and one through a coherent ncdma,
both behind intel-iommu, with every claim checked byte-exactly from the host.

It shows the difference that all of dmalab is about: a coherent device's write is in memory as
soon as the descriptor completes; a noncoherent device's write sits in its cache until someone
cleans it, and memory is wrong until then.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from dmalab.machine.ncdma_host import copy, maint
from dmalab.machine.ncdma_rig import RigDevice, ncdma_rig

SIZE = 1 << 20
KEY_COUNTERS = (
    "desc_completed", "bytes_written", "cache_misses", "cache_writebacks", "stale_reads",
    "iotlb_hits", "iotlb_misses", "iommu_map_events", "translation_faults",
)  # fmt: skip


@dataclass
class Check:
    what: str
    ok: bool


@dataclass
class DeviceResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


async def _copy_through(rig, dev: RigDevice, name: str, coherent: bool) -> DeviceResult:
    result = DeviceResult(name)
    src, dst = rig.alloc(SIZE), rig.alloc(SIZE)
    payload = random.Random(name).randbytes(SIZE)
    await rig.qtest.write(src, payload)
    await rig.qtest.write(dst, bytes(SIZE))
    src_iova, dst_iova = await rig.map(dev, src, SIZE), await rig.map(dev, dst, SIZE)
    done = await dev.host.submit([copy(dst_iova, src_iova, SIZE, cookie=1)])
    result.checks.append(Check(f"COPY of {SIZE >> 20} MiB completed OK", done[0].ok))
    visible = await rig.qtest.read(dst, SIZE) == payload
    if coherent:
        result.checks.append(Check("the copy is in memory at completion", visible))
    else:
        result.checks.append(Check("the copy is NOT in memory before CLEAN", not visible))
        cleaned = await dev.host.submit([maint("CLEAN", dst_iova, SIZE, cookie=2)])
        result.checks.append(Check("CLEAN of the destination completed OK", cleaned[0].ok))
        visible = await rig.qtest.read(dst, SIZE) == payload
        result.checks.append(Check("after CLEAN the copy is in memory, byte-exact", visible))
    result.counters = await rig.qom(dev, "counters")
    return result


async def run_demo(qemu_argv: Sequence[str]) -> list[DeviceResult]:
    async with ncdma_rig(
        qemu_argv, ["", "coherent=on"], iommu="intel-iommu,caching-mode=on", memory_mib=256
    ) as rig:
        cached, coherent = rig.devices
        return [
            await _copy_through(rig, cached, "cached ncdma", coherent=False),
            await _copy_through(rig, coherent, "coherent ncdma", coherent=True),
        ]


def render(results: list[DeviceResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.name}:")
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.what}" for c in r.checks]
    width = max(len(k) for k in KEY_COUNTERS)
    lines.append("")
    lines.append(f"{'counter':<{width}}  " + "  ".join(f"{r.name:>16}" for r in results))
    for key in KEY_COUNTERS:
        lines.append(f"{key:<{width}}  " + "  ".join(f"{r.counters[key]:>16}" for r in results))
    return "\n".join(lines)
