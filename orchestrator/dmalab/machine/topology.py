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
from dmalab.spec import ncdma as ncdma_spec

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


@dataclass(frozen=True)
class MachineSpec:
    memory_mib: int = 512
    smp: int = 1
    accel: str = "auto"
    arch: str = "x86_64"
    cpu: str | None = None


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


class _Fields:
    """Typed access to one TOML table that names the offending field in every error."""

    def __init__(self, path: Path, where: str, table: Any, known: tuple[str, ...]):
        self.path = path
        self.where = where
        if not isinstance(table, Mapping):
            self.fail(where, f"must be a table, not {_kind(table)}")
        self.table = table
        for key in table:
            if key not in known:
                self.fail(self.name(key), f"unknown field (expected one of: {', '.join(known)})")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, name: str, problem: str) -> None:
        raise BadInput(f"{self.path}: {name}: {problem}")

    def get(self, key: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(self.name(key), "missing")
            return default
        value = self.table[key]
        # bool is an int in Python, never accept one for the other.
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            self.fail(
                self.name(key), f"must be {_LABELS.get(kind, kind.__name__)}, not {_kind(value)}"
            )
        return value

    def integer(
        self,
        key: str,
        default: int,
        lo: int,
        hi: int,
        check: Callable[[int], str | None] | None = None,
    ) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            self.fail(self.name(key), f"must be in [{lo}, {hi}], not {value}")
        if check and (problem := check(value)):
            self.fail(self.name(key), problem)
        return value

    def choice(
        self,
        key: str,
        choices: tuple[str, ...],
        default: str | None = None,
        *,
        required: bool = False,
    ) -> str:
        value = self.get(key, str, default, required=required)
        if value not in choices:
            self.fail(self.name(key), f"must be one of {', '.join(choices)}, not {value!r}")
        return value


# Readable type names in messages ("an integer", not "int").
_LABELS = {
    int: "an integer",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "a table",
    float: "a number",
}


def _kind(value: Any) -> str:
    for kind, label in _LABELS.items():
        if type(value) is kind:
            return label
    return type(value).__name__


def _property(f: _Fields, name: str, check: Callable[[int], str | None] | None = None) -> int:
    """An integer device property, with the default and range of spec.ncdma.PROPERTIES."""
    p = ncdma_spec.PROPERTY[name]
    return f.integer(name, p.default, p.lo, p.hi, check)


def _power_of_two(value: int) -> str | None:
    return None if value & (value - 1) == 0 else "must be a power of two"


def parse_topology(data: Mapping[str, Any], path: Path) -> Topology:
    top = _Fields(
        path, "", data, ("name", "description", "machine", "iommu", "bridge", "device", "kernel")
    )
    name = top.get("name", str, path.stem)
    description = top.get("description", str, "")
    machine = _parse_machine(path, data)
    arch = machine.arch
    iommu = _parse_iommu(path, data, arch) if "iommu" in data else None
    bridges = [
        _parse_bridge(path, n, raw, arch) for n, raw in enumerate(_array(top, "bridge", data))
    ]
    devices = [
        _parse_device(path, n, raw, iommu) for n, raw in enumerate(_array(top, "device", data))
    ]
    kernel = _parse_kernel(path, data)
    _check_references(path, arch, bridges, devices)
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


def _parse_machine(path: Path, data: Mapping[str, Any]) -> MachineSpec:
    m = _Fields(path, "machine", data.get("machine", {}), ("arch", "cpu", "memory", "smp", "accel"))
    arch = m.choice("arch", ARCHES, "x86_64")
    cpus = CPUS[arch]
    cpu = m.choice("cpu", cpus, cpus[0]) if cpus[0] else None
    if cpu is None and "cpu" in m.table:
        m.fail("machine.cpu", f"{arch} topologies use QEMU's default CPU model")
    accel = m.choice("accel", ACCELS, "auto")
    if arch != "x86_64" and accel == "kvm":
        m.fail("machine.accel", f"kvm cannot run an {arch} guest on this host (use tcg or auto)")
    return MachineSpec(
        memory_mib=m.integer("memory", 512, 128, 16384),
        smp=m.integer("smp", 1, 1, 64),
        accel=accel,
        arch=arch,
        cpu=cpu,
    )


def _parse_iommu(path: Path, data: Mapping[str, Any], arch: str) -> IommuSpec:
    i = _Fields(path, "iommu", data["iommu"], ("kind", "caching-mode", "intremap", "aw-bits"))
    kind = i.choice("kind", IOMMU_KINDS, required=True)
    if kind not in IOMMUS_BY_ARCH[arch]:
        i.fail(
            "iommu.kind",
            f"{kind} does not exist on {arch} ({MACHINES[arch]} offers "
            f"{', '.join(IOMMUS_BY_ARCH[arch])})",
        )
    if kind != "intel-iommu":
        for key in ("caching-mode", "intremap", "aw-bits"):
            if key in i.table:
                i.fail(i.name(key), f"only applies to intel-iommu, not {kind}")
    return IommuSpec(
        kind=kind,
        caching_mode=i.get("caching-mode", bool, True),
        intremap=i.get("intremap", bool, True),
        aw_bits=i.integer(
            "aw-bits", 48, 39, 48, lambda v: None if v in (39, 48) else "must be 39 or 48"
        ),
    )


def _parse_bridge(path: Path, n: int, raw: Any, arch: str) -> BridgeSpec:
    b = _Fields(path, f"bridge[{n}]", raw, ("id", "kind"))
    kind = b.choice("kind", BRIDGE_KINDS, "pci-bridge")
    if kind == "pci-bridge" and arch != "x86_64":
        b.fail(
            b.name("kind"),
            f"pci-bridge on {arch}: Linux's SMMUv3 and virtio-iommu drivers give devices "
            'behind one no IOMMU group (their requester IDs alias); use "multifunction"',
        )
    return BridgeSpec(id=_identifier(b, "id"), kind=kind)


def _parse_device(path: Path, n: int, raw: Any, iommu: IommuSpec | None) -> NcdmaSpec:
    d = _Fields(
        path,
        f"device[{n}]",
        raw,
        ("id", "kind", "bus", "iommu", *(p.name for p in ncdma_spec.PROPERTIES)),
    )
    d.choice("kind", ("ncdma",), "ncdma")
    line = _property(d, "line-size", _power_of_two)
    ways = _property(d, "cache-ways")
    size = _property(
        d,
        "cache-size",
        lambda v, unit=line * ways: (
            None if v % unit == 0 else f"must be a multiple of line-size * cache-ways ({unit})"
        ),
    )
    route = d.choice("iommu", ("yes", BYPASS), "yes")
    if route == "yes" and iommu is None and "iommu" in d.table:
        d.fail(d.name("iommu"), "the topology has no [iommu] table")
    return NcdmaSpec(
        id=_identifier(d, "id"),
        bus=d.get("bus", str, OWN_ROOT_PORT),
        bypass_iommu=route == BYPASS,
        coherent=d.get("coherent", bool, bool(_default("coherent"))),
        line_size=line,
        cache_size=size,
        cache_ways=ways,
        # The spec's ranges are the ones ncdma's realize checks: QEMU never refuses a
        # checked topology.
        iotlb_entries=_property(d, "iotlb-entries"),
        max_xfer=_property(d, "max-xfer"),
        vlog_size=_property(d, "vlog-size"),
        xlog_size=_property(d, "xlog-size"),
        xlog_segs=_property(d, "xlog-segs"),
    )


def _parse_kernel(path: Path, data: Mapping[str, Any]) -> KernelSpec:
    k = _Fields(path, "kernel", data.get("kernel", {}), ("kernel", "modules", "args"))
    args = k.get("args", list, [])
    for n, word in enumerate(args):
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            k.fail(f"kernel.args[{n}]", "must be one non-empty word without spaces")
    kernel_file = k.get("kernel", str)
    modules = k.get("modules", str)
    if modules and not kernel_file:
        k.fail("kernel.modules", "needs kernel.kernel too (a module tree goes with its kernel)")
    return KernelSpec(
        kernel=_relative(path, kernel_file),
        modules=_relative(path, modules),
        args=tuple(args),
    )


def _array(top: _Fields, key: str, data: Mapping[str, Any]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        top.fail(key, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
    return value


def _identifier(f: _Fields, key: str) -> str:
    value = f.get(key, str, required=True)
    if not value or not (value[0].isalpha() and all(c.isalnum() or c in "-_" for c in value)):
        f.fail(f.name(key), f"{value!r} is not an id (a letter, then letters, digits, - or _)")
    return value


def _relative(topology: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else topology.parent / path


def _check_references(
    path: Path, arch: str, bridges: list[BridgeSpec], devices: list[NcdmaSpec]
) -> None:
    seen: dict[str, str] = {}
    for kind, items in (("bridge", bridges), ("device", devices)):
        for n, item in enumerate(items):
            if item.id in seen:
                raise BadInput(
                    f"{path}: {kind}[{n}].id: {item.id!r} is already used by a {seen[item.id]}"
                )
            seen[item.id] = kind
    names = {b.id for b in bridges}
    for bridge in bridges:
        members = [d for d in devices if d.bus == bridge.id]
        if bridge.kind == "multifunction" and len(members) > MAX_FUNCTIONS:
            raise BadInput(
                f"{path}: bridge {bridge.id!r}: {len(members)} devices, but one multifunction "
                f"slot has {MAX_FUNCTIONS} functions"
            )
    for n, dev in enumerate(devices):
        if dev.bus not in (OWN_ROOT_PORT, ROOT_COMPLEX) and dev.bus not in names:
            known = ", ".join([OWN_ROOT_PORT, ROOT_COMPLEX, *sorted(names)])
            raise BadInput(
                f"{path}: device[{n}].bus: no bridge {dev.bus!r} (expected one of: {known})"
            )
        if dev.bypass_iommu and arch != "x86_64":
            raise BadInput(
                f"{path}: device[{n}].iommu: bypass needs an extra root bus, which {arch}'s "
                "virt machine describes only through ACPI, not the device tree dmalab boots with"
            )
        if dev.bypass_iommu and dev.bus != OWN_ROOT_PORT:
            raise BadInput(
                f'{path}: device[{n}].iommu: bypass needs bus = "root-port" (the '
                "device gets a root port on a root bus that bypasses the IOMMU)"
            )
