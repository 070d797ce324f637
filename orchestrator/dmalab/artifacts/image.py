"""The guest image, one per guest architecture: an uncompressed kernel (x86: the vmlinux QEMU
boots through its PVH entry; arm64: the Image) and an uncompressed initramfs (busybox,
images/init, modules, and ncdma.ko and dmalab-agent when their
source exists), with a manifest.json beside them saying exactly what went in.

Images are cached under the cache root by a key over the content of every input, so a warm
`ensure_image()` reads one manifest and returns: it runs no apt-cache, and touches the network
only when the private apt index is older than INDEX_MAX_AGE_S (offline, it goes on with the old
index).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dmalab.artifacts import debian_kernel, guest_code, guest_kernel, initramfs, kmod
from dmalab.artifacts.cache import cache_root, locked, repo_root, tree_hash
from dmalab.artifacts.guest_kernel import KernelSource, Progress, phase
from dmalab.errors import BadInput, EnvironmentProblem

HOST_ARCH = "x86_64"
#: Bump when the image or manifest changes in a way the inputs do not show.
FORMAT = 1
KEEP_BUILDS = 6
MANIFEST = "manifest.json"
INITRAMFS_FILE = "initramfs.cpio"
PARTS = (guest_code.DRIVER_DIR, guest_code.AGENT_DIR)

__all__ = ["ImageBuild", "ensure_image", "stderr_progress"]


def work_dir(arch: str) -> Path:
    """Where `arch`'s images, downloads and unpacked packages live in the cache (x86 keeps the
    directory it always had)."""
    return cache_root() / ("image" if arch == HOST_ARCH else f"image-{arch}")


def stderr_progress(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ImageBuild:
    """A built image: the files to boot and what they were made from."""

    manifest: Path
    kernel: Path  # vmlinux (x86, PVH entry) or Image (arm64), for -kernel
    initramfs: Path  # newc cpio, uncompressed, for -initrd
    kernel_release: str  # uname -r in the guest
    versions: dict[str, str]  # Debian package -> version
    cmdline: str  # the default kernel command line
    iommu_cmdline: dict[str, str] = field(default_factory=dict)  # vIOMMU -> words to add
    parts: dict[str, bool] = field(default_factory=dict)  # "driver", "agent" -> included
    arch: str = "x86_64"  # QEMU's name of the guest architecture

    def cmdline_for(self, iommu: str = "none", *extra: str) -> str:
        """The kernel command line for a machine with this vIOMMU ("none", "intel-iommu",
        "virtio-iommu"), plus extra words (later words win, e.g. a second console=)."""
        if iommu not in self.iommu_cmdline:
            raise BadInput(f"iommu {iommu!r}: expected one of {', '.join(self.iommu_cmdline)}")
        return " ".join(w for w in (self.cmdline, self.iommu_cmdline[iommu], *extra) if w)

    @classmethod
    def load(cls, manifest: Path) -> ImageBuild:
        data = json.loads(manifest.read_text())
        return cls(
            manifest=manifest,
            kernel=manifest.parent / data["kernel"]["file"],
            initramfs=manifest.parent / data["initramfs"]["file"],
            kernel_release=data["kernel"]["release"],
            versions={name: p["version"] for name, p in data["packages"].items()},
            cmdline=data["cmdline"]["default"],
            iommu_cmdline=data["cmdline"]["iommu"],
            parts={name: part["included"] for name, part in data["parts"].items()},
            arch=data.get("arch", "x86_64"),
        )


@dataclass(frozen=True)
class _Recipe:
    """images/: recipe.toml and init."""

    root: Path
    modules: tuple[str, ...]
    cmdline: str
    iommu_cmdline: dict[str, str]

    @classmethod
    def load(cls, root: Path, arch: str) -> _Recipe:
        data = tomllib.loads((root / "recipe.toml").read_text())
        cmdline = data["cmdline"]
        own = data["arch"][arch]
        iommu = {**cmdline["iommu"], **own.get("iommu", {})}
        return cls(
            root=root,
            modules=tuple(data["initramfs"]["modules"]),
            cmdline=" ".join([*own["cmdline"], *cmdline["default"]]),
            iommu_cmdline={
                name: " ".join(words) for name, words in iommu.items() if name in own["iommus"]
            },
        )


@dataclass(frozen=True)
class _Job:
    """Everything one ensure_image() call works from."""

    progress: Progress
    work: Path  # <cache>/image
    recipe: _Recipe
    guest: guest_code.GuestCode
    kernel: Path | None
    modules: Path | None
    arch: str
    series: str  # the Debian kernel series, without a user's kernel


def ensure_image(
    progress: Progress = stderr_progress,
    kernel: Path | None = None,
    modules: Path | None = None,
    arch: str = "x86_64",
    series: str | None = None,
) -> ImageBuild:
    """Build the guest image for `arch` (x86_64 or aarch64) unless an identical one is cached.

    kernel and modules bring a user's own kernel (x86: a bzImage or vmlinux built with
    CONFIG_PVH=y; arm64: an Image) and its lib/modules/<release> tree (whose build/ then provides
    the headers for ncdma.ko). `series` picks Debian's kernel series instead of the default
    (`debian_kernel.SERIES`: "6.12", "6.1"), the newest package of it."""
    if modules is not None and kernel is None:
        raise BadInput("modules given without kernel: pass the kernel they belong to as well")
    if series is not None and kernel is not None:
        raise BadInput("a Debian kernel series and a kernel file: give one of them")
    if arch not in guest_kernel.BOOT_FILE:
        raise BadInput(f"arch {arch!r}: expected one of {', '.join(guest_kernel.BOOT_FILE)}")
    if kernel is None and os.environ.get(PREBUILT_VAR):
        return prebuilt_image(arch)
    checkout = repo_root()
    job = _Job(
        progress=progress,
        work=work_dir(arch),
        recipe=_Recipe.load(checkout / "images", arch),
        guest=guest_code.GuestCode(checkout),
        kernel=kernel,
        modules=modules,
        arch=arch,
        series=series or debian_kernel.DEFAULT_SERIES,
    )
    started = time.monotonic()
    with locked(job.work / "lock"):
        try:
            build, fresh = _ensure(job)
        except guest_kernel.StaleIndex as exc:
            progress(f"download failed ({exc}): refreshing the apt index and trying again")
            guest_kernel.refresh_index(progress, arch, max_age_s=0)
            build, fresh = _ensure(job)
    verb = "built" if fresh else "up to date"
    progress(f"{verb} in {time.monotonic() - started:.1f} s: {build.manifest.parent}")
    return build


#: A directory of finished images, `<arch>/<key>/manifest.json` (the runner image has one):
#: used as they are, nothing is resolved, fetched or built.
PREBUILT_VAR = "DMALAB_GUEST_IMAGES"


def builds_dir(arch: str) -> Path:
    """Where the finished images of `arch` are: the cache's, or those of $DMALAB_GUEST_IMAGES."""
    prebuilt = os.environ.get(PREBUILT_VAR)
    return Path(prebuilt) / arch if prebuilt else work_dir(arch) / "builds"


def prebuilt_image(arch: str) -> ImageBuild:
    """The newest image of `arch` under $DMALAB_GUEST_IMAGES."""
    manifests = sorted(builds_dir(arch).glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        where = f"{PREBUILT_VAR}={os.environ.get(PREBUILT_VAR)}"
        raise EnvironmentProblem(f"{where}: no {arch} image (<arch>/<key>/{MANIFEST})")
    return ImageBuild.load(manifests[-1])


def _ensure(job: _Job) -> tuple[ImageBuild, bool]:
    if job.kernel is not None:
        source = guest_kernel.user(job.progress, job.work, job.kernel, job.modules, job.arch)
    else:
        source = guest_kernel.debian(job.progress, job.work, job.arch, job.series)
    inputs: dict[str, object] = {
        "format": FORMAT,
        "arch": job.arch,
        "code": _own_code_hash(),
        "recipe": tree_hash(job.recipe.root),
        "kernel": source.fingerprint,
        "parts": [name for name in PARTS if job.guest.has(name)],
    }
    if inputs["parts"]:
        inputs["guest_code"] = job.guest.content_hash()
        inputs["compiler"] = _compiler_version(guest_code.compiler(job.arch))
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    out = job.work / "builds" / key[:20]
    if (out / MANIFEST).is_file():
        os.utime(out / MANIFEST)  # most recently used: _prune keeps it
        return ImageBuild.load(out / MANIFEST), False
    build = _build(job, source, key, out)
    _prune(job.work, source)
    return build, True


def _own_code_hash() -> str:
    """The code that writes images is an input too: changing it makes a new image."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in (
        "image.py",
        "initramfs.py",
        "cpio.py",
        "kmod.py",
        "bzimage.py",
        "elf.py",
        "guest_code.py",
        "guest_kernel.py",
    ):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def _compiler_version(gcc: str) -> str:
    try:
        proc = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return f"no {gcc}"
    return (proc.stdout.splitlines() or [f"no {gcc}"])[0]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _build(job: _Job, source: KernelSource, key: str, out: Path) -> ImageBuild:
    progress = job.progress
    has_driver = job.guest.has(guest_code.DRIVER_DIR)
    has_agent = job.guest.has(guest_code.AGENT_DIR)
    if has_driver and source.headers is None:
        where = f"{source.modules.root}/build" if source.modules else "no modules tree given"
        raise BadInput(f"ncdma.ko needs the kernel's headers: no kbuild Makefile in {where}")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    if has_driver or has_agent:
        guest_code.ensure_compiler(job.arch)
    # The agent needs nothing from the kernel: build it beside the kernel work (make and the
    # compiler are separate processes, so a thread is enough).
    with job.guest.scratch() as scratch, ThreadPoolExecutor(max_workers=1) as pool:
        agent_job = None
        if has_agent:
            progress("building dmalab-agent (alongside)")
            agent_job = pool.submit(
                guest_code.build_agent, scratch, staging / "agent-build.log", job.arch
            )

        kernel_file = guest_kernel.BOOT_FILE[job.arch]
        os.link(source.vmlinux(), staging / kernel_file)  # a hard link: the kernel is ~60 MB

        driver = None
        if has_driver:
            assert source.headers is not None
            headers = source.headers()
            with phase(progress, "building ncdma.ko"):
                data = guest_code.build_driver(
                    scratch, headers, staging / "driver-build.log", job.arch
                )
            driver = kmod.module_from_bytes("extra/ncdma.ko", data, origin="ncdma.ko")

        with phase(progress, "collecting modules"):
            wanted = [*job.recipe.modules, *(driver.depends if driver else ())]
            modules, missing, builtin = _collect_modules(source, wanted)
            if driver is not None:
                modules.append(driver)
            _check_vermagic(modules, source.release)
        if missing:
            progress(f"modules neither in the tree nor built in: {', '.join(missing)}")

        busybox, busybox_pkg = _busybox(job, source)
        applets = _foreign_applets(job, busybox) if job.arch != HOST_ARCH else None
        agent = agent_job.result() if agent_job else None

    with phase(progress, "writing initramfs"):
        archive = initramfs.assemble(
            initramfs.Contents(
                busybox=busybox,
                init=(job.recipe.root / "init").read_bytes(),
                release=source.release,
                modules=modules,
                builtin=builtin,
                agent=agent,
                applets=applets,
            )
        )
        with open(staging / INITRAMFS_FILE, "wb") as handle:
            archive.write(handle)

    manifest = _manifest(job, source, key, staging, modules, missing, driver, agent, busybox_pkg)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return ImageBuild.load(out / MANIFEST)


def _collect_modules(
    source: KernelSource, wanted: list[str]
) -> tuple[list[kmod.Module], list[str], bytes]:
    if source.modules is None:
        return [], list(wanted), b""
    modules, missing = source.modules.closure(wanted)
    builtin = source.modules.root / "modules.builtin"
    return modules, missing, builtin.read_bytes() if builtin.is_file() else b""


def _check_vermagic(modules: list[kmod.Module], release: str) -> None:
    for module in modules:
        built_for = module.vermagic.split()[0] if module.vermagic else release
        if built_for != release:
            raise BadInput(f"module {module.name}: built for kernel {built_for}, not {release}")


def _busybox(
    job: _Job, source: KernelSource | None, arch: str | None = None
) -> tuple[Path, debian_kernel.Package]:
    """Debian's busybox-static for `arch` (default: the image's; a user's kernel gets it too)."""
    arch = arch or job.arch
    package = source.packages.get("busybox") if source else None
    work = work_dir(arch)
    if package is None:
        package = guest_kernel.resolution(job.progress, work, arch).packages["busybox"]
    root = work / "unpacked" / f"{package.name}_{package.version}"
    binary = root / "bin" / "busybox"
    if not binary.is_file():
        debs = debian_kernel.fetch(debian_kernel.repo(arch), [package], work / "debs")
        debian_kernel.unpack([debs[package.name]], root, ("./bin/busybox",))
    return binary, package


def _foreign_applets(job: _Job, busybox: Path) -> list[str]:
    """Where a busybox that cannot run here installs its applets: ask the host's busybox."""
    host, _ = _busybox(job, None, HOST_ARCH)
    return initramfs.foreign_busybox_applets(busybox, host)


def _manifest(
    job: _Job,
    source: KernelSource,
    key: str,
    staging: Path,
    modules: list[kmod.Module],
    missing: list[str],
    driver: kmod.Module | None,
    agent: bytes | None,
    busybox: debian_kernel.Package,
) -> dict[str, object]:
    packages = {p.name: p for p in source.packages.values()}
    packages[busybox.name] = busybox
    kernel_file = guest_kernel.BOOT_FILE[job.arch]
    return {
        "format": FORMAT,
        "arch": job.arch,
        "key": key,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": {
            "source": source.source,
            "release": source.release,
            "file": kernel_file,
            "sha256": _sha256_file(staging / kernel_file),
            "boot": "pvh" if job.arch == "x86_64" else "image",
            "origin": str(source.origin) if source.origin else None,
            "origin_sha256": source.fingerprint.get("kernel") if source.origin else None,
            "modules_tree": str(source.modules.root) if source.modules else None,
        },
        "initramfs": {
            "file": INITRAMFS_FILE,
            "sha256": _sha256_file(staging / INITRAMFS_FILE),
            "format": "newc",
            "compression": None,
        },
        "packages": {
            name: {"version": p.version, "sha256": p.sha256} for name, p in sorted(packages.items())
        },
        "modules": {"included": [m.name for m in modules], "missing": missing},
        "parts": {
            "driver": {
                "included": driver is not None,
                "path": "/" + initramfs.driver_path(source.release),
                "source_sha256": job.guest.content_hash(guest_code.DRIVER_DIR) if driver else None,
            },
            "agent": {
                "included": agent is not None,
                "path": "/" + initramfs.AGENT_PATH,
                "source_sha256": job.guest.content_hash(guest_code.AGENT_DIR) if agent else None,
            },
        },
        "cmdline": {"default": job.recipe.cmdline, "iommu": job.recipe.iommu_cmdline},
    }


def _prune(work: Path, source: KernelSource) -> None:
    """Keep the KEEP_BUILDS most recently used images and user kernels, and only the current
    Debian kernel's packages (a kept build holds its own hard-linked vmlinux)."""
    user_kernel = guest_kernel.BOOT_FILE[source.arch]
    for place, marker in ((work / "builds", MANIFEST), (work / "user-kernels", user_kernel)):
        if not place.is_dir():
            continue
        done = [d for d in place.iterdir() if (d / marker).is_file()]
        done.sort(key=lambda d: (d / marker).stat().st_mtime, reverse=True)
        for old in done[KEEP_BUILDS:]:
            shutil.rmtree(old, ignore_errors=True)
    if source.source != "debian":
        return
    # Every series' current kernel stays: a run over two kernels uses both.
    kept = [(source.release, source.packages)]
    for series in debian_kernel.SERIES:
        memo = debian_kernel.memo_file(work, series)
        if memo.is_file():
            r = debian_kernel.Resolution.from_json(json.loads(memo.read_text())["resolution"])
            kept.append((r.release, r.packages))
    current: set[str] = set()
    for release, packages in kept:
        current |= {f"{p.name}_{p.version}" for p in packages.values()}
        current |= {p.deb_name for p in packages.values()}
        if "headers" in packages:
            current.add(f"linux-headers-{release}_{packages['headers'].version}")
    for place in (work / "unpacked", work / "debs"):
        for entry in place.iterdir() if place.is_dir() else ():
            if entry.name in current:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
