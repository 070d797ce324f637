"""Fixtures shared by all tests. Slow artifacts are session-scoped and come from the cache."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
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


@pytest.fixture(scope="session")
def own_kernel(guest_image: ImageBuild) -> list[str]:
    """`--kernel FILE --modules DIR` for a kernel handed in as a user's: Debian's bzImage of the
    guest image, and a lib/modules/<release> tree of links to its modules, with build/ linked
    to the unpacked Debian headers (a user's tree has its build/ too). The tree stays at one
    place in the cache, so its image is built once, not once per session (the image key
    includes the tree's path)."""
    manifest = json.loads(guest_image.manifest.read_text())
    debian = Path(manifest["kernel"]["modules_tree"])
    release = guest_image.kernel_release
    bzimage = debian.parents[2] / "boot" / f"vmlinuz-{release}"
    unpacked = debian.parents[3]
    tree = unpacked.parent / "test-own-kernel" / release
    if not tree.is_dir():
        (headers,) = unpacked.glob(f"linux-headers-{release}_*/usr/src/linux-headers-{release}")
        staging = Path(tempfile.mkdtemp(dir=unpacked.parent, prefix=".own-kernel-"))
        for entry in debian.iterdir():
            (staging / entry.name).symlink_to(entry)
        (staging / "build").symlink_to(headers)
        tree.parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # another session made it first: same links
            staging.rename(tree)
        shutil.rmtree(staging, ignore_errors=True)
    return ["--kernel", str(bzimage), "--modules", str(tree)]
