"""A seeded, reproducible random-operation engine that plays a hostile driver against ncdma.

The engine boots an `ncdma_rig` per configuration and draws *steps* from a weighted mix:

- random register writes (every BAR0 offset, 32- and 64-bit, random or edge values, CTRL,
  RING_*, IRQ_STATUS included),
- descriptor batches (every opcode including invalid ones, flags including reserved bits,
  addresses inside buffers, elsewhere in RAM, beyond RAM, near 2^64, in the device's own BAR,
  lengths biased small but sometimes huge), on the healthy ring or, now and then, on whatever
  ring the register writes left behind,
- host writes into the buffers,
- with an IOMMU, random map / unmap / remap (with random permissions) of buffer pages,
- rarely, `reset-stats` over QMP.

One operation is one descriptor, one register write, one memory write, one map or unmap, or one
reset-stats. The operation stream depends only on the seed and the configuration name (never on
what the device answers), so `--seed S` with at least the failing operation index replays a
failure exactly.

After every step the device must be quiescent (not BUSY) within `QUIESCE_TIMEOUT` and these
invariants hold, or `CheckFailed` names the seed, configuration, operation index and last ops:

- QEMU answers QMP, and the QMP counters equal the BAR0 counters;
- the read-write registers read back what was written, CTRL and ERROR match a model of the
  documented register semantics (FETCH_FAULT / STATUS_FAULT may appear on their own);
- RING_HEAD and RING_TAIL are below the latched ring size; ERROR is a known RingError, and is
  NONE exactly when STATUS.RING_ERROR is clear;
- every descriptor the device passed has a known, non-PENDING status, `done` <= `len`, the status
  the documented checks predict (BAD_OPCODE/FLAGS/LENGTH/ADDRESS) and `done == len` when OK;
- counters never decrease (except across reset-stats); on the healthy ring, desc_completed and
  desc_errors grow by exactly the number of OK and failed descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmalab.errors import CheckFailed
from dmalab.machine.ncdma_rig import PAGE, NcdmaRig, RigDevice, ncdma_rig
from dmalab.machine.pci import MMIO64_WINDOW
from dmalab.machine.process import QemuDied
from dmalab.spec import ncdma as spec

U64 = (1 << 64) - 1
REG = spec.REG
REGS_SPAN = REG["COMPLETED"] + 4  # ID .. COMPLETED, read in one go
ST = {name: int(value) for name, value in spec.Status.encmapping.items()}
RERR = {name: int(value) for name, value in spec.RingError.encmapping.items()}
OPS = {name: int(value) for name, value in spec.Opcode.encmapping.items()}
KNOWN_STATUS = {v: str(k) for k, v in ST.items()}
KNOWN_RERR = {v: str(k) for k, v in RERR.items()}
F_IRQ, F_WHOLE = 0x1, 0x2
CTRL_ENABLE, CTRL_RESET, CTRL_IRQ = 0x1, 0x2, 0x4
STATUS_ENABLED, STATUS_BUSY, STATUS_RING_ERROR = 0x1, 0x2, 0x4
DATA_OPS = (OPS["COPY"], OPS["FILL"])
MAINT_OPS = (OPS["CLEAN"], OPS["INVALIDATE"], OPS["CLEAN_INVALIDATE"])

#: Seconds the device may stay BUSY after a step before the engine calls it a hang.
QUIESCE_TIMEOUT = 30.0
#: Buffers the engine owns: count and size (bytes) of each.
BUFFERS = 4
BUFFER_SIZE = 4 * PAGE
#: Free RAM below the rig's allocator (which starts at 16 MiB): "elsewhere in RAM" targets.
SCRATCH = (0x10_0000, 0x100_0000)
#: Free RAM at the very top of guest RAM (the allocator hands out low addresses first).
TOP_SPAN = 0x1_0000
LAST_OPS = 16


@dataclass(frozen=True)
class FuzzConfig:
    name: str
    device: str
    iommu: str | None = None
    summary: str = ""


CONFIGS: dict[str, FuzzConfig] = {
    c.name: c
    for c in (
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
    )
}


# ----------------------------------------------------------------------------------------------
# Operations


@dataclass(frozen=True)
class RegWrite:
    offset: int
    value: int
    width: int = 4  # 4 or 8

    def __str__(self) -> str:
        name = next((n for n, o in REG.items() if o == self.offset), None)
        where = f"{self.offset:#05x}" + (f"({name})" if name else "")
        return f"write{'q' if self.width == 8 else 'l'} BAR0+{where} = {self.value:#x}"


@dataclass(frozen=True)
class DescOp:
    opcode: int
    flags: int
    src: int
    dst: int
    len: int
    pattern: int
    cookie: int
    reserved0: int = 0
    reserved1: int = 0

    def raw(self) -> bytes:
        return struct.pack(
            "<BBHIQQQQQQQ",
            self.opcode,
            self.flags,
            self.reserved0,
            0,
            self.cookie,
            self.src,
            self.dst,
            self.len,
            self.pattern,
            0,
            self.reserved1,
        )

    def __str__(self) -> str:
        op = next((n for n, v in OPS.items() if v == self.opcode), str(self.opcode))
        extra = ""
        if self.reserved0 or self.reserved1:
            extra = f" reserved0={self.reserved0:#x} reserved1={self.reserved1:#x}"
        return (
            f"desc {op} flags={self.flags:#x} src={self.src:#x} dst={self.dst:#x} "
            f"len={self.len:#x} pattern={self.pattern:#x} cookie={self.cookie}{extra}"
        )


@dataclass(frozen=True)
class Doorbell:
    """Write RING_TAIL after descriptors were written at `first` (the step's own TAIL write)."""

    tail: int

    def __str__(self) -> str:
        return f"doorbell RING_TAIL = {self.tail}"


@dataclass(frozen=True)
class MemWrite:
    pa: int
    data: bytes

    def __str__(self) -> str:
        return f"host write {len(self.data)} bytes at PA {self.pa:#x}"


@dataclass(frozen=True)
class MapOp:
    iova: int
    pa: int | None  # None: unmap
    read: bool = True
    write: bool = True

    def __str__(self) -> str:
        if self.pa is None:
            return f"unmap IOVA {self.iova:#x}"
        perms = ("r" if self.read else "") + ("w" if self.write else "")
        return f"map IOVA {self.iova:#x} -> PA {self.pa:#x} {perms}"


@dataclass(frozen=True)
class ResetStats:
    def __str__(self) -> str:
        return "qom-set reset-stats true"


Op = RegWrite | DescOp | Doorbell | MemWrite | MapOp | ResetStats


@dataclass
class Step:
    """Operations run back to back, then the invariants are checked."""

    kind: str
    ops: list[Op]
    #: descriptor batch on the healthy ring: the slot of each DescOp (else empty)
    slots: list[int] = field(default_factory=list)
    healthy: bool = False


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


# ----------------------------------------------------------------------------------------------
# The register model (docs/ncdma.md, "Registers" and "Ring protocol")


@dataclass
class RegModel:
    ctrl: int = 0
    base: int = 0
    size: int = 0
    latched: int = 0  # ring entries latched at ENABLE; 0: not configured
    error: int = 0
    #: a fetch or completion fault may stop the ring on its own (a foreign ring ran)
    may_fault: bool = False

    def write(self, offset: int, value: int) -> None:
        value &= 0xFFFF_FFFF
        if offset == REG["CTRL"]:
            if value & CTRL_RESET:
                self.ctrl, self.error, self.latched = 0, 0, 0
                return
            was = self.ctrl & CTRL_ENABLE
            self.ctrl = value & (CTRL_ENABLE | CTRL_IRQ)
            if value & CTRL_ENABLE and not was and not self.error:
                if not (2 <= self.size <= spec.RING_MAX_ENTRIES) or self.size & (self.size - 1):
                    self.error = RERR["BAD_SIZE"]
                elif self.base % spec.DESC_SIZE or self.base + self.size * spec.DESC_SIZE - 1 > U64:
                    self.error = RERR["BAD_BASE"]
                else:
                    self.latched = self.size
        elif offset == REG["RING_BASE_LO"]:
            self.base = (self.base & ~0xFFFF_FFFF) | value
        elif offset == REG["RING_BASE_HI"]:
            self.base = (self.base & 0xFFFF_FFFF) | value << 32
        elif offset == REG["RING_SIZE"]:
            self.size = value
        elif offset == REG["RING_TAIL"]:
            if self.error:
                return
            if not self.ctrl & CTRL_ENABLE or not self.latched:
                self.error = RERR["NOT_READY"]
            elif value >= self.latched:
                self.error = RERR["BAD_TAIL"]
            else:
                self.may_fault = True

    def rings_bell(self, offset: int, value: int) -> bool:
        """Whether this 32-bit write makes the device run (the step must settle before the next)."""
        return (
            offset == REG["RING_TAIL"]
            and not self.error
            and self.ctrl & CTRL_ENABLE
            and self.latched
            and (value & 0xFFFF_FFFF) < self.latched
        )


def expected_check(d: DescOp, max_xfer: int) -> int | None:
    """The status the documented descriptor checks give, or None when the transfer is attempted."""
    if d.flags & ~spec.DESC_FLAGS_VALID or d.reserved0 or d.reserved1:
        return ST["BAD_FLAGS"]
    whole = d.flags & F_WHOLE
    if d.opcode == OPS["NOP"]:
        return ST["OK"]
    if d.opcode in DATA_OPS:
        if whole:
            return ST["BAD_FLAGS"]
    elif d.opcode in MAINT_OPS:
        if whole:
            return ST["OK"]
    else:
        return ST["BAD_OPCODE"]
    if d.len == 0 or d.len > max_xfer:
        return ST["BAD_LENGTH"]
    if d.dst + d.len - 1 > U64 or (d.opcode == OPS["COPY"] and d.src + d.len - 1 > U64):
        return ST["BAD_ADDRESS"]
    return None


# ----------------------------------------------------------------------------------------------
# The generator: a pure function of (seed, config) and its own model


class Generator:
    def __init__(self, seed: int, config: FuzzConfig, layout: Layout) -> None:
        self.rng = random.Random(f"ncdma-fuzz:{seed}:{config.name}")
        self.config = config
        self.layout = layout
        # The rig hands the device over with its ring enabled at HEAD = TAIL = 0.
        self.model = RegModel(
            ctrl=CTRL_ENABLE,
            base=layout.ring_iova,
            size=layout.ring_entries,
            latched=layout.ring_entries,
        )
        self.healthy = True  # the ring is ours, enabled, no error, tail known
        self.tail = 0
        self.cookie = 0
        self.mapped: dict[int, tuple[int, bool, bool]] = {}  # IOVA page -> (PA, r, w)
        if layout.iommu:
            for b in range(BUFFERS):
                for p in range(0, BUFFER_SIZE, PAGE):
                    self.mapped[layout.buf_iova[b] + p] = (layout.buf_pa[b] + p, True, True)

    # -- steps ---------------------------------------------------------------------------------

    def step(self) -> Step:
        r = self.rng
        kinds = ["desc", "reg", "mem"] + (["map"] if self.layout.iommu else []) + ["stats"]
        weights = [55, 20, 15] + ([10] if self.layout.iommu else []) + [0.5]
        kind = r.choices(kinds, weights)[0]
        if kind == "desc":
            return self._desc_step()
        if kind == "mem":
            return Step("mem", [self._mem_write() for _ in range(r.randint(1, 8))])
        ops: list[Op]
        if kind == "reg":
            ops = [self._reg_write() for _ in range(r.randint(1, 12))]
        elif kind == "map":
            ops = [self._map_op() for _ in range(r.randint(1, 4))]
        else:
            ops = [ResetStats()]
        for op in ops:
            self.apply(op)
        return Step(kind, ops)

    def apply(self, op: Op) -> None:
        """Keep the model in step with an operation the engine is about to run."""
        if isinstance(op, RegWrite):
            self.model.write(op.offset, op.value)
            if op.width == 8:
                self.model.write(op.offset + 4, op.value >> 32)
            self.healthy = False
        elif isinstance(op, Doorbell):
            self.model.write(REG["RING_TAIL"], op.tail)
        elif isinstance(op, MapOp):
            if op.pa is None:
                self.mapped.pop(op.iova, None)
            else:
                self.mapped[op.iova] = (op.pa, op.read, op.write)

    def _rearm(self) -> list[Op]:
        lay = self.layout
        irq = CTRL_IRQ if self.rng.random() < 0.3 else 0
        ops: list[Op] = [
            RegWrite(REG["CTRL"], CTRL_RESET),
            RegWrite(REG["RING_BASE_LO"], lay.ring_iova & 0xFFFF_FFFF),
            RegWrite(REG["RING_BASE_HI"], lay.ring_iova >> 32),
            RegWrite(REG["RING_SIZE"], lay.ring_entries),
            RegWrite(REG["CTRL"], CTRL_ENABLE | irq),
        ]
        return ops

    def _desc_step(self) -> Step:
        r = self.rng
        ops: list[Op] = []
        hostile = r.random() < 0.08
        if hostile:
            self.healthy = False
        if not self.healthy and not hostile:
            ops += self._rearm()
            for op in ops:
                self.apply(op)
            self.healthy, self.tail = True, 0
        n = r.choice((1, 1, 2, 4, 8, 16, 32, 64, r.randint(1, 64), r.randint(1, 255)))
        n = min(n, self.layout.ring_entries - 1)
        slots = []
        for _ in range(n):
            slots.append(self.tail)
            ops.append(self._desc())
            self.tail = (self.tail + 1) % self.layout.ring_entries
        if hostile and r.random() < 0.5:
            bell = Doorbell(r.choice((self.tail, r.getrandbits(32), r.randrange(1 << 17))))
        else:
            bell = Doorbell(self.tail)
        ops.append(bell)
        healthy = self.healthy
        self.apply(bell)
        if not healthy:
            self.tail = 0  # unknown ring state: the next healthy batch re-arms
        return Step("desc" if healthy else "desc-hostile", ops, slots if healthy else [], healthy)

    # -- values --------------------------------------------------------------------------------

    def _reg_write(self) -> RegWrite:
        r = self.rng
        hot = [
            REG[n]
            for n in (
                "CTRL",
                "IRQ_STATUS",
                "RING_BASE_LO",
                "RING_BASE_HI",
                "RING_SIZE",
                "RING_TAIL",
            )
        ]
        x = r.random()
        if x < 0.6:
            offset = r.choice(hot)
        elif x < 0.8:
            offset = r.randrange(0, REGS_SPAN, 4)
        else:
            offset = r.randrange(0, spec.REGS_BAR_SIZE, 4)
        width = 8 if r.random() < 0.1 and offset <= spec.REGS_BAR_SIZE - 8 else 4
        value = self._reg_value(offset)
        if width == 8:
            value |= self._reg_value(offset + 4) << 32
        return RegWrite(offset, value, width)

    def _reg_value(self, offset: int) -> int:
        r = self.rng
        lay = self.layout
        if r.random() < 0.25:
            return r.getrandbits(32)
        if offset == REG["CTRL"]:
            return r.choice((0, 1, 2, 3, 4, 5, 6, 7, 0xFFFF_FFFF, 1 | 8, 0x80000001))
        if offset == REG["RING_BASE_LO"]:
            return r.choice(
                (
                    lay.ring_iova & 0xFFFF_FFFF,
                    (lay.ring_iova + 8) & 0xFFFF_FFFF,
                    0,
                    0xFFFF_FFC0,
                    r.randrange(0, 1 << 32, 64),
                )
            )
        if offset == REG["RING_BASE_HI"]:
            return r.choice((lay.ring_iova >> 32, 0, 0xFFFF_FFFF, r.getrandbits(32)))
        if offset == REG["RING_SIZE"]:
            return r.choice(
                (
                    0,
                    1,
                    2,
                    3,
                    4,
                    lay.ring_entries,
                    100,
                    65536,
                    65537,
                    131072,
                    1 << r.randrange(0, 32),
                )
            )
        if offset == REG["RING_TAIL"]:
            return r.choice(
                (
                    0,
                    1,
                    lay.ring_entries - 1,
                    lay.ring_entries,
                    65535,
                    65536,
                    r.randrange(lay.ring_entries),
                    0xFFFF_FFFF,
                )
            )
        if offset == REG["IRQ_STATUS"]:
            return r.choice((0, 1, 2, 3, 0xFFFF_FFFF))
        return r.choice((0, 1, 0xFFFF_FFFF))

    def _desc(self) -> DescOp:
        r = self.rng
        x = r.random()
        if x < 0.32:
            opcode = OPS["COPY"]
        elif x < 0.60:
            opcode = OPS["FILL"]
        elif x < 0.80:
            opcode = r.choice(MAINT_OPS)
        elif x < 0.88:
            opcode = OPS["NOP"]
        else:
            opcode = r.randrange(6, 256)
        flags = F_IRQ if r.random() < 0.2 else 0
        if opcode in MAINT_OPS and r.random() < 0.3:  # noqa: SIM114 (distinct odds)
            flags |= F_WHOLE
        elif r.random() < 0.03:
            flags |= F_WHOLE
        if r.random() < 0.03:
            flags = r.getrandbits(8)
        reserved0 = r.getrandbits(16) if r.random() < 0.02 else 0
        reserved1 = r.getrandbits(64) if r.random() < 0.02 else 0
        length = self._length()
        dst = self._address(length)
        if opcode == OPS["COPY"] or r.random() < 0.1:
            src = self._address(length)
        else:  # ignored by the device; sometimes garbage
            src = r.getrandbits(64) if r.random() < 0.05 else 0
        self.cookie += 1
        return DescOp(
            opcode, flags, src, dst, length, r.getrandbits(64), self.cookie, reserved0, reserved1
        )

    def _length(self) -> int:
        r = self.rng
        x = r.random()
        if x < 0.35:
            return r.randint(1, 64)
        if x < 0.65:
            return r.randint(1, PAGE)
        if x < 0.85:
            return r.randint(1, BUFFER_SIZE + PAGE)
        if x < 0.88:
            return r.choice((PAGE, 2 * PAGE, BUFFER_SIZE, 64 * 1024, 64 * 1024 + 1))
        if x < 0.91:
            return 0
        if x < 0.94:
            # MAX_XFER itself is rare: without an IOMMU it really moves 64 MiB
            big = self.layout.max_xfer if r.random() < 0.1 else self.layout.max_xfer + 1
            return r.choice((big, self.layout.max_xfer + 1, 1 << 32))
        if x < 0.97:
            return r.choice((U64, 1 << 63, r.getrandbits(64), r.getrandbits(40)))
        return r.randint(1, 1 << 20)

    def _address(self, length: int) -> int:
        """An address for [addr, addr + length) (length only keeps RAM targets in their area)."""
        r = self.rng
        lay = self.layout
        x = r.random()
        if x < 0.78:  # inside (or running off) a buffer
            b = r.randrange(BUFFERS)
            base = lay.buf_iova[b] if lay.iommu else lay.buf_pa[b]
            return base + r.choice(
                (
                    0,
                    r.randrange(BUFFER_SIZE),
                    r.randrange(0, BUFFER_SIZE, 64),
                    BUFFER_SIZE - 1,
                    BUFFER_SIZE - 64,
                    PAGE - 1,
                )
            )
        lo, hi = SCRATCH
        if x < 0.84 and length < hi - lo:
            # elsewhere in RAM (as an IOVA: unmapped when an IOMMU translates), kept inside the
            # scratch area so the ring and the buffers above it are never overwritten
            return lo + r.randrange(hi - lo - length)
        if x < 0.88:  # the top of RAM: runs off its end
            return lay.ram_end - r.randint(1, TOP_SPAN)
        if x < 0.94:  # beyond RAM: unassigned holes below and above 4 GiB
            return r.choice(
                (
                    r.randrange(lay.ram_end, 0xB000_0000),
                    r.randrange(1 << 32, MMIO64_WINDOW[0]),
                    r.randrange(MMIO64_WINDOW[1], 1 << 46),
                )
            )
        if x < 0.985:  # near 2^64
            return U64 + 1 - r.choice((1, 64, PAGE, r.randint(1, 1 << 20)))
        if x < 0.995 and not lay.iommu:  # the device's own registers (reentrancy)
            return lay.bar0 + r.randrange(0, spec.REGS_BAR_SIZE, 4)
        return r.getrandbits(64)

    def _mem_write(self) -> MemWrite:
        r = self.rng
        b = r.randrange(BUFFERS)
        off = r.randrange(BUFFER_SIZE)
        n = min(BUFFER_SIZE - off, r.choice((1, 8, 64, r.randint(1, 256), r.randint(1, PAGE))))
        return MemWrite(self.layout.buf_pa[b] + off, r.randbytes(n))

    def _map_op(self) -> MapOp:
        r = self.rng
        lay = self.layout
        b = r.randrange(BUFFERS)
        page = r.randrange(0, BUFFER_SIZE, PAGE)
        iova = lay.buf_iova[b] + page
        x = r.random()
        if x < 0.4:
            op = MapOp(iova, None)
        elif x < 0.75:
            op = MapOp(iova, lay.buf_pa[b] + page)
        else:
            pa = lay.buf_pa[r.randrange(BUFFERS)] + r.randrange(0, BUFFER_SIZE, PAGE)
            read, write = r.choice(((True, True), (True, False), (False, True)))
            op = MapOp(iova, pa, read, write)
        return op


@dataclass
class Layout:
    iommu: bool
    ring_pa: int
    ring_iova: int
    ring_entries: int
    buf_pa: list[int]
    buf_iova: list[int]
    ram_end: int
    bar0: int
    max_xfer: int


# ----------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Progress:
    config: str
    ops: int
    total: int
    seconds: float


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
        self.gen = Generator(seed, config, layout)
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
        q = self.q
        if step.kind.startswith("desc"):
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
            else:
                start = 0  # a hostile doorbell: descriptors go at the start of our ring
                await q.write(
                    self.layout.ring_pa + start * spec.DESC_SIZE, b"".join(d.raw() for d in descs)
                )
            for d in descs:
                self._record(d)
            for f in pending:
                await f
            bell = step.ops[-1]
            assert isinstance(bell, Doorbell)
            self._record(bell)
            await q.writel(self.bar0 + REG["RING_TAIL"], bell.tail)
            await self._quiesce()
            return
        if step.kind == "reg":
            pending = []
            model = dataclasses.replace(before)  # replay the model alongside
            for op in step.ops:
                assert isinstance(op, RegWrite)
                self._record(op)
                cmd = "writeq" if op.width == 8 else "writel"
                pending.append(q.submit(f"{cmd} {self.bar0 + op.offset:#x} {op.value:#x}"))
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
            return
        if step.kind == "mem":
            pending = []
            for op in step.ops:
                assert isinstance(op, MemWrite)
                self._record(op)
                pending.append(self.q.write(op.pa, op.data))
            await asyncio.gather(*pending)
            return
        if step.kind == "map":
            for op in step.ops:
                assert isinstance(op, MapOp)
                self._record(op)
                if op.pa is None:
                    await self.rig.unmap(self.dev, op.iova, PAGE)
                else:
                    await self.rig.map(
                        self.dev, op.pa, PAGE, iova=op.iova, read=op.read, write=op.write
                    )
            return
        if step.kind == "stats":
            for op in step.ops:
                self._record(op)
            await self.rig.reset_stats(self.dev)
            self.counters = None
            return
        raise AssertionError(step.kind)

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
        try:
            qmp_counters = await asyncio.wait_for(self.rig.qom(self.dev, "counters"), 10.0)
        except Exception as exc:
            raise self.fail(f"QEMU does not answer QMP: {exc!r}") from exc

        regs = dict(zip(spec.REG, struct.unpack(f"<{REGS_SPAN // 4}I", regs_raw), strict=False))
        parsed = spec.Counters.parse(cnt_raw)
        counters = {name: parsed[name] for name in spec.COUNTER_NAMES}
        if qmp_counters != counters:
            diff = {
                k: (counters[k], qmp_counters.get(k))
                for k in counters
                if counters[k] != qmp_counters.get(k)
            }
            raise self.fail(f"QMP counters differ from BAR0 counters: {diff}")

        m = self.gen.model
        status, error = regs["STATUS"], regs["ERROR"]
        if regs["ID"] != spec.ID_MAGIC or regs["VERSION"] != spec.VERSION:
            raise self.fail(f"ID/VERSION read {regs['ID']:#x}/{regs['VERSION']:#x}")
        if error not in KNOWN_RERR:
            raise self.fail(f"ERROR = {error:#x} is not a known RingError")
        if bool(status & STATUS_RING_ERROR) != (error != RERR["NONE"]):
            raise self.fail(f"STATUS {status:#x} and ERROR {KNOWN_RERR[error]} disagree")
        if status & STATUS_BUSY:
            raise self.fail(f"STATUS {status:#x}: still BUSY after the step settled")
        if error != m.error:
            if (
                m.error == 0
                and m.may_fault
                and error in (RERR["FETCH_FAULT"], RERR["STATUS_FAULT"])
            ):
                m.error = error
            else:
                raise self.fail(
                    f"ERROR is {KNOWN_RERR[error]}, the documented semantics give "
                    f"{KNOWN_RERR.get(m.error, m.error)}"
                )
        if error:
            name = KNOWN_RERR[error]
            self.ring_errors[name] = self.ring_errors.get(name, 0) + 1
        for reg, want in (
            ("CTRL", m.ctrl),
            ("RING_BASE_LO", m.base & 0xFFFF_FFFF),
            ("RING_BASE_HI", m.base >> 32),
            ("RING_SIZE", m.size),
        ):
            if regs[reg] != want:
                raise self.fail(f"{reg} reads {regs[reg]:#x}, expected {want:#x}")
        limit = m.latched or 1
        if regs["RING_HEAD"] >= limit or regs["RING_TAIL"] >= limit:
            raise self.fail(
                f"RING_HEAD {regs['RING_HEAD']} / RING_TAIL {regs['RING_TAIL']} "
                f"outside the latched ring of {m.latched} entries"
            )
        if bool(status & STATUS_ENABLED) != bool(m.ctrl & CTRL_ENABLE):
            raise self.fail(f"STATUS {status:#x} vs CTRL {m.ctrl:#x}")

        ok = bad = 0
        if step.slots:
            if error:
                raise self.fail(f"the healthy ring stopped: {KNOWN_RERR[error]}")
            bell = step.ops[-1]
            assert isinstance(bell, Doorbell)
            if regs["RING_HEAD"] != bell.tail:
                raise self.fail(f"RING_HEAD {regs['RING_HEAD']}, expected {bell.tail}")
            descs = [op for op in step.ops if isinstance(op, DescOp)]
            for slot, d in zip(step.slots, descs, strict=True):
                raw = ring[slot * spec.DESC_SIZE : (slot + 1) * spec.DESC_SIZE]
                st, done = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<Q", raw, 48)[0]
                self._check_completion(d, st, done)
                ok += st == ST["OK"]
                bad += st != ST["OK"]
            self.descriptors += len(descs)

        if self.counters is not None:
            for name, value in counters.items():
                if value < self.counters[name]:
                    raise self.fail(
                        f"counter {name} went back from {self.counters[name]} to {value}"
                    )
            if step.slots:
                grew_ok = counters["desc_completed"] - self.counters["desc_completed"]
                grew_bad = counters["desc_errors"] - self.counters["desc_errors"]
                if (grew_ok, grew_bad) != (ok, bad):
                    raise self.fail(
                        f"desc_completed/desc_errors grew by {grew_ok}/{grew_bad}, "
                        f"the ring shows {ok} OK / {bad} failed"
                    )
        self.counters = counters

    def _check_completion(self, d: DescOp, st: int, done: int) -> None:
        name = KNOWN_STATUS.get(st)
        if name is None or name == "PENDING":
            raise self.fail(f"{d}: completed with status {st:#x}")
        self.statuses[name] = self.statuses.get(name, 0) + 1
        want = expected_check(d, self.layout.max_xfer)
        if want is not None:
            if st != want:
                raise self.fail(f"{d}: status {name}, expected {KNOWN_STATUS[want]}")
            whole_maint = d.opcode in MAINT_OPS and d.flags & F_WHOLE
            if done != 0 and d.opcode != OPS["NOP"] and not whole_maint:
                raise self.fail(f"{d}: status {name} with done {done}")
            return
        if name not in ("OK", "IOMMU_FAULT", "BUS_ERROR"):
            raise self.fail(f"{d}: status {name} where the transfer was valid")
        if done > d.len:
            raise self.fail(f"{d}: done {done} > len {d.len}")
        if name == "OK" and done != d.len:
            raise self.fail(f"{d}: OK with done {done} != len {d.len}")
        if name == "IOMMU_FAULT" and not self.layout.iommu:
            raise self.fail(f"{d}: IOMMU_FAULT without an IOMMU")


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
    qemu_argv: Sequence[str],
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
            qemu_argv, (config.device,), iommu=config.iommu, artifacts_dir=artifacts_dir
        ) as rig:
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
    )


def resolve_configs(name: str) -> list[FuzzConfig]:
    if name == "all":
        return list(CONFIGS.values())
    if name not in CONFIGS:
        from dmalab.errors import BadInput

        raise BadInput(
            f"unknown fuzz configuration {name!r}: choose from {', '.join(CONFIGS)} or all"
        )
    return [CONFIGS[name]]


async def fuzz(
    qemu_argv: Sequence[str],
    *,
    seed: int,
    ops: int,
    configs: Sequence[FuzzConfig] | None = None,
    artifacts_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[FuzzResult]:
    """`ops` operations in total, shared evenly by `configs` (all of them by default)."""
    configs = list(configs if configs is not None else CONFIGS.values())
    results = []
    for i, config in enumerate(configs):
        share = ops // len(configs) + (1 if i < ops % len(configs) else 0)
        results.append(
            await fuzz_config(
                qemu_argv,
                config,
                seed=seed,
                ops=share,
                artifacts_dir=artifacts_dir,
                progress=progress,
            )
        )
    return results
