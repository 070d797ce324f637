"""Debian's packages for the guest: the newest kernel of a series (6.12 by default, from
bookworm-backports and bookworm-security; 6.1, bookworm's own) with its headers and kbuild, and
busybox-static, fetched with the private apt and unpacked into the cache, never installed on the
host.

Old point releases leave the archive when new ones land, so the version is resolved at build time
and recorded in the image's manifest. Debian names a 6.12 backport's ABI `6.12.117+deb12` and
its kbuild package after it (`linux-kbuild-6.12.117+deb12`); bookworm's 6.1 has ABIs such as
`6.1.0-57` and one `linux-kbuild-6.1` package whose version must be the kernel's.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from debian.deb822 import Deb822

from dmalab.artifacts.apt import AptRepo, binary_repo
from dmalab.artifacts.cache import write_atomic
from dmalab.errors import BadInput, EnvironmentProblem

SUITES = ("bookworm", "bookworm-backports", "bookworm-security")
#: Guest architecture (QEMU's name) -> Debian's architecture and kernel flavour.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
HOST_ARCH = "amd64"
#: The series `debian` means (the default image's kernel), and the series the archive holds.
DEFAULT_SERIES = "6.12"
SERIES = ("6.1", "6.12")
# Each role is one package; {abi} is the kernel's ABI name, e.g. 6.12.117+deb12, {flavour} the
# Debian architecture.
ROLES = {
    "image": "linux-image-{abi}-{flavour}-unsigned",
    "headers": "linux-headers-{abi}-{flavour}",
    "headers-common": "linux-headers-{abi}-common",
    "kbuild": "linux-kbuild-{abi}",
}
#: Roles that run on the build machine (kbuild's host tools), so they come in the host's
#: architecture whatever the guest's.
HOST_ROLES = ("kbuild",)
BUSYBOX = "busybox-static"


def abi_pattern(series: str) -> str:
    """A regular expression (POSIX ERE, which apt reads, and Python alike) for the ABI names of
    a kernel series: 6.12.117+deb12, 6.1.0-57."""
    return re.escape(series) + r"(\.[0-9]+\+deb[0-9]+|\.0-[0-9]+)"


def _patterns(flavour: str, series: str) -> tuple[str, ...]:
    abi = abi_pattern(series)
    return (
        f"^linux-image-{abi}-{flavour}-unsigned$",
        f"^linux-headers-{abi}-({flavour}|common)$",
        f"^linux-kbuild-{abi}$",
        f"^{BUSYBOX}$",
    )


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    size: int

    @property
    def deb_name(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}.deb"


@dataclass(frozen=True)
class Resolution:
    """The exact packages one build uses: roles of ROLES plus "busybox"."""

    abi: str  # 6.12.117+deb12
    packages: dict[str, Package]
    flavour: str = HOST_ARCH

    @property
    def release(self) -> str:
        """`uname -r` of the kernel: 6.12.117+deb12-amd64."""
        return f"{self.abi}-{self.flavour}"

    def to_json(self) -> dict[str, object]:
        return {
            "abi": self.abi,
            "flavour": self.flavour,
            "packages": {k: asdict(v) for k, v in self.packages.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Resolution:
        packages = data["packages"]
        assert isinstance(packages, dict)
        return cls(
            str(data["abi"]),
            {k: Package(**v) for k, v in packages.items()},
            str(data.get("flavour", HOST_ARCH)),
        )


def repo(arch: str = "x86_64") -> AptRepo:
    """The private apt for the guest's packages (`arch` is QEMU's name of the guest's)."""
    flavour = DEBIAN_ARCH[arch]
    if flavour == HOST_ARCH:
        return binary_repo("guest-bookworm", *SUITES)
    return binary_repo(f"guest-bookworm-{flavour}", *SUITES, arch=flavour)


def repo_for(arch: str, role: str) -> AptRepo:
    """Where the package of `role` comes from: kbuild's host tools from the host's archive."""
    return repo("x86_64") if role in HOST_ROLES else repo(arch)


def _abi_key(abi: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", abi))


def _stanzas(text: str) -> list[Deb822]:
    """The package stanzas of `apt-cache show` output."""
    return [s for s in Deb822.iter_paragraphs(text) if "Package" in s]


def _lists_fingerprint(apt: AptRepo) -> str:
    """Changes whenever `apt-get update` brought a different index."""
    lists = apt.root / "lists"
    items = sorted(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in lists.glob("*")
        if p.is_file()
    )
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def memo_file(cache: Path, series: str = DEFAULT_SERIES) -> Path:
    """Where the resolution of `series` is kept (the default series keeps its old name)."""
    return cache / ("resolution.json" if series == DEFAULT_SERIES else f"resolution-{series}.json")


def resolve(
    arch: str,
    cache: Path,
    on_query: Callable[[], None] = lambda: None,
    series: str = DEFAULT_SERIES,
) -> Resolution:
    """The newest kernel ABI of `series` with all its packages in the indexes, and
    busybox-static, for the guest architecture `arch`.

    The answer is cached against the index files, so a warm build does not run apt-cache."""
    if series not in SERIES:
        raise BadInput(f"Debian kernel series {series!r}: expected one of {', '.join(SERIES)}")
    flavour = DEBIAN_ARCH[arch]
    guest, host = repo(arch), repo("x86_64")
    apts = [guest] if guest == host else [guest, host]
    fingerprint = "".join(_lists_fingerprint(a) for a in apts)
    memo = memo_file(cache, series)
    if memo.is_file():
        saved = json.loads(memo.read_text())
        if saved.get("fingerprint") == fingerprint:
            return Resolution.from_json(saved["resolution"])
    on_query()
    found = {a.name: _index(a, _patterns(flavour, series)) for a in apts}
    abis = {
        m.group(1)
        for name in found[guest.name]
        if (m := re.fullmatch(rf"linux-image-({abi_pattern(series)})-{flavour}-unsigned", name))
    }
    shared_kbuild = _all_versions(repo_for(arch, "kbuild"), f"linux-kbuild-{series}")
    for abi in sorted(abis, key=_abi_key, reverse=True):
        packages = {}
        for role, pattern in ROLES.items():
            index = found[repo_for(arch, role).name]
            if (name := pattern.format(abi=abi, flavour=flavour)) in index:
                packages[role] = index[name]
        if "kbuild" not in packages and "image" in packages:
            # One kbuild package for the series: the version built with this kernel.
            version = packages["image"].version
            if version in shared_kbuild:
                packages["kbuild"] = shared_kbuild[version]
        if len(packages) == len(ROLES) and BUSYBOX in found[guest.name]:
            packages["busybox"] = found[guest.name][BUSYBOX]
            resolution = Resolution(abi, packages, flavour)
            cache.mkdir(parents=True, exist_ok=True)
            write_atomic(
                memo, json.dumps({"fingerprint": fingerprint, "resolution": resolution.to_json()})
            )
            return resolution
    raise EnvironmentProblem(
        f"no complete Debian {series} {flavour} kernel (image, headers, kbuild) or no {BUSYBOX} in "
        f"{', '.join(SUITES)}: check the apt sources in /etc/apt"
    )


def _index(apt: AptRepo, patterns: tuple[str, ...]) -> dict[str, Package]:
    text = apt.run("apt-cache", "show", "--no-all-versions", *patterns)
    return {
        s["Package"]: Package(s["Package"], s["Version"], s["SHA256"], int(s["Size"]))
        for s in _stanzas(text)
    }


def _all_versions(apt: AptRepo, name: str) -> dict[str, Package]:
    """Every version of package `name` in the index (none when it is not there)."""
    try:
        text = apt.run("apt-cache", "show", name)
    except EnvironmentProblem:
        return {}
    return {
        s["Version"]: Package(s["Package"], s["Version"], s["SHA256"], int(s["Size"]))
        for s in _stanzas(text)
        if s["Package"] == name
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(apt: AptRepo, packages: list[Package], debs: Path) -> dict[str, Path]:
    """The .deb of each package, downloaded into debs/ unless already there (checked against
    the index's sha256 once, when it arrives)."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (debs / p.deb_name).is_file()]
    if missing:
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            apt.run(
                "apt-get", "download", *(f"{p.name}={p.version}" for p in missing), cwd=Path(tmp)
            )
            for package in missing:
                found = list(Path(tmp).glob(f"{package.name}_*.deb"))
                if len(found) != 1 or _sha256(found[0]) != package.sha256:
                    raise EnvironmentProblem(
                        f"apt-get download {package.name}={package.version}: "
                        f"missing or its sha256 differs from the index"
                    )
                found[0].rename(debs / package.deb_name)
    return {p.name: debs / p.deb_name for p in packages}


def unpack(debs: list[Path], dest: Path, members: tuple[str, ...] = ()) -> Path:
    """Unpack the .debs' files (only members when given) into dest, once: a complete tree is
    renamed into place, so an interrupted unpack is never mistaken for a done one."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        # dpkg-deb | tar is much faster than dpkg-deb -x and lets us pick members.
        script = 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" "${@:3}"'
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", script, "unpack", str(deb), str(tmp), *members],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvironmentProblem(f"unpacking {deb.name} failed: {detail}")
    tmp.rename(dest)
    return dest


def prepare_headers(root: Path, release: str) -> Path:
    """The kbuild directory of unpacked headers, its Makefile pointed at the unpacked tree
    (Debian's names an absolute /usr/src path)."""
    headers = root / "usr" / "src" / f"linux-headers-{release}"
    makefile = headers / "Makefile"
    text = makefile.read_text()
    # Rewrite on every call: the cache may have moved since the last one.
    fixed = re.sub(r"^include \S*?/usr/src/", f"include {root}/usr/src/", text, flags=re.M)
    if fixed != text:
        write_atomic(makefile, fixed)
    return headers
