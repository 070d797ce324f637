"""The guest's initramfs layout: busybox and its applet links, /init, the modules with a
modules.dep, and the driver and agent when the image has them.

Uncompressed on purpose: under TCG the kernel's decompressor would cost more boot time than
reading a few more megabytes costs QEMU.
"""

from __future__ import annotations

import posixpath
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dmalab.artifacts import kmod
from dmalab.artifacts.cpio import Archive
from dmalab.errors import EnvironmentProblem

AGENT_PATH = "sbin/dmalab-agent"
_DIRECTORIES = (
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "root",
    "mnt",
    "etc",
    "var",
    "sbin",
    "usr/bin",
    "usr/sbin",
)


def driver_path(release: str) -> str:
    """Where ncdma.ko sits, so that `modprobe ncdma` finds it (and its options on the cmdline)."""
    return f"lib/modules/{release}/extra/ncdma.ko"


@dataclass(frozen=True)
class Contents:
    busybox: Path
    init: bytes
    release: str
    modules: list[kmod.Module]  # in load order, the driver last if present
    builtin: bytes  # the kernel's modules.builtin, so modprobe of a built-in module succeeds
    agent: bytes | None


def busybox_applets(busybox: Path) -> list[str]:
    """Paths (bin/sh, sbin/modprobe, ...) of the applets this busybox was built with."""
    proc = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise EnvironmentProblem(
            f"{busybox} --list-full failed: {proc.stderr.strip() or proc.returncode}"
        )
    return sorted(proc.stdout.split())


def assemble(contents: Contents) -> Archive:
    archive = Archive()
    for directory in _DIRECTORIES:
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs
    archive.file("bin/busybox", contents.busybox.read_bytes(), 0o755)
    for applet in busybox_applets(contents.busybox):
        if applet != "bin/busybox":
            archive.symlink(applet, posixpath.relpath("bin/busybox", posixpath.dirname(applet)))
    archive.file("init", contents.init, 0o755)
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    moddir = f"lib/modules/{contents.release}"
    archive.directory(moddir)
    for module in contents.modules:
        archive.file(f"{moddir}/{module.relpath}", module.data)
    archive.file(f"{moddir}/modules.dep", kmod.modules_dep(contents.modules).encode())
    archive.file(f"{moddir}/modules.builtin", contents.builtin)
    if contents.agent is not None:
        archive.file(AGENT_PATH, contents.agent, 0o755)
    return archive
