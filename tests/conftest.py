"""Fixtures shared by all tests. Slow artifacts are session-scoped and come from the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dmalab.artifacts.image import ImageBuild, ensure_image
from dmalab.artifacts.qemu import QemuBuild, ensure_qemu


@pytest.fixture(scope="session")
def qemu_build() -> QemuBuild:
    """QEMU with this checkout's devices (built on first use, then cached in ~/.cache/dmalab)."""
    return ensure_qemu()


@pytest.fixture(scope="session")
def guest_image() -> ImageBuild:
    """The guest image with ncdma.ko and the agent (the set-up builds both)."""
    build = ensure_image(lambda _message: None)
    if not (build.parts.get("driver") and build.parts.get("agent")):
        pytest.fail(f"the guest image has no driver or agent: {build.parts}")
    return build


@pytest.fixture(scope="session")
def image(guest_image: ImageBuild) -> ImageBuild:
    return guest_image


@pytest.fixture(scope="session")
def images(guest_image: ImageBuild) -> Callable[[str], ImageBuild]:
    """The guest image of an architecture ("x86_64", "aarch64"), with the driver and agent."""
    built = {"x86_64": guest_image}

    def get(arch: str) -> ImageBuild:
        if arch not in built:
            build = ensure_image(lambda _message: None, arch=arch)
            if not (build.parts.get("driver") and build.parts.get("agent")):
                pytest.fail(f"the {arch} guest image has no driver or agent: {build.parts}")
            built[arch] = build
        return built[arch]

    return get


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
