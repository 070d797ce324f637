"""Booting a guest for the driver and agent tests: q35 with a vIOMMU, three ncdma devices, the
agent's virtio-serial port, and QMP. One guest per vIOMMU per test module.

nc1 accepts at most 4100 bytes per descriptor, so the driver must split descriptors (at a
length that is not a multiple of 8, which FILL's pattern phase must survive).

Topologies:
- intel-iommu (caching-mode=on, `intel_iommu=on iommu.strict=1`): nc0 and nc1 behind one
  PCIe-to-PCI bridge (one IOMMU group, so one domain), nc2 on the root bus.
- virtio-iommu (`iommu.strict=1`, virtio_iommu loaded first): nc0, nc1, nc2 on the root bus
  (QEMU 10's x86 virtio-iommu does not translate devices behind a PCIe-to-PCI bridge).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine.agent import AgentClient
from dmalab.machine.process import QemuProcess

BOOT_TIMEOUT_S = 120.0  # TCG on a busy 2-core machine
DEVICES = ("nc0", "nc1", "nc2")

TOPOLOGIES: dict[str, list[str]] = {
    "intel-iommu": [
        "-machine",
        "q35,kernel-irqchip=split",
        "-device",
        "intel-iommu,caching-mode=on,intremap=on",
        "-device",
        "pcie-pci-bridge,id=br0,bus=pcie.0",
        "-device",
        "ncdma,id=nc0,bus=br0,addr=1",
        "-device",
        "ncdma,id=nc1,bus=br0,addr=2,max-xfer=4100",
        "-device",
        "ncdma,id=nc2",
    ],
    "virtio-iommu": [
        "-machine",
        "q35",
        "-device",
        "virtio-iommu-pci",
        "-device",
        "ncdma,id=nc0",
        "-device",
        "ncdma,id=nc1,max-xfer=4100",
        "-device",
        "ncdma,id=nc2",
    ],
}
#: Devices that share one IOMMU domain, per topology.
SHARED_DOMAIN: dict[str, tuple[str, str] | None] = {
    "intel-iommu": ("nc0", "nc1"),
    "virtio-iommu": None,
}


@dataclass
class Guest:
    """A running guest: QMP through `qemu.qmp`, the agent, and QEMU device id <-> guest index."""

    qemu: QemuProcess
    agent: AgentClient
    iommu: str
    console: Path
    index: dict[str, int] = field(default_factory=dict)  # "nc0" -> N of /dev/ncdmaN
    pci: dict[str, str] = field(default_factory=dict)  # "nc0" -> "0000:01:01.0"

    def dev(self, qid: str) -> int:
        return self.index[qid]

    async def qom(self, qid: str, prop: str) -> Any:
        return await self.qemu.qmp.execute(
            "qom-get", {"path": f"/machine/peripheral/{qid}", "property": prop}
        )

    async def counters(self, qid: str) -> dict[str, int]:
        return await self.qom(qid, "counters")

    async def transactions(self, qid: str, cookie: int | None = None) -> list[dict[str, Any]]:
        txs = await self.qom(qid, "transactions")
        return [t for t in txs if cookie is None or t["cookie"] == cookie]

    async def reset_stats(self) -> None:
        for qid in DEVICES:
            await self.qemu.qmp.execute(
                "qom-set",
                {"path": f"/machine/peripheral/{qid}", "property": "reset-stats", "value": True},
            )
            await self.agent.stats(self.dev(qid), reset=True)

    async def pmem(self, pa: int, size: int) -> bytes:
        """Guest memory by physical address (QMP pmemsave)."""
        fd, name = tempfile.mkstemp(prefix="dmalab-pmem-")
        os.close(fd)
        try:
            await self.qemu.qmp.execute("pmemsave", {"val": pa, "size": size, "filename": name})
            return Path(name).read_bytes()
        finally:
            os.unlink(name)

    def console_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _pci_ids(buses: list[dict[str, Any]]) -> dict[str, str]:
    """qdev id -> PCI address, from query-pci."""
    found: dict[str, str] = {}

    def walk(devices: list[dict[str, Any]], busnr: int) -> None:
        for dev in devices:
            if dev.get("qdev_id"):
                found[dev["qdev_id"]] = f"0000:{busnr:02x}:{dev['slot']:02x}.{dev['function']}"
            bridge = dev.get("pci_bridge")
            if bridge and bridge.get("devices") is not None:
                walk(bridge["devices"], bridge["bus"]["secondary"])

    for bus in buses:
        walk(bus["devices"], bus["bus"])
    return found


@contextlib.asynccontextmanager
async def boot(
    qemu_build: QemuBuild, image: ImageBuild, iommu: str, run_dir: Path
) -> AsyncIterator[Guest]:
    console = run_dir / "console.log"
    argv = [
        *qemu_build.base_argv(),
        "-bios",
        "/usr/share/qemu/qboot.rom",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initramfs),
        "-append",
        image.cmdline_for(iommu),
        "-serial",
        f"file:{console}",
        *TOPOLOGIES[iommu],
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=agent,name=dmalab.agent",
    ]
    async with QemuProcess(
        argv, name=f"guest-{iommu}", channels=["agent"], artifacts_dir=run_dir
    ) as qemu:
        agent = await AgentClient.over_socket(qemu.channel("agent"))
        guest = Guest(qemu, agent, iommu, console)
        try:
            try:
                hello = await agent.request("HELLO", timeout=BOOT_TIMEOUT_S)
            except Exception as exc:
                exc.add_note(f"console:\n{guest.console_tail()}")
                raise
            assert hello[0].devices == len(DEVICES)
            pci = _pci_ids(await qemu.qmp.execute("query-pci"))
            for index in range(len(DEVICES)):
                info = await agent.device_info(index)
                qid = next(q for q, addr in pci.items() if addr == info.pci_name)
                guest.index[qid] = index
                guest.pci[qid] = info.pci_name
            yield guest
        finally:
            await agent.close()
