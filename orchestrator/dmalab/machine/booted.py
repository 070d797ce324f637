"""A machine booted from a topology, with its just-booted state saved as a snapshot.

`BootedMachine(topology, **boot_options)` is an async context manager. Entering boots the
topology with `launch.boot` (ready means the agent answered), runs `setup` if given and saves
the snapshot `booted`; `fresh()` hands the machine out in that state, restored from the
snapshot when something used it since; leaving shuts QEMU down as `Vm` does (artifacts kept
after a failure). The scenario runner and the pytest plugin both keep their machines this way.

```python
async with BootedMachine("default", accel="tcg") as m:
    await m.fresh()          # as booted: nothing to restore yet
    ...                      # use m.vm
    await m.fresh()          # restored from the snapshot, agent answering
```
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

from dmalab.machine.launch import boot
from dmalab.machine.snapshot import Snapshots
from dmalab.machine.topology import Topology, load_topology
from dmalab.machine.vm import Vm

BOOTED = "booted"


class BootedMachine:
    """A booted topology and its post-boot snapshot. `boot_options` go to `launch.boot`
    (qemu, image, accel, artifacts_dir, name, boot_timeout, ...); `setup(vm)` runs before the
    snapshot is saved, so every restore comes back to the state it leaves."""

    def __init__(
        self,
        topology: Topology | str | Path,
        *,
        setup: Callable[[Vm], Awaitable[Any]] | None = None,
        **boot_options: Any,
    ) -> None:
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self._setup = setup
        self._boot_options = boot_options
        self._stack = contextlib.AsyncExitStack()
        self._vm: Vm | None = None
        self._snapshots: Snapshots | None = None
        self.boot_seconds = 0.0
        self.save_seconds = 0.0
        self._used = False  # handed out since the snapshot was saved or restored

    @property
    def vm(self) -> Vm:
        assert self._vm is not None, "the machine is not booted"
        return self._vm

    @property
    def snapshots(self) -> Snapshots:
        assert self._snapshots is not None, "the machine is not booted"
        return self._snapshots

    @property
    def healthy(self) -> bool:
        """Booted, QEMU still running and no guest failure seen."""
        vm = self._vm
        if vm is None or vm.process is None:
            return False
        return vm.failure is None and vm.process.returncode is None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def start(self) -> Self:
        """Boot, run `setup` and save the snapshot (what entering does; `close()` undoes it)."""
        start = time.perf_counter()
        try:
            self._vm = await self._stack.enter_async_context(
                boot(self.topology, **self._boot_options)
            )
            self.boot_seconds = time.perf_counter() - start
            if self._setup is not None:
                await self._setup(self._vm)
            self._snapshots = Snapshots(self._vm)
            self.save_seconds = await self._snapshots.save(BOOTED)
        except BaseException:
            # The Vm sees the failure, so it keeps its run directory as after any failure.
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    async def close(self) -> None:
        """Shut the machine down (a clean exit: its run directory is removed)."""
        await self._stack.aclose()

    async def fresh(self, *, timeout: float = 10.0) -> float:
        """The machine in its just-booted state, for one user: restored from the snapshot unless
        nothing used it since the save or the last restore. Seconds the restore took (0.0)."""
        seconds = 0.0
        if self._used:
            seconds = await self.snapshots.restore(BOOTED, timeout=timeout)
        self._used = True
        return seconds
