"""A private apt: its own sources list and state under the cache, so fetching QEMU's source from
trixie or a kernel from bookworm-backports never changes the host's apt configuration.

apt checks the signed Release files with Debian's archive keyring and the checksums of every file
it downloads; nothing here bypasses that.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

from dmalab.artifacts.cache import cache_root, locked, write_atomic
from dmalab.errors import EnvironmentProblem

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def _host_source_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every Debian entry the host's apt is configured with, both file formats."""
    files: list[Path] = []
    for place in APT_SOURCES:
        if place.is_dir():
            files += sorted(p for p in place.iterdir() if p.suffix in (".list", ".sources"))
        elif place.is_file():
            files.append(place)
    entries: list[tuple[str, list[str]]] = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for fields in Deb822.iter_paragraphs(text):  # field names are case-insensitive
                if fields.get("Enabled", "yes").strip() != "no":
                    for uri in fields.get("URIs", "").split():
                        entries.append((uri, fields.get("Suites", "").split()))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line).split()
                if len(words) >= 3 and words[0] in ("deb", "deb-src"):
                    entries.append((words[1], [words[2]]))
    return entries


def mirror(*, security: bool = False) -> str:
    """The Debian mirror this host already uses (override: $DMALAB_DEBIAN_MIRROR and
    $DMALAB_DEBIAN_SECURITY_MIRROR), so dmalab fetches from wherever the host's apt does."""
    override = os.environ.get(
        "DMALAB_DEBIAN_SECURITY_MIRROR" if security else "DMALAB_DEBIAN_MIRROR"
    )
    if override:
        return override
    for uri, suites in _host_source_entries():
        if any(s.endswith("-security") for s in suites) == security and "debian" in uri:
            return uri.rstrip("/")
    which = "security " if security else ""
    raise EnvironmentProblem(
        f"no Debian {which}mirror in /etc/apt/sources.list*: add one, or set "
        f"{'DMALAB_DEBIAN_SECURITY_MIRROR' if security else 'DMALAB_DEBIAN_MIRROR'}"
    )


@dataclass(frozen=True)
class AptRepo:
    """One private apt configuration, e.g. AptRepo("trixie-src", ["deb-src ... trixie main"])."""

    name: str
    lines: tuple[str, ...]
    #: Debian architecture of the packages (None: the host's). Set, it replaces the host's
    #: architecture for this configuration only: nothing enters the system's multiarch.
    arch: str | None = None

    @property
    def root(self) -> Path:
        return cache_root() / "apt" / self.name

    def _options(self) -> list[str]:
        root = self.root
        return [
            "-o",
            f"Dir::Etc::SourceList={root / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State::Lists={root / 'lists'}",
            "-o",
            f"Dir::Cache={root / 'cache'}",
            "-o",
            "APT::Sandbox::User=root",
            *(["-o", f"APT::Architecture={self.arch}", "-o", f"APT::Architectures={self.arch}"]
              if self.arch else []),
        ]  # fmt: skip

    def update(self, *, max_age_s: float = 6 * 3600) -> None:
        """Refresh the index unless it was refreshed within max_age_s."""
        if not KEYRING.exists():
            raise EnvironmentProblem(
                f"{KEYRING} is missing: apt-get install debian-archive-keyring"
            )
        root = self.root
        with locked(root / "lock"):
            (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
            (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            sources = "".join(f"{line}\n" for line in self.lines)
            listfile = root / "sources.list"
            stamp = root / "updated"
            fresh = (
                stamp.exists()
                and listfile.exists()
                and listfile.read_text() == sources
                and time.time() - stamp.stat().st_mtime < max_age_s
            )
            if fresh:
                return
            had_index = listfile.exists() and listfile.read_text() == sources
            write_atomic(listfile, sources)
            try:
                # Without --error-on=any a failed fetch is only a warning and exit status 0.
                self.run("apt-get", "update", "--error-on=any")
            except EnvironmentProblem:
                if not had_index:
                    raise
                # Offline with an index from before: use it, and try again next time.
                return
            stamp.touch()

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        """Run apt-get/apt-cache with this configuration; failures carry apt's own words."""
        cmd = [tool, *self._options(), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvironmentProblem(f"{tool} {' '.join(args)} failed: {detail}")
        return proc.stdout


def source_repo(suite: str) -> AptRepo:
    return AptRepo(f"{suite}-src", (f"deb-src [signed-by={KEYRING}] {mirror()} {suite} main",))


def binary_repo(name: str, *suites: str, arch: str | None = None) -> AptRepo:
    """Binary packages from the given suites ("*-security" comes from the security archive), of
    Debian architecture `arch` (None: the host's)."""
    lines = []
    for suite in suites:
        uri = mirror(security=suite.endswith("-security"))
        lines.append(f"deb [signed-by={KEYRING}] {uri} {suite} main")
    return AptRepo(name, tuple(lines), arch)
