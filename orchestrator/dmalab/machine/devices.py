"""A typed view of one ncdma device over QMP (docs/ncdma.md, "QMP").

`NcdmaQmp(qmp, "ncdma0")` reads the device's QOM properties: `counters()` (every counter by
name), `violations()` and `transactions()` (dataclasses; transactions carry their IOVA -> PA
segments), `iommu()`, and `reset_stats()` (zeroes counters and logs). `dump()` gathers all of it
as JSON-ready data, which `Vm` keeps as an artifact when a run fails.

`registers()` reads BAR0 through the monitor's `xp` (the BAR's address comes from `query-pci`),
and `ring(mem)` reads the descriptor ring the guest driver programmed: its base IOVA and size
from the registers, its pages translated with a `VtdWalker` (intel-iommu) or taken as physical
when no IOMMU translates the device, each entry parsed with `dmalab.spec.ncdma.Descriptor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dmalab.errors import CheckFailed
from dmalab.machine.guestmem import SharedRam, VtdWalker, read_phys_u32s
from dmalab.spec import ncdma as hw


@dataclass(frozen=True)
class Segment:
    iova: int
    pa: int
    len: int
    write: bool


@dataclass(frozen=True)
class Transaction:
    seq: int
    cookie: int
    opcode: str
    flags: int
    status: str
    src: int
    dst: int
    len: int
    done: int
    segments: list[Segment] = field(default_factory=list)
    segments_dropped: int = 0

    @classmethod
    def from_qmp(cls, d: dict[str, Any]) -> Transaction:
        return cls(
            d["seq"], d["cookie"], d["opcode"], d["flags"], d["status"], d["src"], d["dst"],
            d["len"], d["done"], [Segment(**s) for s in d["segments"]], d["segments-dropped"],
        )  # fmt: skip


@dataclass(frozen=True)
class Violation:
    seq: int
    kind: str  # STALE_READ, LOST_WRITE, CONFLICTING_WRITE, WRITEBACK_AFTER_UNMAP
    cookie: int
    iova: int
    pa: int
    line_pa: int
    differing: int
    expected: bytes
    actual: bytes

    @classmethod
    def from_qmp(cls, d: dict[str, Any]) -> Violation:
        return cls(
            d["seq"], d["kind"], d["cookie"], d["iova"], d["pa"], d["line-pa"], d["differing"],
            bytes.fromhex(d["expected"]), bytes.fromhex(d["actual"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Ring:
    base: int  # IOVA (or PA without an IOMMU)
    size: int  # entries
    head: int
    tail: int
    segments: list[tuple[int, int]]  # (pa, length) of the ring's bytes
    descriptors: list[Any]  # construct Containers of hw.Descriptor, index = ring entry


class NcdmaQmp:
    """One ncdma device (`-device ncdma,id=ID`) as seen over QMP."""

    def __init__(self, qmp: Any, id: str) -> None:
        self.qmp = qmp
        self.id = id
        self.path = f"/machine/peripheral/{id}"

    async def _get(self, prop: str) -> Any:
        return await self.qmp.execute("qom-get", {"path": self.path, "property": prop})

    async def counters(self) -> dict[str, int]:
        """Every counter, in the order of `spec.ncdma.COUNTER_NAMES`."""
        raw = await self._get("counters")
        ordered = {name: raw[name] for name in hw.COUNTER_NAMES if name in raw}
        ordered.update(raw)
        return ordered

    async def violations(self) -> list[Violation]:
        return [Violation.from_qmp(v) for v in await self._get("violations")]

    async def transactions(self) -> list[Transaction]:
        return [Transaction.from_qmp(t) for t in await self._get("transactions")]

    async def iommu(self) -> dict[str, Any]:
        return dict(await self._get("iommu"))

    async def reset_stats(self) -> None:
        await self.qmp.execute(
            "qom-set", {"path": self.path, "property": "reset-stats", "value": True}
        )

    async def dump(self) -> dict[str, Any]:
        """Counters, IOMMU facts, violations and transactions as JSON-ready data."""
        return {
            "id": self.id,
            "counters": await self.counters(),
            "iommu": await self.iommu(),
            "violations": [
                {**asdict(v), "expected": v.expected.hex(), "actual": v.actual.hex()}
                for v in await self.violations()
            ],
            "transactions": [asdict(t) for t in await self.transactions()],
        }

    # -----------------------------------------------------------------------------------------
    # Registers and ring

    async def pci_address(self) -> tuple[int, int, int]:
        """(bus, devfn, BAR0 address) from `query-pci`."""
        for dev in await pci_devices(self.qmp):
            if dev.get("qdev_id") == self.id:
                for region in dev.get("regions", []):
                    if region.get("bar") == hw.REGS_BAR and region.get("type") == "memory":
                        devfn = dev["slot"] << 3 | dev["function"]
                        return dev["bus"], devfn, region["address"]
                raise CheckFailed(f"{self.id}: BAR0 is not assigned yet")
        raise CheckFailed(f"{self.id}: no such PCI device in query-pci")

    async def registers(self) -> dict[str, int]:
        """The 32-bit registers of BAR0 (ID .. COMPLETED), by name."""
        _, _, bar = await self.pci_address()
        names = [sc.name for sc in hw.Registers.subcons if sc.name and sc.name != "COUNTERS"]
        words = await read_phys_u32s(self.qmp, bar, len(names))
        return dict(zip(names, words, strict=True))

    async def ring(self, ram: SharedRam, *, iommu: bool = True) -> Ring:
        regs = await self.registers()
        base = regs["RING_BASE_LO"] | regs["RING_BASE_HI"] << 32
        size = regs["RING_SIZE"]
        length = size * hw.DESC_SIZE
        if not size:
            return Ring(base, 0, regs["RING_HEAD"], regs["RING_TAIL"], [], [])
        if iommu and (await self.iommu())["active"]:
            bus, devfn, _ = await self.pci_address()
            walker = await VtdWalker.from_qmp(self.qmp, ram)
            segments = walker.segments(bus, devfn, base, length)
        else:
            segments = [(base, length)]
        raw = b"".join(bytes(v) for v in ram.views(segments))
        descs = [
            hw.Descriptor.parse(raw[i * hw.DESC_SIZE : (i + 1) * hw.DESC_SIZE]) for i in range(size)
        ]
        return Ring(base, size, regs["RING_HEAD"], regs["RING_TAIL"], segments, descs)


def _walk_pci(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dev in devices:
        out.append(dev)
        bridge = dev.get("pci_bridge")
        if bridge:
            out += _walk_pci(bridge.get("devices", []))
    return out


async def pci_devices(qmp: Any) -> list[dict[str, Any]]:
    """Every PCI device `query-pci` reports, behind bridges too (QEMU's dicts: bus, slot,
    function, qdev_id, regions, ...)."""
    return [dev for bus in await qmp.execute("query-pci") for dev in _walk_pci(bus["devices"])]


async def pci_names(qmp: Any) -> dict[str, str]:
    """Guest PCI name (`0000:BB:SS.F`, as Linux shows it) -> QOM id, of every device with an id."""
    return {
        f"0000:{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']}": dev["qdev_id"]
        for dev in await pci_devices(qmp)
        if dev.get("qdev_id")
    }
