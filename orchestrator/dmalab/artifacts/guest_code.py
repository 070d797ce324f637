"""The project's own code that runs in the guest, built for the image when its source is present:
the ncdma.ko driver (guest-tests/driver: kbuild against the guest kernel's headers) and the
dmalab-agent program (guest-tests/agent: make, linked static).

They build in a scratch mirror of the checkout (guest-tests/ copied, qemu-devices/ linked, so
relative includes of the generated hardware header still resolve): the checkout stays clean and
concurrent builds cannot race.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dmalab.artifacts import elf
from dmalab.artifacts.cache import cache_root
from dmalab.artifacts.host_packages import ensure_packages
from dmalab.errors import EnvironmentProblem

GUEST_TESTS = "guest-tests"
DEVICE_HEADERS = "qemu-devices"  # the generated ncdma-hw.h the driver and agent include
DRIVER_DIR, DRIVER_FILE = "driver", "ncdma.ko"
AGENT_DIR, AGENT_FILE = "agent", "dmalab-agent"
# Build products that an in-tree build may have left in a source directory: never inputs.
_OUTPUTS = (
    "*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "*.a", "Module.symvers", "modules.order",
    ".tmp_versions", AGENT_FILE,
)  # fmt: skip


#: Guest architecture -> (kbuild ARCH, cross-compiler prefix, Debian packages of the compiler
#: and its C library). Debian's cross compilers install beside the host's, outside multiarch.
CROSS = {
    "x86_64": ("x86", "", ()),
    "aarch64": (
        "arm64",
        "aarch64-linux-gnu-",
        ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "binutils-aarch64-linux-gnu"),
    ),
}


def compiler(arch: str) -> str:
    """The C compiler that builds guest code for `arch`."""
    return f"{CROSS[arch][1]}gcc"


def ensure_compiler(arch: str) -> None:
    """Install the cross compiler for `arch` if it is missing (once, before any build)."""
    packages = CROSS[arch][2]
    if packages:
        ensure_packages(packages, f"building {arch} guest code", cache_root() / "image-apt.log")


def _is_output(rel: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in rel.parts for pattern in _OUTPUTS)


@dataclass(frozen=True)
class GuestCode:
    """guest-tests/ of one checkout."""

    checkout: Path

    def _dir(self, name: str) -> Path:
        return self.checkout / GUEST_TESTS / name

    def has(self, name: str) -> bool:
        """A part is present when its directory has a Makefile or a Kbuild file."""
        return any((self._dir(name) / f).is_file() for f in ("Makefile", "Kbuild"))

    def content_hash(self, name: str | None = None) -> str:
        """Hash of one part's sources, or (name None) of everything a guest build can include:
        all of guest-tests/ and the device headers."""
        roots = [self._dir(name)] if name else [self.checkout / GUEST_TESTS]
        digest = hashlib.sha256()
        for root in roots:
            for path in sorted(root.rglob("*")) if root.is_dir() else ():
                rel = path.relative_to(root)
                if path.is_file() and not _is_output(rel):
                    digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
        if name is None:
            for header in sorted((self.checkout / DEVICE_HEADERS).glob("*.h")):
                digest.update(header.name.encode() + b"\0" + header.read_bytes() + b"\0")
        return digest.hexdigest()

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary mirror to build in: guest-tests/ copied, qemu-devices/ linked."""
        with tempfile.TemporaryDirectory(prefix="dmalab-guest-") as tmp:
            mirror = Path(tmp)
            sources = self.checkout / GUEST_TESTS
            if sources.is_dir():
                ignore = shutil.ignore_patterns(*_OUTPUTS)
                shutil.copytree(sources, mirror / GUEST_TESTS, symlinks=True, ignore=ignore)
            devices = self.checkout / DEVICE_HEADERS
            if devices.is_dir():
                (mirror / DEVICE_HEADERS).symlink_to(devices)
            yield mirror


def _make(args: list[str], workdir: Path, product: str, log: Path) -> bytes:
    if shutil.which("make") is None:
        raise EnvironmentProblem(f"make is needed to build {product}: apt-get install make gcc")
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    log.write_text(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    built = workdir / product
    if proc.returncode != 0 or not built.is_file():
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        first = (errors or proc.stderr.strip().splitlines() or ["no output"])[0]
        raise EnvironmentProblem(f"building {product} failed: {first} (full log: {log})")
    return built.read_bytes()


def build_driver(scratch: Path, headers: Path, log: Path, arch: str = "x86_64") -> bytes:
    """ncdma.ko built against headers (a kbuild tree), cross-compiled for arm64. BTF for
    modules is switched off: it needs pahole, and nothing here loads BTF from this module."""
    if not (headers / "Makefile").is_file():
        raise EnvironmentProblem(f"kernel headers {headers}: no Makefile, cannot build ncdma.ko")
    karch, cross, _ = CROSS[arch]
    workdir = scratch / GUEST_TESTS / DRIVER_DIR
    args = ["make", "-C", str(headers), f"M={workdir}", "CONFIG_DEBUG_INFO_BTF_MODULES="]
    if cross:
        args += [f"ARCH={karch}", f"CROSS_COMPILE={cross}"]
    return _make([*args, "modules"], workdir, DRIVER_FILE, log)


def build_agent(scratch: Path, log: Path, arch: str = "x86_64") -> bytes:
    """dmalab-agent, which must be static: the initramfs has no C library."""
    workdir = scratch / GUEST_TESTS / AGENT_DIR
    args = ["make", "-C", str(workdir), f"CC={compiler(arch)}"]
    data = _make(args, workdir, AGENT_FILE, log)
    try:
        dynamic = elf.has_interpreter(data)
    except elf.NotElf as exc:
        raise EnvironmentProblem(f"{AGENT_FILE}: {exc}") from exc
    if dynamic:
        raise EnvironmentProblem(
            f"{AGENT_FILE} is dynamically linked and the initramfs has no C library: link it "
            f"with -static"
        )
    return data
