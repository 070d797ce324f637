"""Fixtures for tests that run a real QEMU (qtest accelerator, no guest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmalab.artifacts.qemu import QemuBuild


@pytest.fixture(scope="session")
def qemu_argv(qemu_build: QemuBuild) -> list[str]:
    """The start of a QEMU command line: `$DMALAB_QEMU` if set, else the project's own build."""
    return qemu_build.base_argv()


@pytest.fixture
def run_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $XDG_RUNTIME_DIR, so a test can see every run directory it leaves behind."""
    base = tmp_path / "runtime"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    return base


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where QEMU run directories of failed runs go."""
    return tmp_path / "artifacts"
