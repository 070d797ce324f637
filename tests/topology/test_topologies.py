"""Every shipped topology boots under TCG: host and guest see the same bytes through the shared
RAM mapping, every device is translated by the vIOMMU, and a QEMU killed mid-test leaves nothing
behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine import launch
from dmalab.machine.agent import AgentConnectionLost
from dmalab.machine.compare_bytes import assert_same
from dmalab.machine.process import QemuDied
from dmalab.machine.repl import guest_devices
from dmalab.machine.topology import load_topology, shipped_topologies
from dmalab.spec import agent as aspec
from procs import qemu_pids

PAGES = 8


@pytest.mark.parametrize("name", shipped_topologies())
async def test_topology_boots_and_shares_memory(
    name: str,
    qemu_build: QemuBuild,
    images: Callable[[str], ImageBuild],
    run_base: Path,
    tmp_path: Path,
) -> None:
    topology = load_topology(name)
    image = images(topology.arch)
    async with launch.boot(
        topology, qemu=qemu_build, image=image, accel="tcg", artifacts_dir=tmp_path / "kept"
    ) as vm:
        assert vm.hello is not None and vm.hello.kernel_release == image.kernel_release
        assert vm.accel == "tcg" and vm.hello is not None
        assert vm.hello.devices == len(topology.devices)
        agent, ram = vm.agent, vm.ram
        assert ram is not None

        # every device is behind the vIOMMU, in a translated (DMA) domain
        devices = await guest_devices(vm)
        assert sorted(devices) == sorted(d.id for d in topology.devices)
        for qid, info in devices.items():
            assert info.iommu_group >= 0 and info.iommu_domain == "DMA", (qid, info)
        # devices behind one PCIe-to-PCI bridge share a group; every other device has its own
        groups = {qid: info.iommu_group for qid, info in devices.items()}
        bridges = {b.id for b in topology.bridges}
        for a in topology.devices:
            for b in topology.devices:
                shared = a.id == b.id or (a.bus == b.bus and a.bus in bridges)
                assert (groups[a.id] == groups[b.id]) == shared, (a.id, b.id, groups)

        for qid, info in devices.items():
            buf = await agent.buf_create("NCDMA", PAGES * 4096, dev=info.index)
            pages = await agent.buf_pages(buf.id, 0, PAGES)

            # host writes through the mapping, the guest CPU reads the same bytes
            data = os.urandom(PAGES * 4096)
            for i, pa in enumerate(pages):
                ram.write(pa, data[i * 4096 : (i + 1) * 4096])
            assert_same(data, await agent.cpu_read(buf.id, 0, len(data)), f"{qid}: guest read")

            # the guest CPU writes, the host reads the same bytes
            await agent.cpu_write_pattern(buf.id, 0, len(data), seed=info.index + 11)
            got = b"".join(bytes(v) for v in ram.views((pa, 4096) for pa in pages))
            assert_same(aspec.pattern(info.index + 11, len(data)), got, f"{qid}: host read")
            await agent.buf_free(buf.id)
        pid = vm.process.pid
    assert pid not in qemu_pids() and qemu_pids() == set()
    assert list(run_base.iterdir()) == []
    assert not (tmp_path / "kept").exists()


async def test_sigkill_mid_test_leaves_nothing(
    qemu_build: QemuBuild, image: ImageBuild, run_base: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept"
    with pytest.raises(QemuDied, match="SIGKILL") as info:
        async with launch.boot(
            "default", qemu=qemu_build, image=image, accel="tcg", artifacts_dir=kept
        ) as vm:
            pid = vm.process.pid
            os.kill(pid, signal.SIGKILL)
            await vm.agent.echo(b"anyone?")
    assert isinstance(info.value.__cause__, AgentConnectionLost)
    assert str(kept) in str(info.value)
    assert qemu_pids() == set()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list(run_base.iterdir()) == []  # no run dir, socket or temp file in the runtime dir
    (run_dir,) = kept.iterdir()  # the failed run's artifacts, where we asked for them
    assert (run_dir / "console.log").read_bytes().count(b"DMALAB-READY") == 1


async def test_console_shell_beside_the_agent(
    qemu_build: QemuBuild, image: ImageBuild, run_base: Path
) -> None:
    async with launch.boot("default", qemu=qemu_build, image=image, accel="tcg") as vm:
        assert vm.console is not None
        start = len(vm.console.data)
        # the arithmetic happens in the guest shell, so an echo of the input cannot match
        await vm.console_write(b"echo shell-$((6 * 7)) $(cat /proc/1/comm)\n")
        await vm.console.wait_for(b"shell-42 init", timeout=30, start=start)
        assert (await vm.agent.echo(b"still here")) == b"still here"
    assert qemu_pids() == set()
