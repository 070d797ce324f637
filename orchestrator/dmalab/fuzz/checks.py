"""The invariants that hold after every step (see the package docstring), as pure functions of
what the host read back: each raises `Violation` with what is wrong, which the engine turns into
a finding that names the seed, the operation index and the replay command."""

from __future__ import annotations

from dmalab.fuzz.generator import Layout
from dmalab.fuzz.model import RegModel, expected_check, expected_transfer
from dmalab.fuzz.operations import (
    CTRL_ENABLE,
    F_WHOLE,
    KNOWN_RERR,
    KNOWN_STATUS,
    MAINT_OPS,
    OPS,
    RERR,
    STATUS_BUSY,
    STATUS_ENABLED,
    STATUS_RING_ERROR,
    DescOp,
)
from dmalab.spec import ncdma as spec


class Violation(Exception):
    """An invariant does not hold; the message says which and how."""


def counters_agree(bar0: dict[str, int], qmp: dict[str, int]) -> None:
    """The QMP counters equal the BAR0 counters."""
    if qmp != bar0:
        diff = {k: (bar0[k], qmp.get(k)) for k in bar0 if bar0[k] != qmp.get(k)}
        raise Violation(f"QMP counters differ from BAR0 counters: {diff}")


def registers(regs: dict[str, int], m: RegModel) -> None:
    """ID and VERSION, STATUS against ERROR, ERROR and the read-write registers against the
    model (which learns a fetch or completion fault a foreign ring may cause), HEAD and TAIL
    inside the latched ring."""
    status, error = regs["STATUS"], regs["ERROR"]
    if regs["ID"] != spec.ID_MAGIC or regs["VERSION"] != spec.VERSION:
        raise Violation(f"ID/VERSION read {regs['ID']:#x}/{regs['VERSION']:#x}")
    if error not in KNOWN_RERR:
        raise Violation(f"ERROR = {error:#x} is not a known RingError")
    if bool(status & STATUS_RING_ERROR) != (error != RERR["NONE"]):
        raise Violation(f"STATUS {status:#x} and ERROR {KNOWN_RERR[error]} disagree")
    if status & STATUS_BUSY:
        raise Violation(f"STATUS {status:#x}: still BUSY after the step settled")
    if error != m.error:
        if m.error == 0 and m.may_fault and error in (RERR["FETCH_FAULT"], RERR["STATUS_FAULT"]):
            m.error = error
        else:
            raise Violation(
                f"ERROR is {KNOWN_RERR[error]}, the documented semantics give "
                f"{KNOWN_RERR.get(m.error, m.error)}"
            )
    for reg, want in (
        ("CTRL", m.ctrl),
        ("RING_BASE_LO", m.base & 0xFFFF_FFFF),
        ("RING_BASE_HI", m.base >> 32),
        ("RING_SIZE", m.size),
    ):
        if regs[reg] != want:
            raise Violation(f"{reg} reads {regs[reg]:#x}, expected {want:#x}")
    limit = m.latched or 1
    if regs["RING_HEAD"] >= limit or regs["RING_TAIL"] >= limit:
        raise Violation(
            f"RING_HEAD {regs['RING_HEAD']} / RING_TAIL {regs['RING_TAIL']} "
            f"outside the latched ring of {m.latched} entries"
        )
    if bool(status & STATUS_ENABLED) != bool(m.ctrl & CTRL_ENABLE):
        raise Violation(f"STATUS {status:#x} vs CTRL {m.ctrl:#x}")


def completion(d: DescOp, st: int, done: int, lay: Layout) -> str:
    """A descriptor the healthy ring passed: a known, non-PENDING status, the one the documented
    checks predict, `done` <= `len` and `done == len` when OK; where the layout's address map
    tells what lies at its addresses, the status and `done` that gives. Returns the status
    name."""
    name = KNOWN_STATUS.get(st)
    if name is None or name == "PENDING":
        raise Violation(f"{d}: completed with status {st:#x}")
    want = expected_check(d, lay.max_xfer)
    if want is not None:
        if st != want:
            raise Violation(f"{d}: status {name}, expected {KNOWN_STATUS[want]}")
        whole_maint = d.opcode in MAINT_OPS and d.flags & F_WHOLE
        if done != 0 and d.opcode != OPS["NOP"] and not whole_maint:
            raise Violation(f"{d}: status {name} with done {done}")
        return name
    if name not in ("OK", "IOMMU_FAULT", "BUS_ERROR"):
        raise Violation(f"{d}: status {name} where the transfer was valid")
    if done > d.len:
        raise Violation(f"{d}: done {done} > len {d.len}")
    if name == "OK" and done != d.len:
        raise Violation(f"{d}: OK with done {done} != len {d.len}")
    if name == "IOMMU_FAULT" and not lay.iommu:
        raise Violation(f"{d}: IOMMU_FAULT without an IOMMU")
    predicted = expected_transfer(d, lay.addresses, cached=lay.cached)
    if predicted is not None and (st, done) != predicted:
        raise Violation(
            f"{d}: status {name} with done {done}; what lies at its addresses gives "
            f"{KNOWN_STATUS[predicted[0]]} with done {predicted[1]}"
        )
    return name


def no_line_allocated(before: dict[str, int], now: dict[str, int]) -> None:
    """A batch that reached no memory left the cache's hit and miss counters where they were:
    what is not memory never allocates a line."""
    moved = {k: now[k] - before[k] for k in ("cache_hits", "cache_misses") if now[k] != before[k]}
    if moved:
        raise Violation(f"a batch that reached no memory moved the cache counters: {moved}")


def counters_grew(
    before: dict[str, int], now: dict[str, int], completed: tuple[int, int] | None
) -> None:
    """No counter went back; with `completed` (OK, failed) descriptors on the healthy ring,
    desc_completed and desc_errors grew by exactly those."""
    for name, value in now.items():
        if value < before[name]:
            raise Violation(f"counter {name} went back from {before[name]} to {value}")
    if completed is not None:
        grew = (
            now["desc_completed"] - before["desc_completed"],
            now["desc_errors"] - before["desc_errors"],
        )
        if grew != completed:
            raise Violation(
                f"desc_completed/desc_errors grew by {grew[0]}/{grew[1]}, "
                f"the ring shows {completed[0]} OK / {completed[1]} failed"
            )
