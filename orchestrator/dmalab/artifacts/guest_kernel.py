"""Where one image's kernel, modules and headers come from: Debian's packages (the default) or a
user's own kernel and lib/modules tree. Either way the rest of the build sees one KernelSource.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dmalab.artifacts import bzimage, debian_kernel, kmod
from dmalab.artifacts.apt import AptRepo
from dmalab.errors import BadInput, EnvironmentProblem

Progress = Callable[[str], None]

#: How old the private apt index may get before a build refreshes it.
INDEX_MAX_AGE_S = 6 * 3600
VMLINUX = "vmlinux"
#: What QEMU boots fastest, per guest architecture: the uncompressed ELF vmlinux through the PVH
#: entry on x86, the uncompressed Image on arm64 (QEMU would otherwise inflate it every boot).
BOOT_FILE = {"x86_64": VMLINUX, "aarch64": "Image"}


#: ELF e_machine -> guest architecture.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def kernel_arch(kernel: Path) -> str | None:
    """The architecture a kernel file is for (bzImage or ELF vmlinux: x86_64; arm64 Image,
    gzip'd or not, or an arm64 ELF: aarch64), or None when it is none of those."""
    try:
        with open(kernel, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if bzimage.is_bzimage(head):
        return "x86_64"
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little"))
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(kernel) as inflated:
                head = inflated.read(0x40)
        except (OSError, EOFError):
            return None
    return "aarch64" if head[0x38:0x3C] == b"ARM\x64" else None


def boot_kernel(arch: str, kernel: Path) -> bytes:
    """The bootable uncompressed kernel of `arch` from a distribution kernel file."""
    if arch == "x86_64":
        return bzimage.vmlinux_from(kernel)
    data = kernel.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[0x38:0x3C] != b"ARM\x64":
        raise BadInput(f"kernel {kernel}: not an arm64 Image (gzip'd or plain)")
    return data


class StaleIndex(EnvironmentProblem):
    """A download failed with an index that may be out of date (the archive moved on)."""


@contextmanager
def phase(progress: Progress, what: str) -> Iterator[None]:
    started = time.monotonic()
    progress(f"{what} ...")
    yield
    progress(f"{what}: {time.monotonic() - started:.1f} s")


@dataclass
class KernelSource:
    source: str  # "debian" or "user"
    arch: str  # QEMU's name: x86_64, aarch64
    release: str  # uname -r
    modules: kmod.ModuleTree | None
    fingerprint: dict[str, str]  # what identifies this kernel in the image's cache key
    vmlinux: Callable[[], Path]  # a cached vmlinux (Debian) or one extracted now (user)
    headers: Callable[[], Path] | None  # a kbuild tree for ncdma.ko, made on demand
    packages: dict[str, debian_kernel.Package] = field(default_factory=dict)  # Debian only
    origin: Path | None = None  # the user's kernel file


def refresh_index(
    progress: Progress, arch: str = "x86_64", *, max_age_s: float = INDEX_MAX_AGE_S
) -> None:
    """Refresh the private indexes `arch` needs when old; offline, go on with what we have."""
    for apt in {debian_kernel.repo(arch), debian_kernel.repo()}:
        _refresh(progress, apt, max_age_s)


def _refresh(progress: Progress, apt: AptRepo, max_age_s: float) -> None:
    stamp = apt.root / "updated"
    before = stamp.stat().st_mtime if stamp.exists() else None
    stale = before is None or time.time() - before >= max_age_s
    started = time.monotonic()
    if stale:
        progress("refreshing the apt index ...")
    try:
        apt.update(max_age_s=max_age_s)
        if stale:
            progress(f"refreshing the apt index: {time.monotonic() - started:.1f} s")
    except EnvironmentProblem as exc:
        if not any((apt.root / "lists").glob("*_Packages*")):
            raise
        progress(f"apt index refresh failed, going on with the cached index ({exc})")


def resolution(
    progress: Progress,
    work: Path,
    arch: str = "x86_64",
    series: str = debian_kernel.DEFAULT_SERIES,
) -> debian_kernel.Resolution:
    refresh_index(progress, arch)
    return debian_kernel.resolve(
        arch, work, lambda: progress(f"resolving the newest Debian {series} kernel ..."), series
    )


def debian(
    progress: Progress,
    work: Path,
    arch: str = "x86_64",
    series: str = debian_kernel.DEFAULT_SERIES,
) -> KernelSource:
    """Debian's newest kernel of `series` for `arch`; downloads and unpacking happen only when a
    build needs them."""
    resolved = resolution(progress, work, arch, series)
    release = resolved.release
    debs_dir, unpacked = work / "debs", work / "unpacked"
    image_pkg = resolved.packages["image"]
    image_root = unpacked / f"{image_pkg.name}_{image_pkg.version}"

    def fetch(roles: tuple[str, ...]) -> dict[str, Path]:
        packages = [resolved.packages[r] for r in roles]
        need = [p for p in packages if not (debs_dir / p.deb_name).is_file()]
        if need:
            size = sum(p.size for p in need) / 1e6
            with phase(progress, f"downloading {len(need)} packages ({size:.0f} MB)"):
                by_repo: dict[AptRepo, list[debian_kernel.Package]] = {}
                for role in roles:
                    by_repo.setdefault(debian_kernel.repo_for(arch, role), []).append(
                        resolved.packages[role]
                    )
                try:
                    for apt, group in by_repo.items():
                        debian_kernel.fetch(apt, group, debs_dir)
                except EnvironmentProblem as exc:
                    raise StaleIndex(str(exc)) from exc
        return {r: debs_dir / p.deb_name for r, p in zip(roles, packages, strict=True)}

    def vmlinux() -> Path:
        target = image_root / BOOT_FILE[arch]
        if target.is_file():
            return target
        # Fetch every package at once: one apt call, and a later offline build finds them all.
        debs = fetch(tuple(resolved.packages))
        with phase(progress, f"unpacking {image_pkg.name}"):
            debian_kernel.unpack([debs["image"]], image_root)
        with phase(progress, f"extracting {target.name}"):
            _write_atomic(target, boot_kernel(arch, image_root / "boot" / f"vmlinuz-{release}"))
        return target

    def headers() -> Path:
        roles = ("headers", "headers-common", "kbuild")
        debs = fetch(roles)
        root = unpacked / f"linux-headers-{release}_{resolved.packages['headers'].version}"
        if not root.is_dir():
            with phase(progress, "unpacking kernel headers"):
                debian_kernel.unpack([debs[r] for r in roles], root)
        return debian_kernel.prepare_headers(root, release)

    return KernelSource(
        source="debian",
        arch=arch,
        release=release,
        modules=kmod.ModuleTree(image_root / "lib" / "modules" / release),
        fingerprint={r: f"{p.name}={p.version} {p.sha256}" for r, p in resolved.packages.items()},
        vmlinux=vmlinux,
        headers=headers,
        packages=resolved.packages,
    )


def user(
    progress: Progress, work: Path, kernel: Path, modules: Path | None, arch: str = "x86_64"
) -> KernelSource:
    """A user's kernel (x86: bzImage or vmlinux; arm64: Image, gzip'd or not) and optionally its
    lib/modules/<release> tree, whose build/ directory then provides the headers for ncdma.ko."""
    kernel = kernel.expanduser().absolute()
    if not kernel.is_file():
        raise BadInput(f"kernel {kernel}: no such file")
    data = kernel.read_bytes()
    if arch == "x86_64":
        if not (bzimage.is_bzimage(data) or data[:4] == b"\x7fELF"):
            raise BadInput(f"kernel {kernel}: neither a bzImage nor an ELF vmlinux")
        release = bzimage.release(data)
    else:
        release = bzimage.release(boot_kernel(arch, kernel))
    fingerprint = {"kernel": hashlib.sha256(data).hexdigest()}
    tree = None
    build = None
    if modules is not None:
        modules = modules.expanduser().absolute()
        if not modules.is_dir():
            raise BadInput(f"modules {modules}: not a directory (expected lib/modules/<release>)")
        if release and modules.name != release:
            raise BadInput(
                f"modules {modules}: named for {modules.name}, but the kernel is {release}"
            )
        release = release or modules.name
        tree = kmod.ModuleTree(modules)
        fingerprint["modules"] = _tree_fingerprint(modules)
        if (modules / "build" / "Makefile").is_file():
            build = modules / "build"
    if not release:
        raise BadInput(f"kernel {kernel}: no Linux version string in it")

    def vmlinux() -> Path:
        target = work / "user-kernels" / fingerprint["kernel"][:20] / BOOT_FILE[arch]
        if target.is_file():
            os.utime(target)  # most recently used: kept when old ones are pruned
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with phase(progress, f"extracting {target.name} from {kernel}"):
            _write_atomic(target, boot_kernel(arch, kernel))
        return target

    return KernelSource(
        source="user",
        arch=arch,
        release=release,
        modules=tree,
        fingerprint=fingerprint,
        vmlinux=vmlinux,
        headers=(lambda: build) if build is not None else None,
        origin=kernel,
    )


def _tree_fingerprint(root: Path) -> str:
    """Names, sizes and mtimes of a module tree, plus its headers' config and symbol versions:
    cheap, and different whenever the tree is rebuilt or reinstalled."""
    digest = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            info = os.stat(os.path.join(dirpath, name))
            digest.update(f"{dirpath}/{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    for name in (".config", "Module.symvers"):
        path = root / "build" / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.rename(path)
