"""A model of the documented register semantics (docs/ncdma.md, "Registers" and "Ring
protocol"), of the descriptor checks, and of what DMA to each kind of target gives ("DMA to what
is not memory", "Status precedence"), to predict what the device must show."""

from __future__ import annotations

from dataclasses import dataclass, field

from dmalab.fuzz.operations import (
    CTRL_ENABLE,
    CTRL_IRQ,
    CTRL_RESET,
    DATA_OPS,
    F_WHOLE,
    MAINT_OPS,
    OPS,
    REG,
    RERR,
    ST,
    U64,
    DescOp,
)
from dmalab.machine.ncdma_rig import PAGE
from dmalab.machine.pci import MMIO64_WINDOW
from dmalab.spec import ncdma as spec


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


#: What lies at an address, as the device sees it: memory (moved through the cache, or
#: directly); registers that take a plain, uncached access (the MSI window); registers that refuse
#: it (the device's own); nothing at all.
MEMORY, REGISTERS, REFUSED, NOTHING = "memory", "registers", "refused", "nothing"


@dataclass(frozen=True)
class Region:
    start: int
    end: int  # exclusive
    kind: str
    #: registers that take only aligned accesses of this many bytes (0: any access)
    word: int = 0


@dataclass(frozen=True)
class AddressMap:
    """The spans of the device's DMA address space whose kind is known (as IOVAs: behind an
    IOMMU only the untranslated ones); nothing is predicted for an access that reaches others."""

    regions: tuple[Region, ...] = field(default=())

    def at(self, addr: int) -> Region | None:
        return next((r for r in self.regions if r.start <= addr < r.end), None)

    def walk(self, addr: int, length: int, *, access: bool) -> tuple[int, bool] | None:
        """(bytes from addr on before the first that fails, whether memory lies before it) for a
        transfer (`access`) or a maintenance by range (only nothing fails it); None where the map
        does not tell."""
        pos, end, memory = addr, addr + length, False
        while pos < end:
            r = self.at(pos)
            if r is None:
                return None
            if r.kind == NOTHING or (access and r.kind == REFUSED):
                return pos - addr, memory
            if access and r.word:
                last = min(end, r.end)
                if pos % r.word or (last - pos) % r.word:
                    # the piece fails whole: told only when it is the one piece (one page)
                    return (pos - addr, memory) if pos // PAGE == (last - 1) // PAGE else None
            memory |= r.kind == MEMORY
            pos = r.end
        return length, memory


#: q35's MSI window (the local APIC's region) and where its PCIe MMCONFIG window starts.
MSI_WINDOW, MSI_WINDOW_SIZE = 0xFEE0_0000, 0x10_0000
Q35_MMCONFIG = 0xB000_0000


def q35_address_map(*, iommu: bool, ram_end: int, bar0: int) -> AddressMap:
    """What the model knows of q35: the MSI window, untranslated behind intel-iommu too (where
    it takes aligned 4-byte accesses only); without an IOMMU also the RAM above the legacy area,
    the holes the generator aims at, and the device's own registers (at `bar0`)."""
    if iommu:
        return AddressMap((Region(MSI_WINDOW, MSI_WINDOW + MSI_WINDOW_SIZE, REGISTERS, word=4),))
    return AddressMap(
        (
            Region(1 << 20, ram_end, MEMORY),
            Region(ram_end, Q35_MMCONFIG, NOTHING),
            Region(1 << 32, MMIO64_WINDOW[0], NOTHING),
            Region(MMIO64_WINDOW[1], 1 << 64, NOTHING),
            Region(bar0, bar0 + spec.REGS_BAR_SIZE, REFUSED),
            Region(MSI_WINDOW, MSI_WINDOW + MSI_WINDOW_SIZE, REGISTERS),
        )
    )


def expected_transfer(d: DescOp, amap: AddressMap, *, cached: bool) -> tuple[int, int] | None:
    """(status, done) of a descriptor the checks passed (`expected_check` gave None) from what
    lies at its addresses: every byte moves (OK) or the first piece that reaches nothing, or
    registers that refuse, ends it (BUS_ERROR, `done` the bytes before); None where the map does
    not tell."""
    if d.opcode in MAINT_OPS:
        if not cached:
            return ST["OK"], d.len  # nothing to maintain
        walks = [amap.walk(d.dst, d.len, access=False)]
    else:
        walks = [amap.walk(d.dst, d.len, access=True)]
        if d.opcode == OPS["COPY"]:
            walks.append(amap.walk(d.src, d.len, access=True))
    limits = [w[0] for w in walks if w is not None]
    if len(limits) < len(walks):
        return None
    done = min(limits)
    return (ST["OK"], d.len) if done == d.len else (ST["BUS_ERROR"], done)


def allocates_no_line(d: DescOp, amap: AddressMap, max_xfer: int) -> bool:
    """Whether the descriptor certainly allocates no cache line: it fails its checks, is not a
    COPY or FILL (maintenance only drops lines), or no memory lies before the point where all
    of its targets stop it."""
    if d.opcode not in DATA_OPS or expected_check(d, max_xfer) is not None:
        return True
    addrs = [d.dst, d.src] if d.opcode == OPS["COPY"] else [d.dst]
    walks = [amap.walk(a, d.len, access=True) for a in addrs]
    return all(w is not None and not w[1] for w in walks)
