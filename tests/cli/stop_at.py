"""`python stop_at.py STAGE DMALAB-ARGS...`: dmalab, stopped for good at STAGE, which it
announces on stderr (`stop_at: STAGE`), so that a test signals it exactly there.

Stages: `boot` (QEMU runs, the guest is booting), `scenario` (inside the second variant, after
its start), `report` (results.json is written to its temporary name, not yet renamed into
place). Nothing of dmalab changes but the pause.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dmalab.cli import main
from dmalab.machine.vm import Vm
from dmalab.scenarios.api import Run

ANNOUNCE = "stop_at: "


def announce(stage: str) -> None:
    print(f"{ANNOUNCE}{stage}", file=sys.stderr, flush=True)


def install(stage: str) -> None:
    if stage == "boot":

        async def wait_ready(self: Vm, timeout: float | None = None) -> float:
            announce(stage)
            await asyncio.Event().wait()
            raise AssertionError("not reached")

        Vm.wait_ready = wait_ready  # type: ignore[method-assign]
    elif stage == "scenario":
        start = Run.start
        started = [0]

        async def second_start(self: Run) -> None:
            await start(self)
            started[0] += 1
            if started[0] == 2:
                announce(stage)
                await asyncio.Event().wait()

        Run.start = second_start  # type: ignore[method-assign]
    elif stage == "report":
        replace = os.replace

        def replace_pausing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if Path(dst).name == "results.json":
                announce(stage)
                while True:
                    signal.pause()
            replace(src, dst, *args, **kwargs)

        os.replace = replace_pausing
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    main(sys.argv[2:], prog_name="dmalab")
