"""Fixtures for the guest tests: the image, and one booted guest per vIOMMU per module
(guest_vm.py says what the guest looks like)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from guest_vm import IOMMUS, TOPOLOGIES, Guest

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine import launch
from dmalab.machine.vm import CONSOLE_LOG

BOOT_TIMEOUT_S = 120.0  # TCG on a busy 2-core machine


@pytest.fixture(scope="module", params=IOMMUS)
def iommu(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def booted(
    qemu_build: QemuBuild,
    guest_image: ImageBuild,
    iommu: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Guest]:
    kept = tmp_path_factory.mktemp(iommu)
    async with launch.boot(
        TOPOLOGIES / f"{iommu}.toml",
        qemu=qemu_build,
        image=guest_image,
        accel="tcg",  # the same machine on every host, KVM or not
        artifacts_dir=kept,
        name=f"guest-{iommu}",
        boot_timeout=BOOT_TIMEOUT_S,
    ) as vm:
        try:
            yield await Guest.of(vm, iommu)
        finally:
            # A failed test leaves the machine running cleanly, so its run directory goes away
            # on exit; keep the console, where the guest's side of the failure is.
            with contextlib.suppress(OSError):
                shutil.copy(vm.run_dir / CONSOLE_LOG, kept / CONSOLE_LOG)


@pytest_asyncio.fixture(loop_scope="module")
async def guest(booted: Guest) -> AsyncIterator[Guest]:
    """The module's guest with nothing allocated and every counter at zero."""
    await booted.vm.agent.close_all()
    await booted.reset_stats()
    yield booted
