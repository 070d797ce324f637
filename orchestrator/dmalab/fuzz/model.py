"""A model of the documented register semantics (docs/ncdma.md, "Registers" and "Ring
protocol") and of the descriptor checks, to predict what the device must show."""

from __future__ import annotations

from dataclasses import dataclass

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
