"""What the guest kernel itself did: its IOMMU and DMA-API trace events, read through the agent.

The second observer of mapping reuse, beside the device's own MAP/UNMAP counters, and the only
one where the vIOMMU sends no MAP notifications (QEMU's SMMUv3). The kernel's tracefs (under
debugfs, which /init mounts) records `iommu/map` and `iommu/unmap` for every IOMMU page-table
change and the `dma/` events (dma_map_sg, dma_sync_sg_for_cpu/for_device, ...) for every DMA-API
call, each with the device's PCI name. Linux 6.12's dma-iommu maps a scatterlist with one
`iommu/map` event per physically contiguous piece (`iommu_map_sg` calls `iommu_map_nosync` per
piece) and unmaps it with one `iommu/unmap` for the whole IOVA range.

`GuestTrace.start()` switches the events on (a machine restored from a snapshot taken after a
start has them on already: then it only checks); `take()` returns the events recorded since the
previous call. The trace buffer is never cleared (the agent has no O_TRUNC open): events are told
apart by their timestamps, so each `take()` reads the whole buffer, a few KiB per scenario step.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmalab.machine.agent import AgentError

TRACING = "/sys/kernel/debug/tracing"
#: Event groups switched on; `dma` is the whole DMA-API group (absent before Linux 6.10).
EVENTS = ("iommu/map", "iommu/unmap", "dma")
BUFFER_KB = 4096
READ_MAX = 4 << 20

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<time>\d+\.\d+):"
    r"\s+(?P<name>\w+):\s?(?P<text>.*)$"
)
_DEVICE = re.compile(r"^(?P<device>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s")


@dataclass(frozen=True)
class TraceEvent:
    time: float
    name: str  # map, unmap, dma_map_sg, dma_sync_sg_for_cpu, ...
    text: str
    device: str | None  # the PCI name dma/ events carry, e.g. 0000:01:00.0

    @property
    def line(self) -> str:
        return f"{self.time:.6f} {self.name}: {self.text}"


def parse(text: str) -> list[TraceEvent]:
    """The events of a tracefs `trace` file, oldest first (header lines skipped)."""
    events = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if match is None:
            continue
        body = match["text"]
        device = _DEVICE.match(body)
        events.append(
            TraceEvent(
                float(match["time"]), match["name"], body, device["device"] if device else None
            )
        )
    return events


class GuestTrace:
    """The guest kernel's IOMMU and DMA-API events, step by step, through `agent`."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.enabled: list[str] = []
        self._last = -1.0
        self._at_last = 0  # events at exactly `_last` already returned
        self._lock = asyncio.Lock()  # concurrent steps take in turn

    async def start(self) -> list[str]:
        """Switch the events on (idempotent); returns the groups this kernel has.

        What is already in place is left alone: writing a tracefs switch costs the guest tens of
        milliseconds even when nothing changes, and a machine restored from a snapshot taken
        after a start has everything on already."""
        self.enabled = []
        for group in EVENTS:
            try:
                if not await self._reads(f"events/{group}/enable", lambda v: v == "1"):
                    await self.agent.write_file(f"{TRACING}/events/{group}/enable", "1")
            except AgentError as exc:
                if exc.name != "ENOENT":  # absent: an older kernel; observe what it has
                    raise
                continue
            self.enabled.append(group)
        if self.enabled:
            # The kernel rounds the size up to whole pages: at least BUFFER_KB will do.
            if not await self._reads(
                "buffer_size_kb", lambda v: v.isdigit() and int(v) >= BUFFER_KB
            ):
                await self.agent.write_file(f"{TRACING}/buffer_size_kb", str(BUFFER_KB))
            await self.take()  # what happened before the start is not the first step's
        return self.enabled

    async def _reads(self, name: str, ok: Callable[[str], bool]) -> bool:
        """Whether the tracefs file `name` holds what `ok` accepts."""
        value = await self.agent.read_file(f"{TRACING}/{name}", 64)
        return ok(value.decode(errors="replace").strip())

    async def take(self) -> list[TraceEvent]:
        """The events recorded since the previous call."""
        if not self.enabled:
            return []
        async with self._lock:
            text = await self.agent.read_file(f"{TRACING}/trace", READ_MAX)
            return self._since_last(text.decode(errors="replace"))

    def _since_last(self, text: str) -> list[TraceEvent]:
        new = []
        at_last = 0
        for event in parse(text):
            if event.time < self._last:
                continue
            if event.time == self._last:
                at_last += 1
                if at_last <= self._at_last:
                    continue
            new.append(event)
        if new:
            last = new[-1].time
            same = sum(1 for e in new if e.time == last)
            self._at_last = same + (self._at_last if last == self._last else 0)
            self._last = last
        return new
