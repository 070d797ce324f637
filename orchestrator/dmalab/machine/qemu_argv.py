"""Topology -> QEMU command line: a pure function, so every shipped topology is unit-tested.

The command line names two chardevs it does not create, `console` and `agent`: whoever starts
QEMU provides them (QemuProcess passes each as one end of a socketpair). Guest RAM is a file
descriptor the host also maps, so the host reads and writes guest memory without copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dmalab.machine.topology import MACHINES, OWN_ROOT_PORT, ROOT_COMPLEX, NcdmaSpec, Topology
from dmalab.spec import agent as agent_spec

AGENT_PORT_NAME = agent_spec.PORT_NAME
CONSOLE_CHARDEV = "console"
AGENT_CHARDEV = "agent"
#: Bus number of the extra root bus whose devices bypass the vIOMMU.
BYPASS_BUS_NR = 128


@dataclass(frozen=True)
class Boot:
    kernel: Path
    initrd: Path
    cmdline: str


def _props(driver: str, **props: str | int | None) -> str:
    """driver,key=value,... with the keys' underscores written as QEMU's dashes."""
    return _exact(driver, {k.replace("_", "-"): v for k, v in props.items()})


def _exact(driver: str, props: dict[str, str | int | None]) -> str:
    """driver,key=value,... with the keys as given (a few QEMU properties use underscores)."""
    return ",".join([driver, *(f"{k}={v}" for k, v in props.items() if v is not None)])


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def qemu_argv(
    topology: Topology,
    boot: Boot,
    *,
    accel: str,
    ram_fd: int | None = None,
    agent: bool = True,
) -> list[str]:
    """Everything after QEMU's binary and -L directories. `accel` is "tcg" or "kvm" (resolved);
    without `agent` there is no virtio-serial port (and no `agent` chardev to provide)."""
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accel must be resolved to tcg or kvm, not {accel!r}")
    m = topology.machine
    machine, argv = _machine(topology)
    argv += [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-accel",
        accel,
        "-smp",
        str(m.smp),
        "-m",
        f"{m.memory_mib}M",
    ]
    if ram_fd is not None:
        machine.append("memory-backend=ram")
        argv += [
            "-object",
            _props(
                "memory-backend-file",
                id="ram",
                size=f"{m.memory_mib}M",
                mem_path=f"/dev/fd/{ram_fd}",
                share="on",
            ),
        ]
    argv[0:0] = ["-machine", ",".join(machine)]

    # The vIOMMU must exist before any device it translates.
    argv += _iommu_args(topology)
    argv += _pci_args(topology)
    argv += _agent_and_boot_args(boot, agent=agent)
    return argv


def _iommu_args(topology: Topology) -> list[str]:
    """The -device of the topology's vIOMMU, if it is one of its own (not the machine's)."""
    iommu = topology.iommu
    if iommu and iommu.kind == "intel-iommu":
        return [
            "-device",
            _props(
                "intel-iommu",
                caching_mode=_onoff(iommu.caching_mode),
                intremap=_onoff(iommu.intremap),
                aw_bits=iommu.aw_bits,
            ),
        ]
    if iommu and iommu.kind == "virtio-iommu":
        return ["-device", _props("virtio-iommu-pci", bus="pcie.0")]
    return []


def _pci_args(topology: Topology) -> list[str]:
    """The bypass root bus, the bridges and root ports, and the ncdma devices behind them."""
    argv: list[str] = []
    chassis = iter(range(1, 256))
    if any(d.bypass_iommu for d in topology.devices):
        argv += [
            "-device",
            _exact(
                "pxb-pcie",
                {
                    "id": "pxb-bypass",
                    "bus": "pcie.0",
                    "bus_nr": BYPASS_BUS_NR,
                    "bypass_iommu": "on",
                },
            ),
        ]
    functions: dict[str, Iterator[int]] = {}
    for bridge in topology.bridges:
        port = f"rp-{bridge.id}"
        argv += ["-device", _props("pcie-root-port", id=port, bus="pcie.0", chassis=next(chassis))]
        if bridge.kind == "multifunction":
            functions[bridge.id] = iter(range(8))
        else:
            argv += ["-device", _props("pcie-pci-bridge", id=bridge.id, bus=port)]
    for dev in topology.devices:
        if dev.bus in functions:
            # One slot, one function each, no ACS between them: one IOMMU group.
            slot = {"addr": f"0.{next(functions[dev.bus])}", "multifunction": "on"}
            argv += _device(dev, chassis, f"rp-{dev.bus}", slot)
        else:
            argv += _device(dev, chassis)
    return argv


def _agent_and_boot_args(boot: Boot, *, agent: bool) -> list[str]:
    """The agent's virtio-serial port (with `agent`), the console, the kernel and its command
    line."""
    argv: list[str] = []
    if agent:
        argv += [
            "-device",
            _props("virtio-serial-pci", id="vser", bus="pcie.0"),
            "-device",
            _props("virtserialport", bus="vser.0", chardev=AGENT_CHARDEV, name=AGENT_PORT_NAME),
        ]
    return [
        *argv,
        "-serial",
        f"chardev:{CONSOLE_CHARDEV}",
        "-kernel",
        str(boot.kernel),
        "-initrd",
        str(boot.initrd),
        "-append",
        boot.cmdline,
    ]


def _machine(topology: Topology) -> tuple[list[str], list[str]]:
    """The -machine words and the arguments that go with this architecture's machine."""
    m = topology.machine
    iommu = topology.iommu_kind
    if m.arch == "aarch64":
        # GICv3 for MSIs through the ITS; the SMMUv3 is virt's own, in front of its PCIe bridge.
        machine = ["virt", "gic-version=3"]
        if iommu == "smmuv3":
            machine.append("iommu=smmuv3")
        if m.coherency == "noncoherent":
            machine.append("x-noncoherent=on")
        return machine, ["-cpu", m.cpu or "cortex-a57"]
    machine = [MACHINES[m.arch]]
    if topology.iommu and iommu == "intel-iommu" and topology.iommu.intremap:
        machine.append("kernel-irqchip=split")  # interrupt remapping needs the split irqchip
    # qboot, and the kernel through its PVH entry: the fastest x86 boot.
    return machine, ["-bios", "qboot.rom"]


def _device(
    dev: NcdmaSpec,
    chassis: Iterator[int],
    port: str | None = None,
    slot: dict[str, str] | None = None,
) -> list[str]:
    args: list[str] = []
    if port is not None:
        bus = port
    elif dev.bus == OWN_ROOT_PORT:
        bus = f"rp-{dev.id}"
        parent = "pxb-bypass" if dev.bypass_iommu else "pcie.0"
        args += ["-device", _props("pcie-root-port", id=bus, bus=parent, chassis=next(chassis))]
    elif dev.bus == ROOT_COMPLEX:
        bus = "pcie.0"
    else:
        bus = dev.bus
    place = {"id": dev.id, "bus": bus, **(slot or {})}
    return [*args, "-device", _exact("ncdma", {**place, **dev.qemu_props()})]
