"""Fixtures shared by all tests. Slow artifacts are session-scoped and come from the cache.

The session also checks that it leaves nothing behind: it becomes the subreaper of everything it
starts (so a QEMU whose dmalab was killed stays its descendant, however deep), gives its
processes a private $XDG_RUNTIME_DIR (run directories) and $TMPDIR, and at its end fails if a
QEMU it started still runs or a dmalab run or temporary directory was left in either. Other test
sessions on the same machine are neither seen nor touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dmalab.artifacts.image import ImageBuild, ensure_image
from dmalab.artifacts.qemu import QemuBuild, ensure_qemu
from dmalab.machine.process import OWNER_FILE
from procs import qemu_pids


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


_PR_SET_CHILD_SUBREAPER = 36
_PRIVATE = pytest.StashKey[Path]()


def pytest_sessionstart(session: pytest.Session) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    root = Path(tempfile.mkdtemp(prefix="dmalab-test-session-"))
    for name, variable in (("run", "XDG_RUNTIME_DIR"), ("tmp", "TMPDIR")):
        (root / name).mkdir(mode=0o700)
        os.environ[variable] = str(root / name)
    session.config.stash[_PRIVATE] = root


def pytest_sessionfinish(session: pytest.Session) -> None:
    root = session.config.stash.get(_PRIVATE, None)
    if root is None:
        return
    _reap_orphans()
    survivors = qemu_pids()
    for pid in survivors:  # fail, but do not let them outlive the session either
        os.kill(pid, signal.SIGKILL)
    _reap_orphans()
    leaked = [*(root / "run").iterdir(), *(root / "tmp").glob("dmalab-*")]
    if not survivors and not leaked:
        shutil.rmtree(root, ignore_errors=True)
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    problems = [f"QEMU pid {pid} still running" for pid in sorted(survivors)]
    for path in leaked:
        kept = path.parent.name == "run" and not (path / OWNER_FILE).exists()
        problems.append(f"left behind: {path}" + (" (kept: a run failed)" if kept else ""))
    for line in ["the test session did not clean up after itself:", *problems]:
        if reporter is not None:
            reporter.write_line(line, red=True)


def _reap_orphans() -> None:
    """Collect the exit status of orphans reparented to this process (their zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
