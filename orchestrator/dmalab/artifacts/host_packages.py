"""Debian packages the builds need on the host (QEMU's build dependencies, the arm64 cross
compiler): asked of dpkg, installed with apt-get as root, or named in the error otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dmalab.errors import EnvironmentProblem


def missing_packages(names: Sequence[str]) -> list[str]:
    """The Debian packages among names that are not installed (asks dpkg, not apt)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        pkg
        for pkg, _, status in (line.partition("\t") for line in proc.stdout.splitlines())
        if status.startswith("ii")
    }
    return [name for name in names if name not in installed]


def install_packages(names: Sequence[str], purpose: str, log: Path) -> None:
    """apt-get install names (as root; otherwise say which command to run), output to log."""
    command = f"apt-get install --no-install-recommends {' '.join(names)}"
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"Debian packages needed for {purpose} are missing; as root run: {command}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *command.split()[2:]]):
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
            if proc.returncode != 0:
                raise EnvironmentProblem(
                    f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); full log: {log}"
                )


def ensure_packages(names: Sequence[str], purpose: str, log: Path) -> list[str]:
    """Install whichever of names is missing; returns what was installed."""
    missing = missing_packages(names)
    if missing:
        install_packages(missing, purpose, log)
    return missing
