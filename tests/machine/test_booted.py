"""`BootedMachine`: boot, snapshot, a fresh machine per user, and nothing left afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine.booted import BootedMachine
from dmalab.machine.vm import Vm


async def test_fresh_restores_only_after_a_use(
    qemu_build: QemuBuild, image: ImageBuild, run_base: Path, leaks: Any
) -> None:
    seen: list[int] = []

    async def setup(vm: Vm) -> None:  # runs before the save: every restore comes back to it
        seen.append((await vm.agent.buf_create("NCDMA", 4096)).id)

    async with BootedMachine("default", setup=setup, qemu=qemu_build, image=image,
                             accel="tcg") as m:  # fmt: skip
        assert m.healthy and m.boot_seconds > 0 and m.save_seconds > 0
        assert await m.fresh() == 0.0  # as booted: nothing to restore
        assert (await m.vm.agent.buf_create("NCDMA", 4096)).id == seen[0] + 1
        assert await m.fresh() > 0.0
        assert (await m.vm.agent.buf_create("NCDMA", 4096)).id == seen[0] + 1
        pid = m.vm.process.pid
    assert not m.healthy
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
