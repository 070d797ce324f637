"""QEMU with the ncdma devices: Debian's QEMU 10.0 source, built once, cached, then incrementally.

The source is Debian's `qemu` source package from trixie (the newest `1:10.0.*`), fetched with a
private apt (signatures and checksums verified by apt) and unpacked with `dpkg-source -x`, which
applies Debian's patch series. On top of that goes one patch of ours, `qemu-devices/qemu-tree.patch`
(one `subdir('dmalab')` line in `hw/misc/meson.build`), and a symlink `hw/misc/dmalab` pointing to
the checkout's `qemu-devices/`.

Cache (under `cache_root()/qemu`):

    debian-version                     the Debian version chosen first (kept until --refresh)
    downloads/<version>/               .dsc, orig and debian tarballs as apt fetched them
    <version>-<source hash>/src        the patched tree (source key: version, options, patch)
    <version>-<source hash>/build      QEMU's build directory (ninja rebuilds incrementally)
    <version>-<source hash>/logs       full output of every tool that ran
    bin/<source key>-<devices hash>/   qemu-system-x86_64, qemu-system-aarch64, manifest.json

A binary is published by renaming a finished directory into place, so an interrupted build never
leaves a half-written binary or manifest behind.
"""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822
from debian.debian_support import version_compare

from dmalab.artifacts import apt
from dmalab.artifacts.cache import cache_root, locked, repo_root, tree_hash, write_atomic
from dmalab.artifacts.host_packages import install_packages, missing_packages
from dmalab.artifacts.progress import Progress
from dmalab.errors import BadInput, EnvironmentProblem

DEBIAN_SUITE = "trixie"
SOURCE_PACKAGE = "qemu"
#: Newest Debian version with this prefix is used (epoch 1, upstream 10.0.x).
VERSION_PREFIX = "1:10.0."
#: Debian patches without which configure fails (missing edk2 blobs, missing pycotap).
REQUIRED_DEBIAN_PATCHES = ("disable-pycotap.patch", "skip-unpack-edk2-blobs.patch")
#: Architecture -> the binary built for it (one configure, common code compiled once).
TARGETS: dict[str, str] = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
ARCHES = tuple(TARGETS)
#: A user's own QEMU for each architecture (then nothing is built).
USER_QEMU_VARS: dict[str, str] = {"x86_64": "DMALAB_QEMU", "aarch64": "DMALAB_QEMU_AARCH64"}
#: The device a QEMU must have to be of use (qemu-devices/ncdma.h, TYPE_NCDMA).
DEVICE = "ncdma"

#: QEMU's configure options. Part of the source key: changing them gives a fresh tree and build.
CONFIGURE_OPTIONS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu,aarch64-softmmu",
    "--without-default-features",
    "--disable-docs",
    "--enable-fdt=system",
    "--enable-tcg",
    "--enable-kvm",
    "--enable-plugins",
    "--disable-install-blobs",
    "--disable-download",
    "--disable-werror",
)

#: meson from PyPI in a tools venv (Debian 12 has 1.0; QEMU 10.0 needs >= 1.5).
MESON_REQUIREMENT = "meson>=1.5,<2"
MESON_MIN = (1, 5)

#: Debian packages needed to fetch, unpack and build the source.
BUILD_PACKAGES: tuple[str, ...] = (
    "debian-archive-keyring",
    "dpkg-dev",
    "xz-utils",
    "patch",
    "gcc",
    "libc6-dev",
    "python3-venv",
    "ninja-build",
    "pkg-config",
    "libglib2.0-dev",
    "libpixman-1-dev",
    "flex",
    "bison",
    "libfdt-dev",
    "zlib1g-dev",
)
#: Debian packages with the firmware the binary loads at run time (passed with -L).
FIRMWARE_PACKAGES: tuple[str, ...] = ("qemu-system-data", "seabios")
FIRMWARE_DIRS: tuple[Path, ...] = (Path("/usr/share/qemu"), Path("/usr/share/seabios"))

TREE_PATCH = "qemu-tree.patch"
#: Where qemu-devices/ appears inside the QEMU tree (meson's subdir() accepts no `..` or absolute
#: paths, hence a symlink).
DEVICES_LINK = Path("hw/misc/dmalab")
#: Finished binaries kept in the cache (the newest ones; older ones are removed after a build).
KEEP_BINARIES = 5

_NINJA_STATUS = re.compile(r"^\[(\d+)/(\d+)\]")
_FAILED = re.compile(r"^FAILED: ")
_ERRORISH = re.compile(r"\berror\b|undefined reference|No such file|not found|fatal", re.I)
_NOISE = re.compile(
    r"^(ninja: build stopped|ninja: error: rebuilding|A full log can be found|"
    r"compilation terminated|\d+ errors? generated|make: \*\*\*)"
)


@dataclass
class QemuBuild:
    """Usable QEMU binaries (one per architecture), their firmware directories, and how they
    were made."""

    binaries: dict[str, Path]
    firmware_dirs: list[Path]
    manifest: dict[str, Any]

    @property
    def binary(self) -> Path:
        """The x86_64 binary (what most callers and the device tests use)."""
        return self.binary_for("x86_64")

    def binary_for(self, arch: str) -> Path:
        try:
            return self.binaries[arch]
        except KeyError:
            if arch not in TARGETS:
                raise BadInput(f"arch {arch!r}: expected one of {', '.join(ARCHES)}") from None
            raise EnvironmentProblem(
                f"no {TARGETS[arch]}: a user's QEMU is in use ({self._user_vars()}); set "
                f"{USER_QEMU_VARS[arch]} to a {TARGETS[arch]} with ncdma as well"
            ) from None

    def _user_vars(self) -> str:
        return ", ".join(f"{v}" for a, v in USER_QEMU_VARS.items() if a in self.binaries)

    def base_argv(self, arch: str = "x86_64") -> list[str]:
        """`[binary, "-L", dir, ...]`: the start of every QEMU command line for `arch`."""
        argv = [str(self.binary_for(arch))]
        for directory in self.firmware_dirs:
            argv += ["-L", str(directory)]
        return argv


def ensure_qemu(
    progress: Progress | None = None,
    *,
    refresh: bool = False,
    devices_dir: Path | None = None,
) -> QemuBuild:
    """Return a QEMU with the devices of this checkout, building only what changed.

    `$DMALAB_QEMU` (and `$DMALAB_QEMU_AARCH64`) name a user's own qemu-system-x86_64 (and
    qemu-system-aarch64): then nothing is built. `refresh` looks up
    the newest Debian QEMU 10.0 source again instead of the one found first. `devices_dir` replaces
    the checkout's `qemu-devices/` (tests only).
    """
    own = _user_qemus()
    if own is not None:
        return own
    progress = progress if progress is not None else Progress()
    devices, patch = _sources(devices_dir)
    root = cache_root() / "qemu"
    version = None if refresh else _remembered_version(root)
    if version is None:
        version = _resolve_version(root, progress)
    layout = _layout(root, version, devices, patch)
    found = _published(layout.bin_dir)
    if found is not None:
        return found
    with locked(root / "build.lock"):
        found = _published(layout.bin_dir)
        if found is not None:
            return found
        return _Builder(layout, devices, patch, progress).build()


def find_qemu() -> QemuBuild | None:
    """The QEMU ensure_qemu() would return if it is built already; never builds or goes online."""
    own = _user_qemus()
    if own is not None:
        return own
    devices, patch = _sources(None)
    root = cache_root() / "qemu"
    version = _remembered_version(root)
    return _published(_layout(root, version, devices, patch).bin_dir) if version else None


def _sources(devices_dir: Path | None) -> tuple[Path, Path]:
    checkout = _checkout()
    devices = (devices_dir or checkout / "qemu-devices").resolve()
    patch = checkout / "qemu-devices" / TREE_PATCH
    if not (devices / "meson.build").is_file():
        raise EnvironmentProblem(f"{devices}/meson.build is missing: there is no device to build")
    if not patch.is_file():
        raise EnvironmentProblem(f"{patch} is missing")
    return devices, patch


def _layout(root: Path, version: str, devices: Path, patch: Path) -> Layout:
    devices_sha = tree_hash(devices, exclude_suffixes=(".orig", ".rej"))
    return Layout.of(root, version, sha256_file(patch), devices_sha)


# ----------------------------------------------------------------------------------------------
# Pure parts: version choice, keys, manifest, tool output


def compare_debian_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version a sorts before, with or after b (dpkg's algorithm)."""
    order = version_compare(a, b)
    return (order > 0) - (order < 0)


def showsrc_versions(text: str, package: str = SOURCE_PACKAGE) -> list[str]:
    """Versions of `package` in `apt-cache showsrc` output (deb822 stanzas)."""
    return [
        s["Version"].strip()
        for s in Deb822.iter_paragraphs(text)
        if s.get("Package", "").strip() == package and "Version" in s
    ]


def select_version(text: str, prefix: str = VERSION_PREFIX) -> str:
    """The newest version starting with prefix in `apt-cache showsrc` output."""
    versions = showsrc_versions(text)
    matching = [v for v in versions if v.startswith(prefix)]
    if not matching:
        found = ", ".join(versions) or "none"
        raise EnvironmentProblem(
            f"Debian {DEBIAN_SUITE} has no {SOURCE_PACKAGE} {prefix}* source (found: {found})"
        )
    return max(matching, key=functools.cmp_to_key(compare_debian_versions))


def source_key(version: str, options: Sequence[str], patch_sha256: str) -> str:
    """Names a patched source tree and its build directory, e.g. `10.0.13+ds-0+deb13u1-1a2b3c4d`."""
    material = json.dumps([version, list(options), patch_sha256]).encode()
    return f"{version.split(':', 1)[-1]}-{hashlib.sha256(material).hexdigest()[:8]}"


def binary_key(src_key: str, devices_sha256: str) -> str:
    """Names a finished binary: its source key plus the content of qemu-devices/."""
    return f"{src_key}-{devices_sha256[:12]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write JSON atomically: readers see the old file or the whole new one, never a part."""
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def ninja_progress(line: str) -> tuple[int, int] | None:
    """(done, total) from a ninja status line `[N/M] ...`, else None."""
    match = _NINJA_STATUS.match(line)
    return (int(match[1]), int(match[2])) if match else None


def meaningful_line(lines: Sequence[str], limit: int = 300) -> str:
    """The line of a failed tool's output that best says what went wrong."""
    cleaned = [line.strip() for line in lines if line.strip()]
    failed = [i for i, line in enumerate(cleaned) if _FAILED.match(line)]
    candidates: Iterable[str]
    if failed:
        after = cleaned[failed[-1] + 1 :]
        candidates = [line for line in after if _ERRORISH.search(line)]
        candidates = [*candidates, *reversed(cleaned)]
    else:
        candidates = [
            *(line for line in reversed(cleaned) if _ERRORISH.search(line)),
            *reversed(cleaned),
        ]
    for line in candidates:
        if not _NOISE.match(line) and not _FAILED.match(line):
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return "no output"


# ----------------------------------------------------------------------------------------------
# Cache layout and lookups


@dataclass(frozen=True)
class Layout:
    """Every path one build uses, derived from its keys."""

    root: Path
    version: str
    patch_sha256: str
    devices_sha256: str
    src_key: str
    bin_key: str

    @classmethod
    def of(cls, root: Path, version: str, patch_sha256: str, devices_sha256: str) -> Layout:
        src = source_key(version, CONFIGURE_OPTIONS, patch_sha256)
        return cls(
            root, version, patch_sha256, devices_sha256, src, binary_key(src, devices_sha256)
        )

    @property
    def downloads(self) -> Path:
        return self.root / "downloads" / self.version.split(":", 1)[-1]

    @property
    def tree(self) -> Path:
        return self.root / self.src_key

    @property
    def src(self) -> Path:
        return self.tree / "src"

    @property
    def build(self) -> Path:
        return self.tree / "build"

    @property
    def logs(self) -> Path:
        return self.tree / "logs"

    @property
    def bin_root(self) -> Path:
        return self.root / "bin"

    @property
    def bin_dir(self) -> Path:
        return self.bin_root / self.bin_key


def _checkout() -> Path:
    try:
        return repo_root()
    except RuntimeError as exc:
        raise EnvironmentProblem(f"QEMU is built from a dmalab checkout: {exc}") from exc


def _remembered_version(root: Path) -> str | None:
    try:
        version = (root / "debian-version").read_text().strip()
    except OSError:
        return None
    return version if version.startswith(VERSION_PREFIX) else None


def _resolve_version(root: Path, progress: Progress) -> str:
    progress.phase("qemu", f"look up Debian {DEBIAN_SUITE} source versions")
    repo = apt.source_repo(DEBIAN_SUITE)
    repo.update()
    version = select_version(repo.run("apt-cache", "showsrc", SOURCE_PACKAGE))
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "debian-version", version + "\n")
    progress.note(f"qemu: using Debian source {SOURCE_PACKAGE} {version}")
    return version


def _published(bin_dir: Path) -> QemuBuild | None:
    """The finished build in bin_dir, if it is complete."""
    try:
        manifest = json.loads((bin_dir / "manifest.json").read_text())
        binaries = {arch: bin_dir / TARGETS[arch] for arch in manifest["binaries"]}
        for arch, binary in binaries.items():
            if binary.stat().st_size != manifest["binaries"][arch]["size"]:
                return None
        if set(binaries) != set(TARGETS):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    firmware = [Path(d) for d in manifest.get("firmware_dirs", [])]
    if not all(d.is_dir() for d in firmware):
        _ensure_packages(FIRMWARE_PACKAGES, Progress(), None)
    return QemuBuild(binaries, firmware, manifest)


def _user_qemus() -> QemuBuild | None:
    """The user's own QEMUs named by USER_QEMU_VARS, or None when no variable is set."""
    chosen = {arch: os.environ[var] for arch, var in USER_QEMU_VARS.items() if os.environ.get(var)}
    if not chosen:
        return None
    binaries, versions = {}, {}
    for arch, value in chosen.items():
        binaries[arch], versions[arch] = _user_qemu(arch, value)
    firmware = [d for d in FIRMWARE_DIRS if d.is_dir()]
    manifest = {
        "source": "DMALAB_QEMU",
        "binaries": {arch: str(path) for arch, path in binaries.items()},
        "qemu_version": next(iter(versions.values())),
        "qemu_versions": versions,
        "firmware_dirs": [str(d) for d in firmware],
    }
    return QemuBuild(binaries, firmware, manifest)


def _user_qemu(arch: str, value: str) -> tuple[Path, str]:
    """(resolved binary, first line of --version) of the QEMU for `arch` that its variable
    (USER_QEMU_VARS) names as `value`, checked: executable, a QEMU, with ncdma."""
    binary = Path(value).expanduser()
    where = f"{USER_QEMU_VARS[arch]}={value}"
    if binary.is_dir():
        raise EnvironmentProblem(f"{where}: is a directory, not a {TARGETS[arch]}")
    if not binary.is_file():
        raise EnvironmentProblem(f"{where}: no such file")
    if not os.access(binary, os.X_OK):
        raise EnvironmentProblem(f"{where}: not executable")
    version = _qemu_says(binary, where, "--version")
    if not version.startswith("QEMU emulator version"):
        said = f"printed {version!r}" if version else "printed nothing"
        raise EnvironmentProblem(f"{where}: not a QEMU (`--version` {said})")
    devices = _qemu_says(binary, where, "-machine", "none", "-device", "help", lines=0)
    if not re.search(rf'^name "{DEVICE}"', devices, re.M):
        raise EnvironmentProblem(
            f"{where}: {version} has no {DEVICE} device (build it with qemu-devices/: "
            "docs/building.md)"
        )
    return binary.resolve(), version


def _qemu_says(binary: Path, where: str, *args: str, lines: int = 1) -> str:
    """What `binary args` prints on stdout (its first `lines` lines; 0: all of it)."""
    try:
        out = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise EnvironmentProblem(
            f"{where}: `{' '.join(args)}` exited with status {exc.returncode}"
        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentProblem(f"{where}: does not run: {exc}") from None
    return "\n".join(out.splitlines()[:lines] if lines else out.splitlines()).strip()


# ----------------------------------------------------------------------------------------------
# Host packages and tools


def _ensure_packages(names: Sequence[str], progress: Progress, log: Path | None) -> None:
    missing = missing_packages(names)
    if missing:
        progress.phase("qemu", f"install {' '.join(missing)}")
        install_packages(missing, "QEMU", log or cache_root() / "qemu" / "apt.log")


def meson_venv() -> Path:
    return cache_root() / "tools" / "meson-venv"


def _meson_version(venv: Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(venv / "bin" / "meson"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return tuple(int(x) for x in out.split(".")[:3])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _ensure_meson(progress: Progress, log: Path) -> tuple[Path, str]:
    """(python of the tools venv, meson version); creates the venv when needed."""
    venv = meson_venv()
    version = _meson_version(venv)
    if version is None or not MESON_MIN <= version < (2,):
        progress.phase("qemu", f"install {MESON_REQUIREMENT} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
        run_logged([base, "-m", "venv", str(venv)], phase="creating the meson venv", log=log)
        run_logged(
            [str(venv / "bin" / "pip"), "install", "--quiet", MESON_REQUIREMENT],
            phase=f"pip install {MESON_REQUIREMENT}",
            log=log,
            append=True,
        )
        version = _meson_version(venv)
        if version is None:
            raise EnvironmentProblem(f"meson in {venv} does not run; full log: {log}")
    return venv / "bin" / "python3", ".".join(map(str, version))


def run_logged(
    cmd: Sequence[str],
    *,
    phase: str,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    append: bool = False,
) -> None:
    """Run cmd with its output (stdout and stderr) going to log; on failure raise
    `EnvironmentProblem("<phase> failed: <the line that says why>; full log: <log>")`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with open(log, "a" if append else "w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise EnvironmentProblem(f"{phase} failed: {exc}") from exc
        with proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                tail.append(line)
                if on_line is not None:
                    on_line(line)
        if proc.returncode != 0:
            out.write(f"[exit status {proc.returncode}]\n")
            raise EnvironmentProblem(f"{phase} failed: {meaningful_line(tail)}; full log: {log}")


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.splitlines() or ["unknown"])[0].strip()


# ----------------------------------------------------------------------------------------------
# The build


class _Builder:
    def __init__(self, layout: Layout, devices: Path, patch: Path, progress: Progress) -> None:
        self.layout = layout
        self.devices = devices
        self.patch = patch
        self.progress = progress
        self.kind = "incremental"

    def build(self) -> QemuBuild:
        started = time.monotonic()
        lay = self.layout
        try:
            _ensure_packages(
                BUILD_PACKAGES + FIRMWARE_PACKAGES, self.progress, lay.logs / "apt.log"
            )
            python, meson = _ensure_meson(self.progress, lay.logs / "tools.log")
            if not lay.src.is_dir():
                self.kind = "full"
                self._fetch()
                self._unpack()
            self._link_devices()
            self._configure(python)
            self._compile()
            manifest = self._manifest(time.monotonic() - started, meson)
            return self._publish(manifest)
        finally:
            self.progress.done()

    def _fetch(self) -> None:
        lay = self.layout
        if lay.downloads.is_dir():
            return
        self.progress.phase("qemu", f"fetch Debian source {SOURCE_PACKAGE} {lay.version}")
        repo = apt.source_repo(DEBIAN_SUITE)
        repo.update()
        offered = showsrc_versions(repo.run("apt-cache", "showsrc", SOURCE_PACKAGE))
        if lay.version not in offered:
            raise EnvironmentProblem(
                f"Debian {DEBIAN_SUITE} no longer offers {SOURCE_PACKAGE} {lay.version} "
                f"(it offers {', '.join(offered) or 'none'}): run `dmalab build qemu --refresh`"
            )
        partial = lay.downloads.with_name(lay.downloads.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            output = repo.run(
                "apt-get",
                "source",
                "--download-only",
                f"{SOURCE_PACKAGE}={lay.version}",
                cwd=partial,
            )
        except EnvironmentProblem as exc:
            raise EnvironmentProblem(f"fetch failed: {exc}") from exc
        lay.logs.mkdir(parents=True, exist_ok=True)
        (lay.logs / "fetch.log").write_text(output)
        os.rename(partial, lay.downloads)

    def _unpack(self) -> None:
        lay = self.layout
        self.progress.phase("qemu", "unpack and apply Debian's patches")
        dsc = next(lay.downloads.glob("*.dsc"), None)
        if dsc is None:
            raise EnvironmentProblem(f"no .dsc in {lay.downloads}: remove that directory")
        partial = lay.tree / "src.partial"
        shutil.rmtree(partial, ignore_errors=True)
        lay.tree.mkdir(parents=True, exist_ok=True)
        run_logged(
            ["dpkg-source", "-x", str(dsc), str(partial)],
            phase="unpack",
            log=lay.logs / "unpack.log",
        )
        applied_file = partial / ".pc" / "applied-patches"
        applied = applied_file.read_text().split() if applied_file.exists() else []
        missing = [p for p in REQUIRED_DEBIAN_PATCHES if p not in applied]
        if missing:
            raise EnvironmentProblem(
                f"unpack failed: Debian patches not applied: {', '.join(missing)}; "
                f"full log: {lay.logs / 'unpack.log'}"
            )
        self.progress.phase("qemu", f"apply {TREE_PATCH}")
        run_logged(
            ["patch", "-p1", "--forward", "--batch", "-i", str(self.patch)],
            phase=f"applying {TREE_PATCH}",
            log=lay.logs / "patch.log",
            cwd=partial,
        )
        os.rename(partial, lay.src)

    def _link_devices(self) -> None:
        """Point hw/misc/dmalab at the current checkout's qemu-devices/ (checkouts move: CI clones
        afresh each time). ninja compares times, and the other checkout's files may be older than
        what was built from this one, so after a move: drop the device objects, and date
        build.ninja back so that meson reads the new meson.build."""
        lay = self.layout
        link = lay.src / DEVICES_LINK
        target = str(self.devices)
        previous = os.readlink(link) if link.is_symlink() else None
        if previous == target:
            return
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
        if previous is not None and (lay.build / "build.ninja").is_file():
            for obj in lay.build.rglob("*hw_misc_dmalab_*"):
                if obj.is_file():
                    obj.unlink()
            os.utime(lay.build / "build.ninja", (1, 1))

    def _configure(self, python: Path) -> None:
        lay = self.layout
        stamp = lay.build / ".dmalab-configured"
        wanted = json.dumps({"options": list(CONFIGURE_OPTIONS), "python": str(python)})
        if stamp.is_file() and stamp.read_text() == wanted:
            return
        self.kind = "full"
        self.progress.phase("qemu", "configure")
        shutil.rmtree(lay.build, ignore_errors=True)
        lay.build.mkdir(parents=True)
        try:
            run_logged(
                [str(lay.src / "configure"), f"--python={python}", *CONFIGURE_OPTIONS],
                phase="configure",
                log=lay.logs / "configure.log",
                cwd=lay.build,
            )
        except BaseException:
            shutil.rmtree(lay.build, ignore_errors=True)
            raise
        write_atomic(stamp, wanted)

    def _compile(self) -> None:
        lay = self.layout
        self.progress.phase("qemu", "compile")
        jobs = str(os.cpu_count() or 2)
        env = {**os.environ, "NINJA_STATUS": "[%f/%t] "}

        def on_line(line: str) -> None:
            counts = ninja_progress(line)
            if counts is not None:
                self.progress.step(*counts)

        run_logged(
            ["ninja", "-C", str(lay.build), "-j", jobs, *TARGETS.values()],
            phase="compile",
            log=lay.logs / "compile.log",
            env=env,
            on_line=on_line,
        )

    def _manifest(self, seconds: float, meson: str) -> dict[str, Any]:
        lay = self.layout
        sources = {p.name: sha256_file(p) for p in sorted(lay.downloads.iterdir())}
        firmware_versions = {
            pkg: _first_line(["dpkg-query", "-W", "-f", "${Version}\n", pkg])
            for pkg in FIRMWARE_PACKAGES
        }
        return {
            "format": 2,
            "debian_source": {
                "package": SOURCE_PACKAGE,
                "suite": DEBIAN_SUITE,
                "version": lay.version,
                "files_sha256": sources,
            },
            "configure_options": list(CONFIGURE_OPTIONS),
            "tree_patch_sha256": lay.patch_sha256,
            "devices_sha256": lay.devices_sha256,
            "devices_dir": str(self.devices),
            "source_key": lay.src_key,
            "binary_key": lay.bin_key,
            "tree": str(lay.tree),
            "meson_version": meson,
            "gcc_version": _first_line(["gcc", "--version"]),
            "build_kind": self.kind,
            "build_seconds": round(seconds, 1),
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "firmware_dirs": [str(d) for d in FIRMWARE_DIRS],
            "firmware_packages": firmware_versions,
        }

    def _publish(self, manifest: dict[str, Any]) -> QemuBuild:
        lay = self.layout
        lay.bin_root.mkdir(parents=True, exist_ok=True)
        for stale in lay.bin_root.glob(".*.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = lay.bin_root / f".{lay.bin_key}.partial-{os.getpid()}"
        partial.mkdir()
        try:
            manifest["binaries"] = {}
            for arch, target in TARGETS.items():
                shutil.copy2(lay.build / target, partial / target)
                manifest["binaries"][arch] = {
                    "file": target,
                    "sha256": sha256_file(partial / target),
                    "size": (partial / target).stat().st_size,
                }
            write_manifest(partial / "manifest.json", manifest)
            if lay.bin_dir.exists():
                shutil.rmtree(lay.bin_dir)
            os.rename(partial, lay.bin_dir)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self._prune()
        names = ", ".join(TARGETS.values())
        self.progress.done(f"qemu: built {names} in {lay.bin_dir} ({manifest['build_seconds']} s)")
        found = _published(lay.bin_dir)
        assert found is not None
        return found

    def _prune(self) -> None:
        lay = self.layout
        finished = [p for p in lay.bin_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        finished.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in finished[KEEP_BINARIES:]:
            if old != lay.bin_dir:
                shutil.rmtree(old, ignore_errors=True)
