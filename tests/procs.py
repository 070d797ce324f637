"""Which QEMU processes this test process started (directly or through a child)."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_pids() -> set[int]:
    """Live QEMU processes that are children of this test process (or of its children).

    The test session makes itself the subreaper of its descendants (tests/conftest.py), so a
    QEMU whose dmalab was killed still counts; one that has died and awaits reaping does not."""
    mine = {os.getpid()}
    found = set()
    changed = True
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            procs[int(entry)] = (int(ppid), comm, state)
    while changed:
        changed = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    for pid in mine:
        if pid in procs and procs[pid][1].startswith("qemu-system") and procs[pid][2] != "Z":
            found.add(pid)
    return found
