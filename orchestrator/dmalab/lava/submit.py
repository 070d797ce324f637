"""Generated jobs handed to `lavacli jobs submit`: lavacli keeps the lab's URL and token (its
identities), so dmalab never handles them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dmalab.errors import EnvironmentProblem


def lavacli(identity: str | None) -> list[str]:
    """The lavacli command line, checked to be installed and to have an identity."""
    binary = shutil.which("lavacli")
    if binary is None:
        raise EnvironmentProblem(
            "--submit: lavacli is not installed (apt-get install lavacli, or pip install lavacli)"
        )
    argv = [binary, *(["--identity", identity] if identity else [])]
    proc = subprocess.run([binary, "identities", "list"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    names = [line.strip("* -\t") for line in proc.stdout.splitlines()[1:] if line.strip()]
    want = identity or "default"  # lavacli's own default
    if proc.returncode != 0 or want not in names:
        raise EnvironmentProblem(f"--submit: lavacli has no identity {want!r}: lavacli "
                                 "identities add --uri https://LAB/RPC2 --username USER "
                                 f"--token TOKEN {want}")  # fmt: skip
    return argv


def submit(files: Sequence[Path], identity: str | None) -> list[str]:
    """Submit each job file; the job ids LAVA gave them, in order."""
    argv = lavacli(identity)
    ids = []
    for file in files:
        proc = subprocess.run([*argv, "jobs", "submit", str(file)], capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise EnvironmentProblem(f"--submit: lavacli jobs submit {file}: {detail}")
        ids += proc.stdout.split()
    return ids
