"""Who owns each buffer at each step, and the bytes that prove an access broke ownership.

The ledger is host-side bookkeeping fed by the steps a scenario performs, in the order they
really completed in the guest:

- `map(step, buf, device, snapshot)`: the device owns the buffer (several devices may own it at
  once; Arnd's table, steps 7-8); `unmap` gives it back. A snapshot of the buffer's bytes, read
  through the shared RAM mapping at the buffer's physical pages, is kept at every change.
- `cpu_access(step, buf, actor, before, after, read=...)`: a CPU read or write. While a device
  owns the buffer it is flagged, with byte evidence: the bytes that changed under the device
  (`before` vs. `after`), and the bytes the CPU read that differ from what a device wrote
  (the ledger's model of the content a coherent machine would hold).
- `dma(step, buf, device, reads=..., writes=...)`: a device's transfer, by offsets in the buffer
  (taken from the device's transaction log). Reads of bytes the CPU changed under that device
  are added to the CPU step's evidence ("device A read them at step 5"); writes to bytes another
  current owner also wrote are flagged (two devices writing the same location).

Nothing here talks to a machine, so it is unit-tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmalab.machine.compare_bytes import compare

Range = tuple[int, int]  # (offset, length)


def _runs(a: bytes, b: bytes) -> list[Range]:
    """Maximal runs of differing bytes in the length both have."""
    n = min(len(a), len(b))
    diff = compare(a[:n], b[:n])
    return diff.runs if diff is not None else []


def _overlap(ranges: list[Range], other: list[Range]) -> list[Range]:
    out = []
    for a, la in ranges:
        for b, lb in other:
            lo, hi = max(a, b), min(a + la, b + lb)
            if lo < hi:
                out.append((lo, hi - lo))
    return sorted(out)


def _total(ranges: list[Range]) -> int:
    return sum(n for _, n in ranges)


@dataclass
class Flag:
    """An access that broke ownership, with its evidence lines."""

    step: int
    buf: str
    what: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class _Taint:
    step: int  # the CPU step that changed bytes under the device
    device: str
    ranges: list[Range]
    flag: Flag


@dataclass
class _Buffer:
    name: str
    size: int
    owners: dict[str, int] = field(default_factory=dict)  # device -> step that mapped it
    model: bytearray = field(default_factory=bytearray)
    written_by: dict[int, tuple[str, int]] = field(default_factory=dict)  # offset -> (dev, step)
    snapshots: list[tuple[int, str, bytes]] = field(default_factory=list)
    taints: list[_Taint] = field(default_factory=list)
    device_writes: dict[str, list[tuple[int, list[Range]]]] = field(default_factory=dict)


class Ledger:
    def __init__(self) -> None:
        self.buffers: dict[str, _Buffer] = {}
        #: (step, buffer, owners after the step) for every step that touched a buffer.
        self.history: list[tuple[int, str, list[str]]] = []
        self.flags: list[Flag] = []

    # -----------------------------------------------------------------------------------------

    def add_buffer(self, name: str, size: int, content: bytes | None = None) -> None:
        self.buffers[name] = _Buffer(name, size, model=bytearray(content or bytes(size)))

    def owners(self, buf: str) -> list[str]:
        """ "CPU", or the devices that have the buffer mapped."""
        owners = sorted(self.buffers[buf].owners)
        return owners or ["CPU"]

    def model(self, buf: str) -> bytes:
        """What a coherent machine would hold now."""
        return bytes(self.buffers[buf].model)

    def snapshots(self, buf: str) -> list[tuple[int, str, bytes]]:
        return list(self.buffers[buf].snapshots)

    def _note(self, step: int, buf: str) -> None:
        self.history.append((step, buf, self.owners(buf)))

    # -----------------------------------------------------------------------------------------

    def map(self, step: int, buf: str, device: str, snapshot: bytes | None = None) -> None:
        b = self.buffers[buf]
        b.owners[device] = step
        b.device_writes[device] = []
        if snapshot is not None:
            b.snapshots.append((step, f"{device} maps", snapshot))
        self._note(step, buf)

    def unmap(self, step: int, buf: str, device: str, snapshot: bytes | None = None) -> None:
        b = self.buffers[buf]
        b.owners.pop(device, None)
        b.device_writes.pop(device, None)
        b.taints = [t for t in b.taints if t.device != device]
        if snapshot is not None:
            b.snapshots.append((step, f"{device} unmaps", snapshot))
        self._note(step, buf)

    def cpu_write(self, step: int, buf: str, offset: int, data: bytes) -> None:
        """The model follows a CPU write (call `cpu_access` for the check)."""
        b = self.buffers[buf]
        b.model[offset : offset + len(data)] = data
        for i in range(offset, offset + len(data)):
            b.written_by.pop(i, None)

    def cpu_access(
        self,
        step: int,
        buf: str,
        actor: str,
        before: bytes,
        after: bytes,
        *,
        read: tuple[int, bytes] | None = None,
    ) -> Flag | None:
        """A CPU access by `actor`; `before`/`after` are the buffer's bytes around it (host
        view), `read` the (offset, bytes) the CPU read. Flagged while a device owns the buffer."""
        b = self.buffers[buf]
        self._note(step, buf)
        if not b.owners:
            return None
        devices = sorted(b.owners)
        verb = "owns" if len(devices) == 1 else "own"
        flag = Flag(
            step, buf, f"{actor} CPU read/write while {' and '.join(devices)} {verb} the buffer"
        )
        changed = _runs(before, after)
        if changed:
            for dev in devices:
                b.taints.append(_Taint(step, dev, changed, flag))
            flag.evidence.append(
                f"{_total(changed)} bytes changed at offset {changed[0][0]:#x} under "
                f"{' and '.join(devices)} (mapped at step "
                f"{', '.join(str(b.owners[d]) for d in devices)})"
            )
        if read is not None:
            offset, data = read
            expect = bytes(b.model[offset : offset + len(data)])
            diff = [(o + offset, n) for o, n in _runs(expect, data)]
            if diff:
                writers = sorted(
                    {b.written_by[o] for o, n in diff for o in range(o, o + n) if o in b.written_by}
                )
                who = (
                    "; ".join(f"{d} wrote them at step {s}" for d, s in writers)
                    or "not what a coherent machine holds"
                )
                flag.evidence.append(
                    f"{actor} read {_total(diff)} bytes at offset {diff[0][0]:#x} that differ from "
                    f"what the device wrote per its transaction log ({who})"
                )
        if not flag.evidence:
            flag.evidence.append("no byte changed yet: the access races the device's DMA")
        self.flags.append(flag)
        return flag

    def dma(
        self,
        step: int,
        buf: str,
        device: str,
        *,
        reads: list[Range] = (),  # type: ignore[assignment]
        writes: dict[int, bytes] | None = None,
    ) -> Flag | None:
        """A device's transfer: the ranges it read, the bytes it wrote (offset -> data)."""
        b = self.buffers[buf]
        reads = list(reads)
        for taint in b.taints:
            if taint.device == device:
                hit = _overlap(taint.ranges, reads)
                if hit:
                    line = (
                        f"{device} read {_total(hit)} of them (offset {hit[0][0]:#x}) "
                        f"at step {step}"
                    )
                    if line not in taint.flag.evidence:
                        taint.flag.evidence.append(line)
        flag = None
        write_ranges = [(o, len(d)) for o, d in (writes or {}).items()]
        for other, history in b.device_writes.items():
            if other == device:
                continue
            for other_step, ranges in history:
                hit = _overlap(ranges, write_ranges)
                if hit:
                    flag = flag or Flag(
                        step,
                        buf,
                        f"{device} writes bytes {other} also wrote while both own the buffer",
                    )
                    flag.evidence.append(
                        f"{_total(hit)} bytes at offset {hit[0][0]:#x} written by {other} at step "
                        f"{other_step} and by {device} at step {step}"
                    )
        if device in b.device_writes and write_ranges:
            b.device_writes[device].append((step, write_ranges))
        for offset, data in (writes or {}).items():
            b.model[offset : offset + len(data)] = data
            for i in range(offset, offset + len(data)):
                b.written_by[i] = (device, step)
        self._note(step, buf)
        if flag:
            self.flags.append(flag)
        return flag
