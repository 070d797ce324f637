"""The guest's initramfs layout: busybox and its applet links, /init, the modules with a
modules.dep, and the driver and agent when the image has them.

Uncompressed on purpose: under TCG the kernel's decompressor would cost more boot time than
reading a few more megabytes costs QEMU.
"""

from __future__ import annotations

import posixpath
import re
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
    #: Applet paths when the busybox cannot run here (another architecture's): see
    #: `foreign_busybox_applets`.
    applets: list[str] | None = None


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


def applet_names(busybox: bytes) -> list[str]:
    """The applet names compiled into a busybox binary of any architecture: its applet_names
    table, NUL-separated and sorted, which starts with `[` and `[[`."""
    start = busybox.find(b"[\0[[\0")
    names: list[str] = []
    while start >= 0:
        end = busybox.index(b"\0", start)
        word = busybox[start:end]
        if not re.fullmatch(rb"[a-z0-9_.\[-]+", word):
            break
        names.append(word.decode())
        start = end + 1
    return names


def foreign_busybox_applets(busybox: Path, host_busybox: Path) -> list[str]:
    """Applet paths of a busybox that cannot run here, taken from the host's busybox of the same
    Debian version (the same configuration), after checking both have the same applets."""
    paths = busybox_applets(host_busybox)
    ours = applet_names(busybox.read_bytes())
    theirs = applet_names(host_busybox.read_bytes())
    if not ours or ours != theirs:
        raise EnvironmentProblem(
            f"{busybox}: its applets differ from {host_busybox}'s ({len(ours)} vs {len(theirs)})"
        )
    return paths


def assemble(contents: Contents) -> Archive:
    archive = Archive()
    for directory in _DIRECTORIES:
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs
    archive.file("bin/busybox", contents.busybox.read_bytes(), 0o755)
    applets = contents.applets
    for applet in applets if applets is not None else busybox_applets(contents.busybox):
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
