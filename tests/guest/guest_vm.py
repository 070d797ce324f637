"""What the guest tests add to a booted `Vm`: the guest's name for each device, and a reset.

The machines are topologies/<iommu>.toml, booted with `launch.boot` as `dmalab up` boots them:
the shipped `default` (intel-iommu; dma0 and dma1 behind one PCIe-to-PCI bridge, so one IOMMU
group and one domain; dma2 on a root port of its own) and `virtio-iommu` (three devices on the
root complex, each in its own domain), with dma1 limited to 4100 bytes per descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmalab.machine.repl import guest_devices
from dmalab.machine.vm import Vm

TOPOLOGIES = Path(__file__).parent / "topologies"
IOMMUS = ("intel-iommu", "virtio-iommu")
DEVICES = ("dma0", "dma1", "dma2")
#: Devices that share one IOMMU domain, per topology.
SHARED_DOMAIN: dict[str, tuple[str, str] | None] = {
    "intel-iommu": ("dma0", "dma1"),
    "virtio-iommu": None,
}


@dataclass(frozen=True)
class Guest:
    """A booted machine with each device's N of /dev/ncdmaN and PCI address, by QOM id."""

    vm: Vm
    iommu: str
    index: dict[str, int]
    pci: dict[str, str]

    @classmethod
    async def of(cls, vm: Vm, iommu: str) -> Guest:
        found = await guest_devices(vm)
        assert sorted(found) == sorted(DEVICES), found
        return cls(
            vm,
            iommu,
            {qid: info.index for qid, info in found.items()},
            {qid: info.pci_name for qid, info in found.items()},
        )

    def dev(self, qid: str) -> int:
        return self.index[qid]

    async def reset_stats(self) -> None:
        """Every device's counters and logs, and the driver's statistics, back to zero."""
        for qid in DEVICES:
            await self.vm.device(qid).reset_stats()
            await self.vm.agent.stats(self.dev(qid), reset=True)
