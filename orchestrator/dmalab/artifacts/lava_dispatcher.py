"""A venv that runs LAVA's dispatcher (`lava-run`) from Debian's unpacked packages
(artifacts/lava_packages.py), without a LAVA server or a system-wide install.

The dispatcher's Python dependencies come from PyPI into the venv; lava_dispatcher imports
libguestfs's `guestfs` at module level for deploy methods dmalab's jobs never use, so a stub
module stands in for it (installing libguestfs would bring a kernel and an appliance).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmalab.artifacts.cache import cache_root, locked
from dmalab.artifacts.lava_packages import LavaPackages, ensure_lava_packages
from dmalab.errors import EnvironmentProblem

#: What lava-dispatcher 2023.01 imports (its Debian dependencies, by their PyPI names).
REQUIREMENTS = (
    "voluptuous", "PyYAML", "jinja2", "pexpect", "requests", "setproctitle", "configobj",
    "pytz", "pyudev", "aiohttp", "python-magic", "netifaces",
)  # fmt: skip
#: Host tools the dispatcher runs for a qemu job (cpio: the overlay into the ramdisk).
HOST_TOOLS = ("cpio",)
GUESTFS_STUB = '"""Stands in for libguestfs: dmalab\'s LAVA jobs use no guestfs deploy."""\n'


@dataclass(frozen=True)
class Dispatcher:
    python: Path  # the venv's interpreter
    packages: LavaPackages

    def lava_run(self) -> list[str]:
        return [str(self.python), str(self.packages.lava_run)]


def ensure_dispatcher(say: Callable[[str], None]) -> Dispatcher:
    """The dispatcher's venv, made the first time (PyPI), reused afterwards."""
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(f"LAVA's dispatcher needs {', '.join(missing)}: apt-get install "
                                 f"{' '.join(missing)}")  # fmt: skip
    packages = ensure_lava_packages(say)
    key = hashlib.sha256(repr((REQUIREMENTS, str(packages.python), sys.version)).encode())
    root = cache_root() / "lava"
    venv = root / f"dispatcher-venv-{key.hexdigest()[:12]}"
    with locked(root / "lock"):
        if not (venv / "bin" / "python").is_file():
            _make(venv, packages, say)
    return Dispatcher(venv / "bin" / "python", packages)


def _make(venv: Path, packages: LavaPackages, say: Callable[[str], None]) -> None:
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    say(f"lava: a venv for LAVA's dispatcher ({len(REQUIREMENTS)} packages from PyPI)")
    steps = [
        [sys.executable, "-m", "venv", str(partial)],
        [str(partial / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", *REQUIREMENTS],
    ]  # fmt: skip
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise EnvironmentProblem(f"LAVA dispatcher venv: {argv[2]} failed: {detail}")
    site = next((partial / "lib").glob("python3*/site-packages"))
    (site / "dmalab-lava.pth").write_text(f"{packages.python}\n")
    (site / "guestfs.py").write_text(GUESTFS_STUB)
    partial.rename(venv)  # the venv runs by its interpreter's path: a rename keeps it whole
