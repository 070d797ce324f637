"""Topology files: what machine to build (docs/topology.md).

A topology is a TOML file naming the machine (memory, CPUs, accelerator), at most one vIOMMU,
PCIe-to-PCI bridges, ncdma devices with their cache, IOTLB, transfer-size and log properties and
placement, and the guest kernel. `load_topology` validates everything before QEMU is involved:
a mistake is reported as one line naming the file, the field and the problem.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dmalab.errors import BadInput
from dmalab.machine.kernel_files import kernel_args, kernel_files
from dmalab.spec import ncdma as ncdma_spec
from dmalab.spec.tables import Source, Table, id_problem

ARCHES = ("x86_64", "aarch64")
#: The vIOMMUs each architecture's machine offers (q35; virt with its built-in SMMUv3).
IOMMUS_BY_ARCH = {"x86_64": ("intel-iommu", "virtio-iommu"), "aarch64": ("smmuv3", "virtio-iommu")}
IOMMU_KINDS = ("intel-iommu", "smmuv3", "virtio-iommu")
#: QEMU's machine per architecture.
MACHINES = {"x86_64": "q35", "aarch64": "virt"}
#: CPU models a topology may name per architecture (None: QEMU's default for the machine).
#: cortex-a57 first: TCG runs it fastest (no pointer authentication to emulate).
CPUS = {"x86_64": (None,), "aarch64": ("cortex-a57", "cortex-a72", "max")}
ACCELS = ("auto", "tcg", "kvm")
#: What a [[bridge]] is (BridgeSpec).
BRIDGE_KINDS = ("pci-bridge", "multifunction")
#: Functions of one multifunction slot.
MAX_FUNCTIONS = 8
#: Where a device sits: its own root port, pcie.0 directly, or behind a named bridge.
OWN_ROOT_PORT = "root-port"
ROOT_COMPLEX = "root"
BYPASS = "bypass"
COHERENCIES = ("coherent", "noncoherent")
#: Ranges of the [machine] and [iommu] fields.
MEMORY_MIB = (128, 16384)
SMP = (1, 64)
AW_BITS = (39, 48)
#: The fields of each table (the JSON Schema of docs/schemas/ is made from these too).
TOP_KEYS = ("name", "description", "machine", "iommu", "bridge", "device", "kernel")
MACHINE_KEYS = ("arch", "cpu", "memory", "smp", "accel", "coherency")
IOMMU_KEYS = ("kind", "caching-mode", "intremap", "aw-bits")
BRIDGE_KEYS = ("id", "kind")
DEVICE_KEYS = ("id", "kind", "bus", "iommu", *(p.name for p in ncdma_spec.PROPERTIES))
KERNEL_KEYS = ("kernel", "modules", "args")
#: Slots of the root bus pcie.0 a topology may use (QEMU 10.0: q35 keeps slot 0 and 0x1f for
#: itself, virt slot 0): each bridge, each device on a root port of its own, each device on
#: the root complex, and dmalab's virtio-serial, virtio-iommu and bypass bus take one.
ROOT_SLOTS = {"x86_64": 30, "aarch64": 31}
#: Slots of one PCIe-to-PCI bridge.
BRIDGE_SLOTS = 32
#: Ids dmalab gives devices of its own; root ports are "rp-" and their device's or bridge's id.
RESERVED_IDS = ("vser", "pxb-bypass")
#: Bytes QEMU keeps per logged violation, transaction and IOVA -> PA segment (NcdmaViolation,
#: NcdmaTransaction and NcdmaSegment in qemu-devices/ncdma.h); a device cache keeps its lines
#: twice (the bytes and the snapshot of memory they are checked against).
VIOLATION_BYTES, TRANSACTION_BYTES, SEGMENT_BYTES = 120, 72, 32


@dataclass(frozen=True)
class MachineSpec:
    memory_mib: int = 512
    smp: int = 1
    accel: str = "auto"
    arch: str = "x86_64"
    cpu: str | None = None
    #: "noncoherent": PCIe DMA below the CPU caches, which QEMU models (docs/cpu-cache-model.md).
    coherency: str = "coherent"


@dataclass(frozen=True)
class IommuSpec:
    kind: str
    #: intel-iommu only.
    caching_mode: bool = True
    intremap: bool = True
    aw_bits: int = 48


@dataclass(frozen=True)
class BridgeSpec:
    """A place where devices share an IOMMU group (so one domain): a PCIe-to-PCI bridge, whose
    devices' requester IDs alias, or one multifunction slot without ACS, whose functions keep
    requester IDs of their own (what the arm64 IOMMU drivers need: they refuse aliases)."""

    id: str
    kind: str = "pci-bridge"


def _default(name: str) -> int:
    return ncdma_spec.PROPERTY[name].default


@dataclass(frozen=True)
class NcdmaSpec:
    """One ncdma: placement, and a value for every property of spec.ncdma.PROPERTIES (its
    defaults, ranges and meaning are there)."""

    id: str
    bus: str = OWN_ROOT_PORT
    #: False: behind the machine's vIOMMU; True: its DMA bypasses the vIOMMU.
    bypass_iommu: bool = False
    coherent: bool = bool(_default("coherent"))
    line_size: int = _default("line-size")
    cache_size: int = _default("cache-size")
    cache_ways: int = _default("cache-ways")
    iotlb_entries: int = _default("iotlb-entries")
    #: Largest length one descriptor may ask for; the driver splits longer transfers.
    max_xfer: int = _default("max-xfer")
    #: Violations kept (the first ones), transactions kept (the latest ones), and IOVA -> PA
    #: segments kept per transaction; QEMU reserves the logs at realize.
    vlog_size: int = _default("vlog-size")
    xlog_size: int = _default("xlog-size")
    xlog_segs: int = _default("xlog-segs")

    def qemu_props(self) -> dict[str, str]:
        """The -device ncdma properties this spec sets (defaults included, so argv is explicit)."""
        props = {}
        for p in ncdma_spec.PROPERTIES:
            value = getattr(self, p.field)
            props[p.name] = ("on" if value else "off") if p.boolean else str(value)
        return props

    def state_bytes(self) -> int:
        """Host memory QEMU allocates for this device's cache and logs at realize."""
        cache = 0 if self.coherent else 2 * self.cache_size
        logs = self.vlog_size * VIOLATION_BYTES + self.xlog_size * TRANSACTION_BYTES
        return cache + logs + self.xlog_size * self.xlog_segs * SEGMENT_BYTES


@dataclass(frozen=True)
class KernelSpec:
    #: None: the image `dmalab build image` makes. Paths: a user's own kernel and module tree.
    kernel: Path | None = None
    modules: Path | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    description: str = ""
    machine: MachineSpec = field(default_factory=MachineSpec)
    iommu: IommuSpec | None = None
    bridges: tuple[BridgeSpec, ...] = ()
    devices: tuple[NcdmaSpec, ...] = ()
    kernel: KernelSpec = field(default_factory=KernelSpec)

    @property
    def iommu_kind(self) -> str:
        return self.iommu.kind if self.iommu else "none"

    @property
    def arch(self) -> str:
        return self.machine.arch


def minimal_topology(
    name: str,
    *,
    arch: str = "x86_64",
    iommu: str | None = None,
    memory_mib: int = 512,
    devices: tuple[str, ...] = ("ncdma0",),
) -> Topology:
    """A machine made in code (probes, benchmarks, tests): default devices on the root complex
    behind `iommu` (None: no vIOMMU)."""
    return Topology(
        name=name,
        path=Path(f"<{name}>"),
        machine=MachineSpec(memory_mib=memory_mib, arch=arch),
        iommu=IommuSpec(iommu) if iommu else None,
        devices=tuple(NcdmaSpec(id=d, bus=ROOT_COMPLEX) for d in devices),
    )


def shipped_topologies() -> list[str]:
    """Names of the topologies that come with dmalab."""
    folder = resources.files("dmalab") / "topologies"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def topology_path(name_or_path: str | Path) -> Path:
    """A shipped topology by name, or a file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise BadInput(f"{candidate}: no such topology file")
        return candidate
    shipped = resources.files("dmalab") / "topologies" / f"{name_or_path}.toml"
    if not shipped.is_file():
        names = ", ".join(shipped_topologies())
        raise BadInput(f"{name_or_path}: no such topology (shipped: {names}; or give a .toml path)")
    return Path(str(shipped))


def load_topology(name_or_path: str | Path) -> Topology:
    path = topology_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    return parse_topology(data, path)


def parse_topology(data: Mapping[str, Any], path: Path) -> Topology:
    src = Source(str(path))
    top = Table(src, "", data, TOP_KEYS)
    if "name" not in data and (problem := id_problem(path.stem)):
        # The name becomes run directory and socket names: the file's name must do as one.
        top.fail("name", f'missing, and the file name {problem}: give name = "..."')
    name = top.identifier("name", path.stem)
    description = top.get("description", str, "")
    if "\n" in description:
        top.fail("description", "must be one line")
    machine = _machine(Table(src, "machine", data.get("machine", {}), MACHINE_KEYS))
    arch = machine.arch
    iommu = (
        _iommu(Table(src, "iommu", data["iommu"], IOMMU_KEYS), arch) if "iommu" in data else None
    )
    bridges = [
        _bridge(Table(src, f"bridge[{n}]", raw, BRIDGE_KEYS), arch)
        for n, raw in enumerate(top.array("bridge"))
    ]
    devices = [
        _ncdma(Table(src, f"device[{n}]", raw, DEVICE_KEYS), iommu, machine.coherency)
        for n, raw in enumerate(top.array("device"))
    ]
    k = Table(src, "kernel", data.get("kernel", {}), KERNEL_KEYS)
    kernel_file, modules = kernel_files(k, path, arch)
    kernel = KernelSpec(kernel=kernel_file, modules=modules, args=kernel_args(k))

    _check_references(src, arch, bridges, devices)
    _check_slots(src, arch, iommu, bridges, devices)
    _check_device_memory(src, machine, devices)
    return Topology(
        name=name,
        path=path,
        description=description,
        machine=machine,
        iommu=iommu,
        bridges=tuple(bridges),
        devices=tuple(devices),
        kernel=kernel,
    )


def _machine(m: Table) -> MachineSpec:
    arch = m.choice("arch", ARCHES, "x86_64")
    cpus = CPUS[arch]
    cpu = m.choice("cpu", cpus, cpus[0]) if cpus[0] else None
    if cpu is None and m.has("cpu"):
        m.fail("cpu", f"{arch} topologies use QEMU's default CPU model")
    accel = m.choice("accel", ACCELS, "auto")
    if arch != "x86_64" and accel == "kvm":
        m.fail("accel", f"kvm cannot run an {arch} guest on this host (use tcg or auto)")
    coherency = m.choice("coherency", COHERENCIES, "coherent")
    if coherency == "noncoherent" and arch != "aarch64":
        m.fail(
            "coherency",
            f"noncoherent DMA is modelled on aarch64 only ({arch}'s DMA API does no cache "
            "maintenance)",
        )
    return MachineSpec(
        memory_mib=m.integer("memory", *MEMORY_MIB, 512),
        smp=m.integer("smp", *SMP, 1),
        accel=accel,
        arch=arch,
        cpu=cpu,
        coherency=coherency,
    )


def _iommu(i: Table, arch: str) -> IommuSpec:
    kind = i.choice("kind", IOMMU_KINDS)
    if kind not in IOMMUS_BY_ARCH[arch]:
        i.fail(
            "kind",
            f"{kind} does not exist on {arch} ({MACHINES[arch]} offers "
            f"{', '.join(IOMMUS_BY_ARCH[arch])})",
        )
    if kind != "intel-iommu":
        for key in ("caching-mode", "intremap", "aw-bits"):
            if i.has(key):
                i.fail(key, f"only applies to intel-iommu, not {kind}")
    return IommuSpec(
        kind=kind,
        caching_mode=i.get("caching-mode", bool, True),
        intremap=i.get("intremap", bool, True),
        aw_bits=i.integer(
            "aw-bits", *AW_BITS, 48, lambda v: None if v in AW_BITS else "must be 39 or 48"
        ),
    )


def _bridge(b: Table, arch: str) -> BridgeSpec:
    kind = b.choice("kind", BRIDGE_KINDS, "pci-bridge")
    if kind == "pci-bridge" and arch != "x86_64":
        b.fail(
            "kind",
            f"pci-bridge on {arch}: Linux's SMMUv3 and virtio-iommu drivers give devices "
            'behind one no IOMMU group (their requester IDs alias); use "multifunction"',
        )
    return BridgeSpec(id=b.identifier("id"), kind=kind)


def _property(d: Table, name: str, check: Callable[[int], str | None] | None = None) -> int:
    """An integer device property, with the default and range of spec.ncdma.PROPERTIES (the
    ones ncdma's realize checks: QEMU never refuses a checked topology)."""
    p = ncdma_spec.PROPERTY[name]
    return d.integer(name, p.lo, p.hi, p.default, check)


def _power_of_two(value: int) -> str | None:
    return None if value & (value - 1) == 0 else "must be a power of two"


def _ncdma(d: Table, iommu: IommuSpec | None, coherency: str) -> NcdmaSpec:
    d.choice("kind", ("ncdma",), "ncdma")
    line = _property(d, "line-size", _power_of_two)
    ways = _property(d, "cache-ways")
    unit = line * ways
    size = _property(
        d,
        "cache-size",
        lambda v: (
            None if v % unit == 0 else f"must be a multiple of line-size * cache-ways ({unit})"
        ),
    )
    route = d.choice("iommu", ("yes", BYPASS), "yes")
    if route == "yes" and iommu is None and d.has("iommu"):
        d.fail("iommu", "the topology has no [iommu] table")
    return NcdmaSpec(
        id=d.identifier("id"),
        bus=d.get("bus", str, OWN_ROOT_PORT),
        bypass_iommu=route == BYPASS,
        # Below modelled CPU caches the findings are the CPU side's: no device cache unless
        # asked for.
        coherent=d.get("coherent", bool, coherency == "noncoherent" or bool(_default("coherent"))),
        line_size=line,
        cache_size=size,
        cache_ways=ways,
        iotlb_entries=_property(d, "iotlb-entries"),
        max_xfer=_property(d, "max-xfer"),
        vlog_size=_property(d, "vlog-size"),
        xlog_size=_property(d, "xlog-size"),
        xlog_segs=_property(d, "xlog-segs"),
    )


def _check_references(
    src: Source, arch: str, bridges: list[BridgeSpec], devices: list[NcdmaSpec]
) -> None:
    seen: dict[str, str] = {}
    for kind, items in (("bridge", bridges), ("device", devices)):
        for n, item in enumerate(items):
            if item.id in seen:
                src.fail(f"{kind}[{n}].id", f"{item.id!r} is already used by a {seen[item.id]}")
            seen[item.id] = kind
    # dmalab names the root ports it adds after what sits on them (qemu_argv).
    ported = [b.id for b in bridges] + [d.id for d in devices if d.bus == OWN_ROOT_PORT]
    generated = {**dict.fromkeys(RESERVED_IDS, "dmalab's own"), **{f"rp-{i}": i for i in ported}}
    for kind, items in (("bridge", bridges), ("device", devices)):
        for n, item in enumerate(items):
            if item.id in generated:
                owner = generated[item.id]
                what = (
                    "a device of dmalab's own" if owner in RESERVED_IDS else f"{owner}'s root port"
                )
                src.fail(f"{kind}[{n}].id", f"{item.id!r} is the id dmalab gives {what}")
    names = {b.id for b in bridges}
    for n, bridge in enumerate(bridges):
        members = [d for d in devices if d.bus == bridge.id]
        slots = MAX_FUNCTIONS if bridge.kind == "multifunction" else BRIDGE_SLOTS
        if len(members) > slots:
            what = "one multifunction slot has" if slots == MAX_FUNCTIONS else "a bridge has"
            src.fail(
                f"bridge[{n}]",
                f"bridge {bridge.id!r}: {len(members)} devices, but {what} {slots} "
                f"{'functions' if slots == MAX_FUNCTIONS else 'slots'}",
            )
    for n, dev in enumerate(devices):
        _check_placement(src, f"device[{n}]", arch, dev, names)


def _check_placement(src: Source, where: str, arch: str, dev: NcdmaSpec, bridges: set[str]) -> None:
    if dev.bus not in (OWN_ROOT_PORT, ROOT_COMPLEX) and dev.bus not in bridges:
        known = ", ".join([OWN_ROOT_PORT, ROOT_COMPLEX, *sorted(bridges)])
        src.fail(f"{where}.bus", f"no bridge {dev.bus!r} (expected one of: {known})")
    if dev.bypass_iommu and arch != "x86_64":
        src.fail(
            f"{where}.iommu",
            f"bypass needs an extra root bus, which {arch}'s virt machine describes only "
            "through ACPI, not the device tree dmalab boots with",
        )
    if dev.bypass_iommu and dev.bus != OWN_ROOT_PORT:
        src.fail(
            f"{where}.iommu",
            'bypass needs bus = "root-port" (the device gets a root port on a root bus that '
            "bypasses the IOMMU)",
        )


def _check_slots(
    src: Source,
    arch: str,
    iommu: IommuSpec | None,
    bridges: list[BridgeSpec],
    devices: list[NcdmaSpec],
) -> None:
    """QEMU refuses a device when the root bus has no slot left for it."""
    used = 1 + (iommu is not None and iommu.kind == "virtio-iommu")
    used += any(d.bypass_iommu for d in devices)
    places = [(f"bridge[{n}].id", True) for n in range(len(bridges))]
    places += [
        (f"device[{n}].bus", d.bus in (OWN_ROOT_PORT, ROOT_COMPLEX) and not d.bypass_iommu)
        for n, d in enumerate(devices)
    ]
    for where, on_root in places:
        used += on_root
        if used > ROOT_SLOTS[arch]:
            src.fail(
                where,
                f"no slot left on the root bus: {MACHINES[arch]}'s pcie.0 has "
                f"{ROOT_SLOTS[arch]} for bridges, root ports and devices, dmalab's included "
                "(put devices behind a bridge)",
            )


def _check_device_memory(src: Source, machine: MachineSpec, devices: list[NcdmaSpec]) -> None:
    """QEMU allocates each device's cache and logs beside the guest's RAM and copies them into
    every snapshot: their sum may not exceed the memory the topology gives the guest."""
    budget = machine.memory_mib << 20
    total = 0
    for n, dev in enumerate(devices):
        total += dev.state_bytes()
        if total > budget:
            logs = dev.xlog_size * dev.xlog_segs * SEGMENT_BYTES
            field = "xlog-segs" if logs >= dev.state_bytes() - logs else "cache-size"
            src.fail(
                f"device[{n}].{field}",
                f"the devices' caches and logs need {-(-total >> 20)} MiB of QEMU's memory "
                f"(cache-size * 2 + xlog-size * xlog-segs * {SEGMENT_BYTES} + ...), more than "
                f"machine.memory ({machine.memory_mib} MiB)",
            )
