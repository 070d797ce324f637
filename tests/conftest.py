"""Fixtures shared by all tests. Slow artifacts are session-scoped and come from the cache."""

from __future__ import annotations

import pytest

from dmalab.artifacts.qemu import QemuBuild, ensure_qemu


@pytest.fixture(scope="session")
def qemu_build() -> QemuBuild:
    """QEMU with this checkout's devices (built on first use, then cached in ~/.cache/dmalab)."""
    return ensure_qemu()
