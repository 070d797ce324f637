"""Boot once, then bring the machine back to a saved state for each test.

`Snapshots(vm)` saves and restores internal snapshots with the QMP jobs `snapshot-save` and
`snapshot-load`. Only the VM state is stored, in a scratch qcow2 image `vmstate.qcow2` in the run
directory, created on first use over QMP (`blockdev-create` of a file, then of a qcow2 on it, so
no `qemu-img` is needed) and attached as a block node of its own, not as a guest disk.

RAM is part of the VM state: with the shared memfd backend (`share=on`) the load writes the saved
pages back into the same memfd, so the host's mapping shows the restored memory at once. Device
state (the ncdma cache, counters, logs and IOMMU trackers, intel-iommu, virtio-serial) is
restored with it. The agent's connection is host-side and survives: after a restore the agent
answers on the same `AgentClient`.

Migration to a file does not fit here: QEMU only accepts `migrate-incoming` when it was started
with `-incoming`, so restoring that way needs a new QEMU process for every restore.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from dmalab.errors import CheckFailed
from dmalab.machine.process import QemuProcess
from dmalab.machine.vm import Vm

VMSTATE_NODE = "dmalab-vmstate"
VMSTATE_FILE = "vmstate.qcow2"


class SnapshotFailed(CheckFailed):
    """A snapshot job failed (the message carries QEMU's error)."""


class Snapshots:
    """Internal snapshots of one running `Vm` (or of a bare `QemuProcess`, which has no agent)."""

    def __init__(self, vm: Vm | QemuProcess, *, job_timeout: float = 60.0) -> None:
        self.vm = vm
        self.job_timeout = job_timeout
        self._ids = itertools.count(1)
        self._disk = False
        self.tags: list[str] = []

    async def _job(self, command: str, args: dict[str, Any]) -> None:
        job_id = f"dmalab-{command}-{next(self._ids)}"
        qmp = self.vm.qmp
        await qmp.execute(command, {"job-id": job_id, **args})
        async with asyncio.timeout(self.job_timeout):
            while True:
                jobs = {j["id"]: j for j in await qmp.execute("query-jobs")}
                job = jobs.get(job_id)
                if job is None:
                    return
                if job["status"] == "concluded":
                    await qmp.execute("job-dismiss", {"id": job_id})
                    if job.get("error"):
                        raise SnapshotFailed(f"{command} {args}: {job['error']}")
                    return
                await asyncio.sleep(0.002)

    async def _ensure_disk(self) -> None:
        if self._disk:
            return
        assert self.vm.run_dir is not None
        path = str(self.vm.run_dir / VMSTATE_FILE)
        qmp = self.vm.qmp
        await self._job(
            "blockdev-create", {"options": {"driver": "file", "filename": path, "size": 0}}
        )
        await qmp.execute(
            "blockdev-add",
            {"driver": "file", "node-name": f"{VMSTATE_NODE}-file", "filename": path},
        )
        await self._job(
            "blockdev-create",
            {"options": {"driver": "qcow2", "file": f"{VMSTATE_NODE}-file", "size": 1 << 20}},
        )
        await qmp.execute(
            "blockdev-add",
            {"driver": "qcow2", "node-name": VMSTATE_NODE, "file": f"{VMSTATE_NODE}-file"},
        )
        self._disk = True

    async def save(self, tag: str = "booted") -> float:
        """Save the running machine as `tag`; seconds taken. The guest runs on afterwards."""
        await self._ensure_disk()
        start = time.perf_counter()
        await self._job(
            "snapshot-save", {"tag": tag, "vmstate": VMSTATE_NODE, "devices": [VMSTATE_NODE]}
        )
        await self._resume()
        if tag not in self.tags:
            self.tags.append(tag)
        return time.perf_counter() - start

    async def load(self, tag: str = "booted") -> float:
        """Load `tag` and let the guest run; seconds taken (not waiting for the agent)."""
        if tag not in self.tags:
            raise SnapshotFailed(f"no snapshot {tag!r} (saved: {', '.join(self.tags) or 'none'})")
        start = time.perf_counter()
        await self._job(
            "snapshot-load", {"tag": tag, "vmstate": VMSTATE_NODE, "devices": [VMSTATE_NODE]}
        )
        await self._resume()
        return time.perf_counter() - start

    async def restore(self, tag: str = "booted", *, timeout: float = 10.0) -> float:
        """Load `tag` and wait until the agent answers again; seconds from the load's start."""
        start = time.perf_counter()
        await self.load(tag)
        if isinstance(self.vm, Vm) and self.vm.ready_by == "agent":
            await self.vm.guarded(self.vm.agent.echo(b"restored"), timeout)
        return time.perf_counter() - start

    async def _resume(self) -> None:
        status = await self.vm.qmp.execute("query-status")
        if not status["running"]:
            await self.vm.qmp.execute("cont")
