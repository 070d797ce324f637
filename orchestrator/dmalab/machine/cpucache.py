"""The CPU cache model of a noncoherent arm64 machine, over QMP (docs/cpu-cache-model.md).

QEMU's virt machine started with `x-noncoherent=on` has `/machine/cpucache`: its `counters`
(detections by kind, cleans, invalidates, DMA bytes) and a bounded `log` of detections, each
with the line's physical address, the IOVA when a device made the access, the bytes, the vCPU,
the guest PC and a short backtrace (for a device's access: the doorbell write's). `take()`
returns the events not seen yet and drains them from QEMU's log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

PATH = "/machine/cpucache"
KINDS = ("DEVICE_READ_STALE", "CPU_READ_STALE", "CPU_WRITE_LOST", "CPU_CLOBBER")


@dataclass(frozen=True)
class CacheEvent:
    seq: int
    kind: str
    master: str  # "cpu" or the device's id
    vcpu: int  # -1: not known
    pid: int  # CONTEXTIDR_EL1 of that vCPU: the running task's PID under Linux; 0: none
    pc: int  # guest PC; 0: not known
    frames: tuple[int, ...]  # the PC, the link register, then frame records' return addresses
    pa: int  # the line
    iova: int  # -1: not known
    differing: int
    expected: bytes
    actual: bytes

    @classmethod
    def from_qmp(cls, e: dict[str, Any]) -> CacheEvent:
        return cls(
            seq=e["seq"],
            kind=e["kind"],
            master=e["master"],
            vcpu=e["vcpu"],
            pid=e.get("context", 0),
            pc=e["pc"],
            frames=tuple(e.get("frames", ())),
            pa=e["pa"],
            iova=e["iova"],
            differing=e["differing"],
            expected=bytes.fromhex(e["expected"]),
            actual=bytes.fromhex(e["actual"]),
        )


class CpuCacheModel:
    """The model of one machine; `present` is False on a coherent one."""

    def __init__(self, qmp: QMPClient) -> None:
        self.qmp = qmp
        self.present = False

    async def probe(self) -> bool:
        try:
            await self.qmp.execute("qom-list", {"path": PATH})
        except ExecuteError:
            self.present = False
        else:
            self.present = True
        return self.present

    async def counters(self) -> dict[str, int]:
        out: dict[str, int] = await self.qmp.execute(
            "qom-get", {"path": PATH, "property": "counters"}
        )
        return out

    async def take(self) -> list[CacheEvent]:
        """The events logged since the last call (QEMU keeps at most 256 unread)."""
        raw = await self.qmp.execute("qom-get", {"path": PATH, "property": "log"})
        events = [CacheEvent.from_qmp(e) for e in raw]
        if events:
            await self.qmp.execute(
                "qom-set", {"path": PATH, "property": "log-read", "value": events[-1].seq}
            )
        return events
