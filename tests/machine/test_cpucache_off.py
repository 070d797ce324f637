"""With the CPU cache model off, arm64 virt is QEMU's stock machine: the same device tree but
for the PCIe host bridge's coherency, and no model object.

Both command lines are built by `qemu_argv` from arm64-noncoherent as shipped and from the same
topology with `coherency = "coherent"`, so `x-noncoherent=on` is their only difference. QEMU
writes the device tree it would give the guest (`dumpdtb=`) and exits; `-seed` fixes the
/chosen random seeds, which would differ otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest
from qemu.qmp import ConnectError, QMPClient
from qemu.qmp.qmp_client import ExecuteError

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.machine.cpucache import PATH
from dmalab.machine.qemu_argv import CONSOLE_CHARDEV, Boot, qemu_argv
from dmalab.machine.topology import Topology, load_topology
from fdt import parse

PCIE_HOST = b"pci-host-ecam-generic\0"


def _topology(model: bool) -> Topology:
    on = load_topology("arm64-noncoherent")
    if model:
        return on
    return dataclasses.replace(on, machine=dataclasses.replace(on.machine, coherency="coherent"))


def _argv(qemu: QemuBuild, image: ImageBuild, model: bool, *extra_machine: str) -> list[str]:
    topology = _topology(model)
    boot = Boot(image.kernel, image.initramfs, image.cmdline_for(topology.iommu_kind))
    argv = qemu_argv(topology, boot, accel="tcg", agent=False)
    words = argv.index("-machine") + 1
    assert ("x-noncoherent=on" in argv[words].split(",")) == model
    argv[words] = ",".join([argv[words], *extra_machine])
    return [*qemu.base_argv("aarch64"), *argv, "-chardev", f"null,id={CONSOLE_CHARDEV}",
            "-seed", "1"]  # fmt: skip


async def _dtb(argv: list[str], out: Path) -> dict[str, dict[str, bytes]]:
    proc = await asyncio.create_subprocess_exec(
        *argv[:1], *argv[1:], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.is_file(), output.decode(errors="replace")
    return parse(out.read_bytes())


@pytest.mark.asyncio
async def test_the_model_changes_only_the_pcie_bridges_coherency(
    qemu_build: QemuBuild, images, tmp_path: Path
) -> None:
    image = images("aarch64")
    trees = {}
    for model in (False, True):
        out = tmp_path / f"model-{model}.dtb"
        trees[model] = await _dtb(_argv(qemu_build, image, model, f"dumpdtb={out}"), out)
    off, on = trees[False], trees[True]
    assert off.keys() == on.keys()
    (bridge,) = [p for p, props in off.items() if props.get("compatible") == PCIE_HOST]
    assert "dma-coherent" in off[bridge] and "dma-noncoherent" not in off[bridge]
    assert "dma-noncoherent" in on[bridge] and "dma-coherent" not in on[bridge]
    assert "dma-coherent" in off["/"] and on["/"] == off["/"]  # the root stays coherent
    changed = {p for p in off if off[p] != on[p]}
    assert changed == {bridge}, changed
    rest = {k: v for k, v in on[bridge].items() if k != "dma-noncoherent"}
    assert rest == {k: v for k, v in off[bridge].items() if k != "dma-coherent"}


async def _qom_list(argv: list[str], sock: Path) -> list[str] | ExecuteError:
    """`qom-list` of the model's path on a machine created but never run (-S)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, "-S", "-qmp", f"unix:{sock},server=on,wait=on",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    qmp = QMPClient("cpucache-off")
    try:
        for _ in range(600):
            with contextlib.suppress(ConnectError):  # until QEMU listens
                await qmp.connect(str(sock))
                break
            await asyncio.sleep(0.05)
        try:
            return [p["name"] for p in await qmp.execute("qom-list", {"path": PATH})]
        except ExecuteError as exc:
            return exc
        finally:
            await qmp.disconnect()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@pytest.mark.asyncio
async def test_without_the_model_there_is_no_model_object(
    qemu_build: QemuBuild, images, tmp_path: Path
) -> None:
    image = images("aarch64")
    off = await _qom_list(_argv(qemu_build, image, False), tmp_path / "off.sock")
    assert isinstance(off, ExecuteError), off
    on = await _qom_list(_argv(qemu_build, image, True), tmp_path / "on.sock")
    assert isinstance(on, list) and {"counters", "log"} <= set(on), on
