"""A qtest machine with ncdma devices and, optionally, an IOMMU programmed from this side.

`NcdmaRig` is what device tests, `dmalab fuzz`, `dmalab bench device` and the demo share: it boots
the machine (q35 with intel-iommu, or arm virt with its SMMUv3), finds and enables the devices,
gives each a ring, and offers buffers (guest-physical pages) that it maps into a device's IOVA
space when an IOMMU translates it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmalab.machine.ncdma_host import NcdmaHost
from dmalab.machine.pagetable import IoDomain, PagingIommu
from dmalab.machine.pci import PciDevice, PciTree
from dmalab.machine.physmem import MiB, PhysAllocator
from dmalab.machine.qtest import BOARDS, QtestVM
from dmalab.machine.smmuv3 import SmmuV3
from dmalab.machine.vtd import IntelIommu
from dmalab.spec import ncdma as spec

PAGE = 4096
RING_ENTRIES = 256
#: IOVAs are handed out from here, far from any physical address, so a test that confuses the
#: two fails loudly.
IOVA_BASE = 0x7_0000_0000


@dataclass
class RigDevice:
    id: str
    pci: PciDevice
    host: NcdmaHost
    domain: IoDomain | None
    qom_path: str


@dataclass
class NcdmaRig:
    vm: QtestVM
    mem: PhysAllocator
    devices: list[RigDevice]
    iommu: PagingIommu[Any] | None
    _next_iova: dict[IoDomain, int] = field(default_factory=dict)

    @property
    def qtest(self) -> Any:
        return self.vm.qtest

    def alloc(self, size: int) -> int:
        """Guest-physical pages for a buffer."""
        return self.mem.alloc(size)

    async def map(
        self,
        dev: RigDevice,
        pa: int,
        size: int,
        *,
        iova: int | None = None,
        read: bool = True,
        write: bool = True,
    ) -> int:
        """The address dev must use for [pa, pa+size): a fresh IOVA behind the IOMMU, else pa."""
        if dev.domain is None or self.iommu is None:
            return pa
        size = -(-size // PAGE) * PAGE
        if iova is None:
            iova = self._next_iova.get(dev.domain, IOVA_BASE)
            self._next_iova[dev.domain] = iova + size + PAGE  # a guard page between buffers
        await self.iommu.map(dev.domain, iova, pa, size, read=read, write=write)
        return iova

    async def unmap(self, dev: RigDevice, iova: int, size: int) -> None:
        if dev.domain is not None and self.iommu is not None:
            await self.iommu.unmap(dev.domain, iova, -(-size // PAGE) * PAGE)

    async def qom(self, dev: RigDevice, prop: str) -> Any:
        return await self.vm.qmp.execute("qom-get", {"path": dev.qom_path, "property": prop})

    async def reset_stats(self, dev: RigDevice) -> None:
        await self.vm.qmp.execute(
            "qom-set", {"path": dev.qom_path, "property": "reset-stats", "value": True}
        )


@contextlib.asynccontextmanager
async def ncdma_rig(
    qemu_argv: Sequence[str],
    devices: Sequence[str] = ("",),
    *,
    iommu: str | None = None,
    arch: str = "x86_64",
    shared_domain: bool = False,
    memory_mib: int = 256,
    artifacts_dir: Path | None = None,
    ring_entries: int = RING_ENTRIES,
) -> AsyncIterator[NcdmaRig]:
    """Boot q35 (or virt, `arch` "aarch64") under qtest with one ncdma per entry of `devices`
    (extra -device properties); `qemu_argv` must start the binary of `arch`.

    `iommu` is an intel-iommu -device value (e.g. "intel-iommu,caching-mode=on") on q35, or
    "smmuv3" on virt; each device then gets its own domain, or all share one with `shared_domain`,
    and translation is enabled.
    """
    ids = [f"ncdma{i}" for i in range(len(devices))]
    args = [
        f"ncdma,id={i}" + (f",{props}" if props else "")
        for i, props in zip(ids, devices, strict=True)
    ]
    board = BOARDS[arch]
    vm = QtestVM(
        qemu_argv,
        board=board,
        iommu=iommu,
        devices=args,
        memory_mib=memory_mib,
        artifacts_dir=artifacts_dir,
        name="ncdma",
    )
    async with vm:
        mem = PhysAllocator(vm.ram_end, board.ram_base + 16 * MiB)
        tree = await PciTree.scan(
            vm.qtest, mmio32=board.mmio32, mmio64=board.mmio64, ecam=board.ecam
        )
        unit: PagingIommu[Any] | None = None
        if iommu == "smmuv3":
            smmu = SmmuV3(vm.qtest, mem)
            await smmu.setup(max(8, max(d.bdf.sid for d in tree).bit_length()))
            unit = smmu
        elif iommu is not None:
            vtd = IntelIommu(vm.qtest, mem)
            await vtd.setup()
            unit = vtd
        rig = NcdmaRig(vm=vm, mem=mem, devices=[], iommu=unit)
        shared = await unit.new_domain() if unit and shared_domain else None
        for index, dev_id in enumerate(ids):
            pci = tree.find(spec.PCI_VENDOR_ID, spec.PCI_DEVICE_ID, index)
            domain: IoDomain | None = None
            if unit is not None:
                domain = shared or await unit.new_domain()
                await unit.attach(pci, domain)
            ring_pa = mem.alloc(ring_entries * spec.DESC_SIZE)
            host = NcdmaHost(
                vm.qtest, pci.bar(spec.REGS_BAR).address, ring_pa, ring_pa, ring_entries
            )
            device = RigDevice(dev_id, pci, host, domain, f"/machine/peripheral/{dev_id}")
            rig.devices.append(device)
        if unit is not None:
            await unit.enable_translation()
        for device in rig.devices:
            device.host.ring_iova = await rig.map(
                device, device.host.ring_pa, ring_entries * spec.DESC_SIZE
            )
            await device.host.enable()
        yield rig
