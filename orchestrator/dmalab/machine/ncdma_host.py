"""Drive an ncdma from the host with no guest: ring set-up, descriptors, completions, counters.

The host plays the driver through any bus that reads and writes guest-physical memory and MMIO
(the qtest client). The ring is written at its guest-physical address and programmed into the
device at its IOVA, which differ when an IOMMU translates the device.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from dmalab.errors import CheckFailed
from dmalab.spec import ncdma as spec


class Bus(Protocol):
    async def readl(self, addr: int) -> int: ...
    async def writel(self, addr: int, value: int) -> None: ...
    async def read(self, addr: int, size: int) -> bytes: ...
    async def write(self, addr: int, data: bytes) -> None: ...


@dataclass
class Desc:
    """One descriptor to submit; field names follow spec.Descriptor."""

    opcode: str
    dst: int = 0
    len: int = 0
    src: int = 0
    pattern: int = 0
    cookie: int = 0
    irq: bool = False
    whole: bool = False
    #: Raw overrides for hostile tests: any spec.RawDescriptor field (reserved ones included),
    #: bypassing the helpers above.
    raw: dict[str, Any] = field(default_factory=dict)

    def build(self) -> bytes:
        fields: dict[str, Any] = dict(
            opcode=self.opcode,
            flags=dict(IRQ=self.irq, WHOLE=self.whole),
            status="PENDING",
            cookie=self.cookie,
            src=self.src,
            dst=self.dst,
            len=self.len,
            pattern=self.pattern,
            done=0,
        )
        fields.update(self.raw)
        return spec.RawDescriptor.build(fields)


@dataclass(frozen=True)
class Completion:
    status: str
    done: int
    cookie: int

    @property
    def ok(self) -> bool:
        return self.status == "OK"


class RingStopped(CheckFailed):
    """The device stopped its ring (STATUS.RING_ERROR); `error` is the ERROR register's name."""

    def __init__(self, error: str) -> None:
        super().__init__(f"ncdma stopped its ring: {error}")
        self.error = error


def flags(con: Any, **bits: bool) -> int:
    """The integer value of a FlagsEnum register or field with the named bits set."""
    return int.from_bytes(con.build(bits), "little")


def copy(dst: int, src: int, length: int, cookie: int = 0) -> Desc:
    return Desc("COPY", dst=dst, src=src, len=length, cookie=cookie)


def fill(dst: int, length: int, pattern: int, cookie: int = 0) -> Desc:
    return Desc("FILL", dst=dst, len=length, pattern=pattern, cookie=cookie)


def maint(op: str, dst: int = 0, length: int = 0, cookie: int = 0) -> Desc:
    """CLEAN, INVALIDATE or CLEAN_INVALIDATE of [dst, dst + length), or of all lines if length 0."""
    return Desc(op, dst=dst, len=length, whole=length == 0, cookie=cookie)


def fill_bytes(length: int, pattern: int, phase: int = 0) -> bytes:
    """What FILL writes: byte i is byte (phase + i) mod 8 of the little-endian pattern."""
    pat = pattern.to_bytes(8, "little")
    rot = pat[phase % 8 :] + pat[: phase % 8]
    return (rot * (length // 8 + 1))[:length]


class NcdmaHost:
    def __init__(self, bus: Bus, bar0: int, ring_pa: int, ring_iova: int, entries: int = 256):
        self.bus = bus
        self.bar0 = bar0
        self.ring_pa = ring_pa
        self.ring_iova = ring_iova
        self.entries = entries
        self.tail = 0

    async def reg(self, name: str) -> int:
        return await self.bus.readl(self.bar0 + spec.REG[name])

    async def set_reg(self, name: str, value: int) -> None:
        await self.bus.writel(self.bar0 + spec.REG[name], value)

    async def enable(self, *, irq: bool = False) -> None:
        await self.set_reg("CTRL", flags(spec.Ctrl, RESET=True))
        await self.set_reg("RING_BASE_LO", self.ring_iova & 0xFFFFFFFF)
        await self.set_reg("RING_BASE_HI", self.ring_iova >> 32)
        await self.set_reg("RING_SIZE", self.entries)
        await self.set_reg("CTRL", flags(spec.Ctrl, ENABLE=True, IRQ_ENABLE=irq))
        self.tail = 0
        await self.check_running()

    async def check_running(self) -> None:
        if await self.reg("STATUS") & flags(spec.DevStatus, RING_ERROR=True):
            raise RingStopped(await self.ring_error())

    async def ring_error(self) -> str:
        return str(spec.RingError.parse((await self.reg("ERROR")).to_bytes(4, "little")))

    async def counters(self) -> dict[str, int]:
        raw = await self.bus.read(self.bar0 + spec.COUNTERS_OFFSET, spec.Counters.sizeof())
        parsed = spec.Counters.parse(raw)
        return {name: parsed[name] for name in spec.COUNTER_NAMES}

    async def submit(self, descs: list[Desc], *, timeout: float = 60.0) -> list[Completion]:
        """Write descriptors at the tail, ring the doorbell, wait for all of them to complete."""
        results: list[Completion] = []
        for start in range(0, len(descs), self.entries - 1):
            batch = descs[start : start + self.entries - 1]
            slots = await self._publish(batch)
            await self._wait_head(self.tail, timeout)
            results += [await self._completion(slot) for slot in slots]
        return results

    async def _publish(self, batch: list[Desc]) -> list[int]:
        slots = []
        run_start, run = self.tail, bytearray()
        for d in batch:
            slots.append(self.tail)
            run += d.build()
            self.tail = (self.tail + 1) % self.entries
            if self.tail == 0:  # the ring wraps: write what lies before the end
                await self.bus.write(self.ring_pa + run_start * spec.DESC_SIZE, bytes(run))
                run_start, run = 0, bytearray()
        if run:
            await self.bus.write(self.ring_pa + run_start * spec.DESC_SIZE, bytes(run))
        await self.set_reg("RING_TAIL", self.tail)
        return slots

    async def _wait_head(self, target: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if await self.reg("RING_HEAD") == target:
                return
            await self.check_running()
            if time.monotonic() > deadline:
                raise CheckFailed(f"ncdma did not reach ring entry {target} within {timeout} s")
            await asyncio.sleep(0)

    async def _completion(self, slot: int) -> Completion:
        raw = await self.bus.read(self.ring_pa + slot * spec.DESC_SIZE, spec.DESC_SIZE)
        d = spec.RawDescriptor.parse(raw)  # a hostile test may have set reserved fields
        return Completion(status=str(d.status), done=d.done, cookie=d.cookie)
