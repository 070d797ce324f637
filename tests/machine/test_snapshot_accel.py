"""Snapshots restore counters, memory and the agent link; the KVM probe falls back to TCG here."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.errors import EnvironmentProblem
from dmalab.machine import accel
from dmalab.machine.agent import Desc
from dmalab.machine.compare_bytes import assert_same
from dmalab.machine.snapshot import SnapshotFailed, Snapshots
from dmalab.machine.vm import Vm


async def test_restore_gives_saved_counters_memory_and_agent(
    make_vm: Callable[..., Vm], run_base: Path, leaks: Any
) -> None:
    async with make_vm() as vm:
        agent, ram, dev = vm.agent, vm.ram, vm.device()
        buf = await agent.buf_create("NCDMA", 16384)
        att = await agent.attach(buf.id)
        await agent.map(att.id)
        await agent.cpu_write_pattern(buf.id, 0, 16384, seed=1)
        (pa,) = await agent.buf_pages(buf.id, 0, 1)
        snaps = Snapshots(vm)
        with pytest.raises(SnapshotFailed, match="no snapshot"):
            await snaps.load("never-saved")
        await snaps.save("base")
        saved_counters = await dev.counters()
        saved_page = bytes(ram.view(pa, 4096))

        # change the device's counters and the memory, from the guest and from the host
        assert all(r.ok for r in await agent.run(0, [Desc.fill(att.id, 4096, 0xAB)]))
        ram.write(pa + 100, b"host was here")
        assert await dev.counters() != saved_counters

        seconds = await snaps.restore("base")
        assert seconds < 5
        assert await dev.counters() == saved_counters
        assert_same(saved_page, ram.view(pa, 4096), "page after restore", base=pa)
        assert await agent.echo(b"still there") == b"still there"
        assert (await agent.buf_info(buf.id)).size == 16384  # the guest's own state is back too
        pid = vm.process.pid
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []


async def test_kvm_probe_falls_back_to_tcg(
    qemu_build: QemuBuild,
    image: ImageBuild,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_base: Path,
) -> None:
    monkeypatch.setenv("DMALAB_CACHE", str(tmp_path / "cache"))
    usable, why = await accel.probe_kvm(qemu_build, image, timeout=6.0)
    if usable:
        pytest.skip(f"KVM works on this machine: {why}")
    assert await accel.resolve_accel("auto", qemu=qemu_build, image=image) == "tcg"
    (cached,) = (tmp_path / "cache" / "machine" / "accel").iterdir()
    assert '"kvm": false' in cached.read_text()
    with pytest.raises(EnvironmentProblem, match="kvm requested"):
        await accel.resolve_accel("kvm", qemu=qemu_build, image=image)
    assert await accel.resolve_accel("tcg") == "tcg"
    assert list(run_base.iterdir()) == []  # the probe's QEMU kept nothing


def test_kvm_without_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/dev/kvm")
    assert accel.kvm_device_problem() == "/dev/kvm does not exist"
