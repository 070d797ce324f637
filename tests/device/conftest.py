"""Fixtures for tests that run a real QEMU (qtest accelerator, no guest)."""

from __future__ import annotations

import pytest

from dmalab.artifacts.qemu import QemuBuild


@pytest.fixture(scope="session")
def qemu_argv(qemu_build: QemuBuild) -> list[str]:
    """The start of a QEMU command line: `$DMALAB_QEMU` if set, else the project's own build."""
    return qemu_build.base_argv()


@pytest.fixture(scope="session")
def qemu_argv_aarch64(qemu_build: QemuBuild) -> list[str]:
    """The same for qemu-system-aarch64 (arm virt)."""
    return qemu_build.base_argv("aarch64")
