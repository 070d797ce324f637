"""`dmalab doctor`: what this machine has and lacks for dmalab, and how to fix each gap.

Every check is read-only and quick: nothing is built, installed or downloaded here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dmalab.artifacts import guest_code, image, qemu
from dmalab.artifacts.cache import cache_root
from dmalab.errors import DmalabError

MIN_FREE_BYTES = 3 << 30  # a QEMU tree and build plus a guest image


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def _python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    return Finding("python", ok, f"Python {version}", "" if ok else "install Python 3.11 or newer")


def _packages() -> Finding:
    if os.environ.get(image.PREBUILT_VAR) and qemu.find_qemu() is not None:
        # Prebuilt QEMU and images (the runner image): nothing will be built here.
        missing = qemu.missing_packages(qemu.FIRMWARE_PACKAGES)
        if not missing:
            return Finding("debian packages", True, "run-time packages (prebuilt QEMU and images)")
        return Finding("debian packages", False, f"missing: {' '.join(missing)}",
                       f"apt-get install {' '.join(missing)}")  # fmt: skip
    names = (
        *qemu.BUILD_PACKAGES,
        *qemu.FIRMWARE_PACKAGES,
        *guest_code.CROSS["aarch64"][2],
        "zstd",
        "busybox-static",
    )
    missing = [n for n in qemu.missing_packages(names) if n != "busybox-static"]
    if not missing:
        return Finding("debian packages", True, f"{len(names) - 1} build and run-time packages")
    return Finding(
        "debian packages",
        False,
        f"missing: {' '.join(missing)}",
        f"apt-get install {' '.join(missing)} (./run.sh or ./test.sh do it as root)",
    )


def _cache() -> Finding:
    try:
        root = cache_root()
    except DmalabError as exc:
        return Finding("cache", False, str(exc), "set DMALAB_CACHE to a writable directory")
    free = shutil.disk_usage(root).free
    ok = free >= MIN_FREE_BYTES
    return Finding(
        "cache",
        ok,
        f"{root}, {free >> 30} GiB free",
        "" if ok else f"free at least {MIN_FREE_BYTES >> 30} GiB or set DMALAB_CACHE",
    )


def _qemu() -> Finding:
    try:
        build = qemu.find_qemu()
    except DmalabError as exc:
        return Finding("qemu", False, str(exc), "fix DMALAB_QEMU or the checkout")
    if build is None:
        return Finding(
            "qemu",
            False,
            "no QEMU built for this checkout's qemu-devices/",
            "dmalab build qemu (about 8 minutes the first time)",
        )
    source = build.manifest.get("debian_source", {})
    origin = f"Debian {source['version']}" if "version" in source else "your own build"
    binaries = ", ".join(str(path) for path in build.binaries.values())
    return Finding("qemu", True, f"{binaries} ({origin})")


def _image() -> Finding:
    found = []
    for arch in guest_code.CROSS:
        try:
            builds = image.builds_dir(arch)
        except DmalabError as exc:
            return Finding(
                "guest image", False, str(exc), "set DMALAB_CACHE to a writable directory"
            )
        manifests = sorted(builds.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
        if not manifests:
            return Finding(
                "guest image",
                False,
                f"no {arch} guest image built",
                f"dmalab build image --arch {arch}",
            )
        data = json.loads(manifests[-1].read_text())
        release = data.get("kernel", {}).get("release", "?")
        parts = [name for name, part in data.get("parts", {}).items() if part.get("included")]
        found.append(f"{arch}: kernel {release}, with {', '.join(parts) or 'no driver'}")
    return Finding("guest image", True, "; ".join(found))


def _kvm() -> Finding:
    dev = Path("/dev/kvm")
    if not dev.exists():
        return Finding("kvm", True, "no /dev/kvm: machines run under TCG (slower, fully supported)")
    if not os.access(dev, os.R_OK | os.W_OK):
        return Finding(
            "kvm",
            True,
            "/dev/kvm is not accessible: TCG is used",
            "add yourself to the kvm group to let accel=auto try KVM",
        )
    return Finding(
        "kvm",
        True,
        "/dev/kvm present: accel=auto boots a probe guest under KVM "
        "once and falls back to TCG if it fails (arm64 guests always run under TCG: no KVM "
        "for a foreign architecture)",
    )


CHECKS: tuple[Callable[[], Finding], ...] = (_python, _packages, _cache, _qemu, _image, _kvm)


def diagnose() -> list[Finding]:
    return [check() for check in CHECKS]


def render(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"[{'ok' if f.ok else 'FAIL':<4}] {f.check:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"       {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)
