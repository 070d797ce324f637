"""LAVA's own code from Debian, unpacked into the cache: its job schema (lava-common), its
dispatcher (lava-dispatcher, lava-dispatcher-host) and its device-type templates (lava-server).

Installing lava-dispatcher pulls ~180 packages (systemd-sysv, udev, libguestfs, QEMU) and
lava-server a whole web service; dmalab needs their Python code and templates only, so the
.debs are fetched with the private apt (artifacts/apt.py) and unpacked, never installed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmalab.artifacts.apt import AptRepo, binary_repo
from dmalab.artifacts.cache import cache_root, locked, write_atomic
from dmalab.artifacts.debian_kernel import unpack
from dmalab.errors import EnvironmentProblem

SUITE = "bookworm"
PYTHON_PACKAGES = ("lava-common", "lava-dispatcher", "lava-dispatcher-host")
SERVER_PACKAGE = "lava-server"
DEVICE_TYPES = "usr/share/lava-server/device-types"


@dataclass(frozen=True)
class LavaPackages:
    """Where the unpacked packages are."""

    python: Path  # holds lava_common, lava_dispatcher, lava_dispatcher_host
    device_types: Path  # LAVA's device-type templates (qemu.jinja2, docker.jinja2, ...)
    lava_run: Path  # the dispatcher's entry point script
    versions: dict[str, str]


def _repo() -> AptRepo:
    return binary_repo(f"lava-{SUITE}", SUITE)


def _versions(repo: AptRepo) -> dict[str, str]:
    out = repo.run("apt-cache", "show", "--no-all-versions", *PYTHON_PACKAGES, SERVER_PACKAGE)
    versions: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            versions[name] = line.split(": ", 1)[1]
    missing = [p for p in (*PYTHON_PACKAGES, SERVER_PACKAGE) if p not in versions]
    if missing:
        raise EnvironmentProblem(f"Debian {SUITE} has no {', '.join(missing)}")
    return versions


def ensure_lava_packages(say: Callable[[str], None] | None = None) -> LavaPackages:
    """LAVA's packages unpacked under the cache (fetched the first time; offline afterwards)."""
    root = cache_root() / "lava"
    resolution = root / "resolution.json"
    with locked(root / "lock"):
        versions: dict[str, str] | None = None
        if resolution.is_file():
            versions = json.loads(resolution.read_text())
        if versions is None or not _tree(root, versions).is_dir():
            if say is not None:
                say(f"lava: fetching Debian {SUITE}'s LAVA packages")
            repo = _repo()
            repo.update()
            versions = _versions(repo)
            _fetch_and_unpack(repo, root, versions)
            write_atomic(resolution, json.dumps(versions, indent=2) + "\n")
    tree = _tree(root, versions)
    return LavaPackages(
        python=tree / "usr" / "lib" / "python3" / "dist-packages",
        device_types=tree / DEVICE_TYPES,
        lava_run=tree / "usr" / "bin" / "lava-run",
        versions=versions,
    )


def _tree(root: Path, versions: dict[str, str]) -> Path:
    return root / f"tree-{versions['lava-common']}"


def _fetch_and_unpack(repo: AptRepo, root: Path, versions: dict[str, str]) -> None:
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    names = {p: debs / f"{p}_{v.replace(':', '%3a')}_all.deb" for p, v in versions.items()}
    missing = [p for p, deb in names.items() if not deb.is_file()]
    if missing:
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            repo.run("apt-get", "download", *(f"{p}={versions[p]}" for p in missing),
                     cwd=Path(tmp))  # fmt: skip
            for p in missing:
                found = list(Path(tmp).glob(f"{p}_*.deb"))
                if len(found) != 1:
                    raise EnvironmentProblem(f"apt-get download {p}={versions[p]}: no .deb")
                found[0].rename(names[p])
    tree = _tree(root, versions)
    staging = tree.with_name(tree.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    unpack([names[p] for p in PYTHON_PACKAGES], staging / "python")
    unpack([names[SERVER_PACKAGE]], staging / "server", (f"./{DEVICE_TYPES}",))
    # One tree, renamed into place whole: the server's templates beside the Python packages.
    (staging / "python" / DEVICE_TYPES).parent.mkdir(parents=True, exist_ok=True)
    (staging / "server" / DEVICE_TYPES).rename(staging / "python" / DEVICE_TYPES)
    (staging / "python").rename(tree)
    shutil.rmtree(staging, ignore_errors=True)
