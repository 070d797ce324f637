"""The fuzzer's operations: what one step may do to the device, each printable for replay.

One operation is one descriptor, one register write, one memory write, one map or unmap, or one
reset-stats. `str(op)` is what the replay log and the run's digest record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmalab.spec import ncdma as spec

U64 = (1 << 64) - 1
REG = spec.REG
REGS_SPAN = REG["COMPLETED"] + 4  # ID .. COMPLETED, read in one go
ST = {name: int(value) for name, value in spec.Status.encmapping.items()}
RERR = {name: int(value) for name, value in spec.RingError.encmapping.items()}
OPS = {name: int(value) for name, value in spec.Opcode.encmapping.items()}
KNOWN_STATUS = {v: str(k) for k, v in ST.items()}
KNOWN_RERR = {v: str(k) for k, v in RERR.items()}
F_IRQ, F_WHOLE = spec.DescFlags.flags["IRQ"], spec.DescFlags.flags["WHOLE"]
CTRL_ENABLE, CTRL_RESET, CTRL_IRQ = (spec.Ctrl.flags[n] for n in ("ENABLE", "RESET", "IRQ_ENABLE"))
STATUS_ENABLED, STATUS_BUSY, STATUS_RING_ERROR = (
    spec.DevStatus.flags[n] for n in ("ENABLED", "BUSY", "RING_ERROR")
)
DATA_OPS = (OPS["COPY"], OPS["FILL"])
MAINT_OPS = (OPS["CLEAN"], OPS["INVALIDATE"], OPS["CLEAN_INVALIDATE"])


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
        """The ring entry, reserved fields as drawn (spec.RawDescriptor)."""
        return spec.RawDescriptor.build(
            {
                "opcode": self.opcode,
                "flags": self.flags,
                "reserved0": self.reserved0,
                "status": "PENDING",
                "cookie": self.cookie,
                "src": self.src,
                "dst": self.dst,
                "len": self.len,
                "pattern": self.pattern,
                "done": 0,
                "reserved1": self.reserved1,
            }
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
