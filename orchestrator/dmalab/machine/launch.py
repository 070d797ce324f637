"""A topology becomes a running machine: `boot(topology)`.

`boot` resolves everything a topology leaves open and hands the result to `Vm`:

- the guest image: the topology's own kernel and module tree (`[kernel]` kernel/modules), built
  into an image with `ensure_image(kernel=..., modules=...)`, else the default image;
- the accelerator: `resolve_accel(accel or topology.machine.accel)` ("auto" probes KVM once);
- the kernel command line: `image.cmdline_for(topology.iommu_kind, *topology.kernel.args)`;
- the command line: `qemu_argv(topology, Boot(...), accel=..., ram_fd=...)`.

```python
async with boot("default") as vm:
    print(vm.hello, await vm.device("dma0").counters())
```

`prepare` does the same without starting QEMU and returns the `Vm` to enter, for callers that
need the object before the boot finishes (to clean up after an interrupted boot, say).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dmalab.artifacts.image import ImageBuild, ensure_image
from dmalab.artifacts.qemu import QemuBuild, ensure_qemu
from dmalab.errors import BadInput
from dmalab.machine.accel import resolve_accel
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import Topology, load_topology
from dmalab.machine.vm import Vm

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def topology_image(topology: Topology, progress: Progress = _quiet) -> ImageBuild:
    """The guest image the topology asks for (its own kernel, or the default image)."""
    return ensure_image(
        progress,
        kernel=topology.kernel.kernel,
        modules=topology.kernel.modules,
        arch=topology.arch,
    )


async def prepare(
    topology: Topology | str | Path,
    *,
    qemu: QemuBuild | None = None,
    image: ImageBuild | None = None,
    accel: str | None = None,
    artifacts_dir: Path | None = None,
    progress: Progress = _quiet,
    **vm_options: Any,
) -> Vm:
    """The `Vm` for `topology` (a `Topology`, a shipped name or a .toml path), not yet started.

    `accel` overrides the topology's accelerator; `vm_options` go to `Vm` (boot_timeout,
    name, user_qmp, ...)."""
    topo = topology if isinstance(topology, Topology) else load_topology(topology)
    qemu = qemu or ensure_qemu()
    image = image or topology_image(topo, progress)
    if image.arch != topo.arch:
        raise BadInput(f"{topo.path}: machine.arch: {topo.arch}, but the image is {image.arch}'s")
    mode = accel or topo.machine.accel
    if mode == "auto":
        progress("checking whether KVM can run the guest (cached after the first time)")
    resolved = await resolve_accel(mode, qemu=qemu, image=image, arch=topo.arch)
    boot = Boot(
        image.kernel, image.initramfs, image.cmdline_for(topo.iommu_kind, *topo.kernel.args)
    )
    vm_options.setdefault("name", topo.name)
    return Vm(
        qemu.base_argv(topo.arch),
        lambda ram_fd: qemu_argv(topo, boot, accel=resolved, ram_fd=ram_fd),
        ram_mib=topo.machine.memory_mib,
        ncdma=[d.id for d in topo.devices],
        artifacts_dir=artifacts_dir,
        topology=topo,
        accel=resolved,
        **vm_options,
    )


@contextlib.asynccontextmanager
async def boot(
    topology: Topology | str | Path,
    *,
    qemu: QemuBuild | None = None,
    image: ImageBuild | None = None,
    accel: str | None = None,
    artifacts_dir: Path | None = None,
    progress: Progress = _quiet,
    **vm_options: Any,
) -> AsyncIterator[Vm]:
    """Boot `topology` and yield the ready `Vm`; on exit it shuts down as `Vm` does."""
    vm = await prepare(
        topology,
        qemu=qemu,
        image=image,
        accel=accel,
        artifacts_dir=artifacts_dir,
        progress=progress,
        **vm_options,
    )
    async with vm:
        yield vm
