"""Fixtures for tests that boot the guest image under TCG."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import minimal_topology
from dmalab.machine.vm import Vm


@pytest.fixture
def make_vm(
    qemu_build: QemuBuild, image: ImageBuild, run_base: Path, artifacts: Path
) -> Callable[..., Vm]:
    """Vm(...) for the q35 + intel-iommu + one ncdma machine; keyword arguments go to Vm."""

    def make(iommu: str | None = "intel-iommu", ram_mib: int = 512, **kwargs: Any) -> Vm:
        topology = minimal_topology("vm", iommu=iommu, memory_mib=ram_mib)
        boot = Boot(image.kernel, image.initramfs, image.cmdline_for(iommu or "none"))
        return Vm(
            qemu_build.base_argv(),
            lambda fd: qemu_argv(topology, boot, accel="tcg", ram_fd=fd),
            ram_mib=ram_mib,
            topology=topology,
            artifacts_dir=artifacts,
            **kwargs,
        )

    return make


def memfds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:dmalab-"):
            out.add(fd)
    return out


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


class Leaks:
    memfds = staticmethod(memfds)
    assert_gone = staticmethod(assert_gone)


@pytest.fixture
def leaks() -> type[Leaks]:
    """memfds() and assert_gone(pid), for checking what a run left behind."""
    return Leaks
