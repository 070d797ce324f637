"""The host-side machinery on a real QEMU: process lifecycle, qtest, PCI, VT-d, with QEMU's `edu`.

edu (hw/misc/edu.c) copies between guest memory and a 4 KiB buffer at device address 0x40000
when its DMA timer fires, 100 ms of virtual time after the command; `dma_mask` is widened so
IOVAs above 256 MiB reach the IOMMU unclamped.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import stat
from pathlib import Path

import pytest

from dmalab.machine.pci import MMIO64_WINDOW, Bdf, PciDevice, PciError, PciTree
from dmalab.machine.physmem import MiB, PhysAllocator, align_up
from dmalab.machine.process import EVENTS_LOG, QEMU_LOG, QemuDied, QemuProcess, QemuStartFailed
from dmalab.machine.qtest import VIRT, QtestConnectionLost, QtestError, QtestVM
from dmalab.machine.vtd import FSTS_PPF, IntelIommu, invalidation_blocks

EDU = (0x1234, 0x11E8)
EDU_WIDE = "edu,dma_mask=0xffffffffffffffff"
IOMMU = "intel-iommu,caching-mode=on"
PAGE = 4096


def group_members(pgid: int) -> list[int]:
    """Processes (zombies included) whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def idle_argv(qemu_argv: list[str]) -> list[str]:
    """A QEMU that does nothing and needs no firmware."""
    return [*qemu_argv, "-machine", "none", "-accel", "qtest", "-display", "none", "-nodefaults"]


class Edu:
    DMA_BUFFER = 0x40000
    SRC, DST, COUNT, CMD = 0x80, 0x88, 0x90, 0x98
    CMD_RUN, CMD_TO_RAM, CMD_IRQ = 0x1, 0x2, 0x4
    RAISE_IRQ = 0x60

    def __init__(self, device: PciDevice) -> None:
        self.device = device
        self.qtest = device.qtest
        self.mmio = device.bar(0).address

    async def dma(self, src: int, dst: int, count: int, *, to_ram: bool, irq: bool = False) -> None:
        qt = self.qtest
        await qt.writeq(self.mmio + self.SRC, src)
        await qt.writeq(self.mmio + self.DST, dst)
        await qt.writeq(self.mmio + self.COUNT, count)
        command = self.CMD_RUN | (self.CMD_TO_RAM if to_ram else 0) | (self.CMD_IRQ if irq else 0)
        await qt.writeq(self.mmio + self.CMD, command)
        await qt.clock_step(100_000_000)
        assert not await qt.readq(self.mmio + self.CMD) & self.CMD_RUN, "edu DMA still running"

    async def from_ram(self, addr: int, count: int = PAGE) -> None:
        await self.dma(addr, self.DMA_BUFFER, count, to_ram=False)

    async def to_ram(self, addr: int, count: int = PAGE) -> None:
        await self.dma(self.DMA_BUFFER, addr, count, to_ram=True)

    async def check_round_trip(self, mem: PhysAllocator, seed: int) -> None:
        """A page copied from RAM into the device's buffer and back to another page is intact."""
        src, dst = mem.alloc(PAGE), mem.alloc(PAGE)
        data = random.Random(seed).randbytes(PAGE)
        await self.qtest.write(src, data)
        await self.from_ram(src)
        await self.to_ram(dst)
        assert await self.qtest.read(dst, PAGE) == data


# ----------------------------------------------------------------------------------------------
# QEMU process lifecycle


async def test_process_clean_exit_leaves_nothing(qemu_argv, run_base, artifacts):
    async with QemuProcess(idle_argv(qemu_argv), artifacts_dir=artifacts) as qemu:
        assert qemu.run_dir is not None and qemu.run_dir.parent == run_base
        assert stat.S_IMODE(qemu.run_dir.stat().st_mode) == 0o700
        assert (await qemu.qmp.execute("query-status"))["running"]
        pid = qemu.pid
    assert qemu.returncode == 0
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []
    assert not artifacts.exists()


async def test_process_records_qmp_events(qemu_argv, run_base):
    async with QemuProcess(idle_argv(qemu_argv)) as qemu:
        await qemu.qmp.execute("stop")
        for _ in range(100):
            if '"STOP"' in qemu.events_path.read_text():
                break
            await asyncio.sleep(0.01)
        assert '"STOP"' in qemu.events_path.read_text()


async def test_process_body_error_keeps_artifacts(qemu_argv, run_base, artifacts):
    with pytest.raises(ValueError, match="body failed") as caught:
        async with QemuProcess(idle_argv(qemu_argv), artifacts_dir=artifacts) as qemu:
            pid = qemu.pid
            raise ValueError("body failed")
    (kept,) = artifacts.iterdir()
    assert str(kept) in "\n".join(caught.value.__notes__)
    assert (kept / QEMU_LOG).is_file() and (kept / EVENTS_LOG).is_file()
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []


async def test_process_killed_mid_body_is_reported(qemu_argv, run_base, artifacts):
    with pytest.raises(QemuDied, match="SIGKILL") as caught:
        async with QemuProcess(idle_argv(qemu_argv), artifacts_dir=artifacts) as qemu:
            pid = qemu.pid
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(qemu._proc.wait(), 10)  # type: ignore[union-attr]
    (kept,) = artifacts.iterdir()
    assert str(kept) in str(caught.value)
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []


async def test_process_cancelled_body_stops_qemu(qemu_argv, run_base, artifacts):
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        async with QemuProcess(idle_argv(qemu_argv), artifacts_dir=artifacts) as qemu:
            started.set_result(qemu.pid)
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    pid = await asyncio.wait_for(started, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert (kept / QEMU_LOG).is_file()


async def test_process_hung_qemu_is_killed(qemu_argv, run_base, artifacts):
    """A stopped QEMU answers neither quit nor SIGTERM: only SIGKILL ends it."""
    argv = idle_argv(qemu_argv)
    with pytest.raises(QemuDied, match="SIGKILL after it ignored quit"):
        async with QemuProcess(
            argv, artifacts_dir=artifacts, quit_timeout=0.3, term_timeout=0.3
        ) as qemu:
            pid = qemu.pid
            os.kill(pid, signal.SIGSTOP)
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []


async def test_process_cancelled_twice_still_kills_qemu(qemu_argv, run_base, artifacts):
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        async with QemuProcess(
            idle_argv(qemu_argv), artifacts_dir=artifacts, quit_timeout=60
        ) as qemu:
            started.set_result(qemu.pid)
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    pid = await asyncio.wait_for(started, 30)
    os.kill(pid, signal.SIGSTOP)  # so the quit in __aexit__ hangs
    task.cancel()
    await asyncio.sleep(0.2)
    task.cancel()  # interrupts the shutdown itself
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the child watcher reaps it in the background
        if not group_members(pid):
            break
        await asyncio.sleep(0.05)
    assert group_members(pid) == []
    assert list(run_base.iterdir()) == []


async def test_process_start_failure_says_why(qemu_argv, run_base, artifacts):
    with pytest.raises(QemuStartFailed, match="no-such-option"):
        async with QemuProcess([*idle_argv(qemu_argv), "-no-such-option"], artifacts_dir=artifacts):
            pass
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert "no-such-option" in (kept / QEMU_LOG).read_text()


# ----------------------------------------------------------------------------------------------
# qtest protocol


async def test_qtest_bulk_16mib_byte_exact(qemu_argv, run_base):
    data = random.Random(1).randbytes(16 * MiB)
    async with QtestVM(qemu_argv, memory_mib=64) as vm:
        await vm.qtest.write(16 * MiB, data)
        assert await vm.qtest.read(16 * MiB, 16 * MiB) == data


async def test_qtest_scalar_and_small_accesses(qemu_argv, run_base):
    async with QtestVM(qemu_argv, memory_mib=64) as vm:
        qt = vm.qtest
        base = 16 * MiB
        await qt.writeq(base, 0x0123_4567_89AB_CDEF)
        assert await qt.readb(base) == 0xEF
        assert await qt.readw(base + 2) == 0x89AB
        assert await qt.readl(base + 4) == 0x0123_4567
        assert await qt.read(base + 1, 3) == bytes.fromhex("cdab89")
        await qt.writel(base, 0xFFFF_FFFF)
        await qt.writew(base, 0x1234)
        await qt.writeb(base, 0x56)
        assert await qt.readq(base) == 0x0123_4567_FFFF_1256
        await qt.memset(base + 1, 5, 0xA5)
        assert await qt.read(base, 8) == bytes([0x56, *[0xA5] * 5, 0x23, 0x01])
        await qt.write(base + 4093, b"xyz123")  # crosses a page
        assert await qt.read(base + 4093, 6) == b"xyz123"
        assert await qt.read(base, 0) == b""


async def test_qtest_errors_and_irq_lines(qemu_argv, run_base):
    async with QtestVM(qemu_argv, memory_mib=64) as vm:
        qt = vm.qtest
        with pytest.raises(QtestError, match="ERR invalid argument size"):
            await qt.command("write 0x1000000 1 0x")
        with pytest.raises(QtestError, match="Unknown command"):
            await qt.command("no_such_command")
        await qt.irq_intercept_in("ioapic")
        await qt.set_irq_in("ioapic", "unnamed-gpio-in", 5, 1)
        await qt.set_irq_in("ioapic", "unnamed-gpio-in", 5, 0)
        assert [(e.line, e.raised) for e in qt.irq_events] == [(5, True), (5, False)]
        assert qt.irq_levels == {5: False}
        assert await qt.readl(16 * MiB) == 0  # replies still line up after the IRQ lines


async def test_qtest_reports_qemu_death(qemu_argv, run_base, artifacts):
    with pytest.raises(QemuDied, match="SIGKILL") as caught:
        async with QtestVM(qemu_argv, memory_mib=64, artifacts_dir=artifacts) as vm:
            os.kill(vm.process.pid, signal.SIGKILL)
            await vm.qtest.readl(0)
    assert isinstance(caught.value.__cause__, QtestConnectionLost)


# ----------------------------------------------------------------------------------------------
# edu without and with intel-iommu


async def test_edu_dma_round_trip_without_iommu(qemu_argv, run_base):
    async with QtestVM(qemu_argv, devices=["edu"], memory_mib=64) as vm:
        qt = vm.qtest
        edu = Edu((await PciTree.scan(qt)).find(*EDU))
        await edu.check_round_trip(PhysAllocator(vm.memory_size), 2)


async def test_edu_msi_lands_in_ram(qemu_argv, run_base):
    async with QtestVM(qemu_argv, devices=["edu"], memory_mib=64) as vm:
        qt = vm.qtest
        edu = Edu((await PciTree.scan(qt)).find(*EDU))
        mailbox = PhysAllocator(vm.memory_size).alloc(PAGE)
        await edu.device.msi_enable(mailbox + 0x40, 0x4321)
        await qt.writel(edu.mmio + Edu.RAISE_IRQ, 1)
        assert await qt.readl(mailbox + 0x40) == 0x4321


def iommu_vm(qemu_argv: list[str], *devices: str) -> QtestVM:
    return QtestVM(qemu_argv, iommu=IOMMU, devices=devices, memory_mib=64)


async def test_edu_through_iommu_round_trip_unmap_and_fault(qemu_argv, run_base):
    async with iommu_vm(qemu_argv, EDU_WIDE) as vm:
        qt = vm.qtest
        edu = Edu((await PciTree.scan(qt)).find(*EDU))
        mem = PhysAllocator(vm.memory_size)
        iommu = IntelIommu(qt, mem)
        await iommu.setup()
        domain = await iommu.new_domain()
        await iommu.attach(edu.device, domain)
        await iommu.enable_translation()

        src, dst = mem.alloc(PAGE), mem.alloc(PAGE)
        src_iova, dst_iova = 0x7_1234_5000, 0x5_0000_0000  # far from any PA, distinct tables
        await iommu.map(domain, src_iova, src, PAGE, write=False)
        await iommu.map(domain, dst_iova, dst, PAGE)
        data = random.Random(3).randbytes(PAGE)
        await qt.write(src, data)
        await edu.from_ram(src_iova)
        await edu.to_ram(dst_iova)
        assert await qt.read(dst, PAGE) == data
        assert await iommu.faults() == []

        await iommu.unmap(domain, dst_iova, PAGE)
        await qt.memset(dst, PAGE, 0xAA)
        await edu.to_ram(dst_iova)
        assert await qt.read(dst, PAGE) == b"\xaa" * PAGE  # landed nowhere
        assert await iommu.fault_status() & FSTS_PPF
        (fault,) = await iommu.faults()
        assert (fault.source, fault.address, fault.is_write) == (edu.device.bdf, dst_iova, True)

        await iommu.clear_faults()
        assert not await iommu.fault_status() & FSTS_PPF
        assert await iommu.faults() == []


async def test_edu_behind_root_port_shared_and_separate_domains(qemu_argv, run_base):
    devices = ["pcie-root-port,id=rp0,chassis=1", f"{EDU_WIDE},bus=rp0", EDU_WIDE, EDU_WIDE]
    async with iommu_vm(qemu_argv, *devices) as vm:
        qt = vm.qtest
        tree = await PciTree.scan(qt)
        behind, *on_root = (Edu(d) for d in sorted(tree.find_all(*EDU), key=lambda d: -d.bdf.bus))
        assert behind.device.bdf.bus == 1 and behind.device.parent is not None
        mem = PhysAllocator(vm.memory_size)
        iommu = IntelIommu(qt, mem)
        await iommu.setup()
        shared, alone = await iommu.new_domain(), await iommu.new_domain()
        await iommu.attach(behind.device, shared)
        await iommu.attach(on_root[0].device, shared)
        await iommu.attach(on_root[1].device, alone)
        await iommu.enable_translation()

        buffer = mem.alloc(4 * PAGE)
        iova = 0x40_0000_0000
        await iommu.map(domain=shared, iova=iova, pa=buffer, size=4 * PAGE)
        for i, edu in enumerate([behind, on_root[0]]):
            data = random.Random(10 + i).randbytes(PAGE)
            await qt.write(buffer + i * PAGE, data)
            await edu.from_ram(iova + i * PAGE)
            await edu.to_ram(iova + (i + 2) * PAGE)
            assert await qt.read(buffer + (i + 2) * PAGE, PAGE) == data

        before = await qt.read(buffer, 4 * PAGE)
        await on_root[1].to_ram(iova)  # not mapped in its own domain
        assert await qt.read(buffer, 4 * PAGE) == before
        (fault,) = await iommu.faults()
        assert fault.source == on_root[1].device.bdf


async def test_edu_msi_through_iommu(qemu_argv, run_base):
    async with iommu_vm(qemu_argv, EDU_WIDE) as vm:
        qt = vm.qtest
        edu = Edu((await PciTree.scan(qt)).find(*EDU))
        mem = PhysAllocator(vm.memory_size)
        iommu = IntelIommu(qt, mem)
        await iommu.setup()
        domain = await iommu.new_domain()
        await iommu.attach(edu.device, domain)
        await iommu.enable_translation()
        mailbox, page = mem.alloc(PAGE), mem.alloc(PAGE)
        await iommu.map(domain, 0x9_0000_0000, mailbox, PAGE)
        await iommu.map(domain, 0x9_0000_1000, page, PAGE)
        await edu.device.msi_enable(0x9_0000_0010, 0xBEEF)
        await edu.dma(Edu.DMA_BUFFER, 0x9_0000_1000, PAGE, to_ram=True, irq=True)
        assert await qt.readl(mailbox + 0x10) == 0xBEEF  # the completion interrupt


# ----------------------------------------------------------------------------------------------
# PCI: 64-bit BAR above 4 GiB behind a root port, MSI-X table


async def test_pci_64bit_bar_behind_root_port_and_msix_table(qemu_argv, run_base):
    devices = ["pcie-root-port,id=rp0,chassis=1", "virtio-mouse-pci,bus=rp0"]
    async with QtestVM(qemu_argv, devices=devices, memory_mib=64) as vm:
        qt = vm.qtest
        tree = await PciTree.scan(qt)
        mouse = tree.find(0x1AF4, 0x1052)
        bar64 = next(b for b in mouse.bars.values() if b.is_64bit and b.prefetchable)
        assert MMIO64_WINDOW[0] <= bar64.address < MMIO64_WINDOW[1]
        layout = await mouse.msix_layout()
        assert layout.vectors >= 2
        await mouse.msix_vector(1, 0x1234_5678_9000, 0xCAFE)
        assert await mouse.msix_read_vector(1) == (0x1234_5678_9000, 0xCAFE, False)
        await mouse.msix_enable()
        assert mouse.parent is not None and mouse.parent.secondary_bus == mouse.bdf.bus
        # QEMU puts virtio's common config at the start of that BAR: device_feature_select (offset
        # 0) reads back what was written, so the access went through the bridge's 64-bit window.
        await qt.writel(bar64.address, 1)
        assert await qt.readl(bar64.address) == 1


async def test_edu_behind_root_port_on_virt_through_ecam(qemu_argv_aarch64, run_base):
    devices = ["pcie-root-port,id=rp0,chassis=1", f"{EDU_WIDE},bus=rp0"]  # RAM is above 1 GiB
    async with QtestVM(qemu_argv_aarch64, board=VIRT, devices=devices, memory_mib=64) as vm:
        qt = vm.qtest
        tree = await PciTree.scan(qt, mmio32=VIRT.mmio32, mmio64=VIRT.mmio64, ecam=VIRT.ecam)
        edu = Edu(tree.find(*EDU))
        assert edu.device.bdf == Bdf(1, 0)
        assert VIRT.mmio32[0] <= edu.mmio < VIRT.mmio32[1]
        assert await qt.readl(edu.mmio) == 0x010000ED  # edu's identification register
        await edu.check_round_trip(PhysAllocator(vm.ram_end, VIRT.ram_base + 16 * MiB), 7)
        # Bus 16 would be RAM, not configuration space, behind virt's low ECAM window.
        with pytest.raises(PciError, match="beyond the 16 buses"):
            await tree.config.read(Bdf(16, 0), 0)


# ----------------------------------------------------------------------------------------------
# Pure parts


def test_phys_allocator_is_first_fit_and_coalesces():
    mem = PhysAllocator(end=32 * MiB)
    a, b, c = mem.alloc(1), mem.alloc(3 * PAGE), mem.alloc(PAGE, align=MiB)
    assert (a, b, c) == (16 * MiB, 16 * MiB + PAGE, 17 * MiB)
    mem.free(b)
    assert mem.alloc(2 * PAGE) == b
    mem.free(a)
    mem.free(b)
    mem.free(c)
    assert mem.free_bytes == 16 * MiB and mem.allocations == {}
    assert mem.alloc(16 * MiB) == 16 * MiB


def test_page_selective_blocks_are_aligned_and_cover_the_range():
    for iova, size in [(0x1000, 0x1000), (0x3000, 0x11000), (0x20_0000, 0x40_0000), (0, 0x7000)]:
        blocks = invalidation_blocks(iova, size, max_order=18)
        covered = iova
        for addr, order in blocks:
            assert addr == covered and addr % (PAGE << order) == 0
            covered += PAGE << order
        assert covered == iova + size
    assert invalidation_blocks(0x40_0000_0000, 1 << 40, max_order=18)[0] == (0x40_0000_0000, 18)
    assert align_up(5, 4) == 8
