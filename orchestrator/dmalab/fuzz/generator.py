"""The generator: the operation stream, a pure function of (seed, configuration name) and of
its own register model, never of what the device answers, so a seed replays exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dmalab.fuzz.model import AddressMap, RegModel
from dmalab.fuzz.operations import (
    CTRL_ENABLE,
    CTRL_IRQ,
    CTRL_RESET,
    F_IRQ,
    F_WHOLE,
    MAINT_OPS,
    OPS,
    REG,
    REGS_SPAN,
    U64,
    DescOp,
    Doorbell,
    MapOp,
    MemWrite,
    Op,
    RegWrite,
    ResetStats,
    Step,
)
from dmalab.machine.ncdma_rig import PAGE
from dmalab.machine.pci import MMIO64_WINDOW
from dmalab.spec import ncdma as spec

#: Buffers the engine owns: count and size (bytes) of each.
BUFFERS = 4
BUFFER_SIZE = 4 * PAGE
#: Free RAM below the rig's allocator (which starts at 16 MiB): "elsewhere in RAM" targets.
SCRATCH = (0x10_0000, 0x100_0000)
#: Free RAM at the very top of guest RAM (the allocator hands out low addresses first).
TOP_SPAN = 0x1_0000


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
    cached: bool = False
    #: the interrupt controller's MSI window (q35; untranslated behind intel-iommu), or None
    msi_window: int | None = None
    addresses: AddressMap = field(default_factory=AddressMap)


class Generator:
    def __init__(self, seed: int, config: str, layout: Layout) -> None:
        self.rng = random.Random(f"ncdma-fuzz:{seed}:{config}")
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
        if x < 0.99 and lay.msi_window is not None and length <= PAGE:
            # the MSI window: plain writes, each an interrupt message (kept short: a long run of
            # them is slow, not interesting)
            return lay.msi_window + r.randrange(PAGE - length + 1)
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
