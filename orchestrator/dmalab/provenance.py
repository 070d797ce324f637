"""What produced a result: the host, the QEMU build, the guest image, the dmalab commit.

results.json's `meta` and the benchmarks' reports record these, so a result can be traced to
what made it, and `dmalab report --compare` can refuse two runs of different QEMU builds.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmalab.artifacts.cache import repo_root
from dmalab.artifacts.qemu import QemuBuild, sha256_file

if TYPE_CHECKING:  # importing the image builder costs every command 50 ms
    from dmalab.artifacts.image import ImageBuild


def machine_info() -> dict[str, Any]:
    """The host: name, CPU, cores, kernel, Python."""
    model = platform.processor() or platform.machine()
    try:
        for text in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def qemu_info(qemu: QemuBuild) -> dict[str, Any]:
    """The QEMU binary, its `--version` line, its build key and its manifest."""
    try:
        version = subprocess.run(
            [str(qemu.binary), "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = None
    return {
        "binary": str(qemu.binary),
        "version": version,
        "build_key": qemu_build_key(qemu),
        "manifest": qemu.manifest,
    }


def qemu_build_key(qemu: QemuBuild) -> str:
    """The binary key of a build dmalab made; for a user's own QEMU ($DMALAB_QEMU), a hash of
    the binary, since nothing else says which build it is."""
    key = qemu.manifest.get("binary_key")
    return key if isinstance(key, str) else f"sha256-{_binary_hash(qemu.binary)[:20]}"


@functools.cache
def _binary_hash(binary: Path) -> str:
    return sha256_file(binary)


def image_info(image: ImageBuild) -> dict[str, str]:
    """The guest kernel's release and the image's key (its directory in the cache)."""
    return {"kernel_release": image.kernel_release, "image_key": image.manifest.parent.name}


def dmalab_commit() -> str:
    """The commit of the checkout dmalab runs from (`-dirty` with uncommitted changes), or
    "unknown" outside a git checkout; $DMALAB_COMMIT where a copy without git says which (the
    runner image records its checkout's)."""
    if os.environ.get("DMALAB_COMMIT"):
        return os.environ["DMALAB_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_root()), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"
