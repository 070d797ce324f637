"""The topology check's limits are QEMU's: at the root bus's slot limit a checked topology's
devices realize, one device past it QEMU refuses them as the check does; the longest id and
every character the id rule allows realize too (the rule is stricter than QEMU's where run
directories and results need it, never looser)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from dmalab.errors import BadInput
from dmalab.machine import topology as t
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import load_topology

BOOT = Boot(Path("KERNEL"), Path("INITRD"), "CMDLINE")


def _realizes(base: list[str], topo: t.Topology) -> tuple[bool, str]:
    """Whether QEMU creates the topology's machine and devices (then quits, booting nothing)."""
    argv = qemu_argv(topo, BOOT, accel="tcg")
    keep = []
    for flag, value in itertools.pairwise(argv):
        if flag in ("-machine", "-cpu") or (flag == "-device" and "chardev=" not in value):
            keep += [flag, value.replace(",memory-backend=ram", "")]
    proc = subprocess.run(
        [*base, *keep, "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-monitor", "stdio"],
        input="quit\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc.returncode == 0, proc.stderr.strip()


def _topology(tmp_path: Path, arch: str, devices: int, **device: str) -> Path:
    extra = "".join(f'{k} = "{v}"\n' for k, v in device.items())
    path = tmp_path / f"{arch}-{devices}.toml"
    path.write_text(
        f'[machine]\narch = "{arch}"\n'
        + "".join(
            f'[[device]]\nid = "d{i}"\ncache-size = 4096\ncache-ways = 1\n{extra}'
            for i in range(devices)
        )
    )
    return path


@pytest.mark.parametrize("arch", t.ARCHES)
@pytest.mark.parametrize("bus", [t.OWN_ROOT_PORT, t.ROOT_COMPLEX])
def test_the_root_bus_slot_limit_is_qemus(
    arch: str,
    bus: str,
    tmp_path: Path,
    qemu_argv: list[str],
    qemu_argv_aarch64: list[str],
) -> None:
    base = qemu_argv if arch == "x86_64" else qemu_argv_aarch64
    free = t.ROOT_SLOTS[arch] - 1  # dmalab's virtio-serial takes one
    at = load_topology(_topology(tmp_path, arch, free, bus=bus))
    ok, err = _realizes(base, at)
    assert ok, err
    with pytest.raises(BadInput, match=rf"device\[{free}\]\.bus: no slot left"):
        load_topology(_topology(tmp_path, arch, free + 1, bus=bus))
    past = t.Topology(
        name="past",
        path=Path("<past>"),
        machine=t.MachineSpec(arch=arch),
        devices=(*at.devices, t.NcdmaSpec(id="past", bus=bus, cache_size=4096, cache_ways=1)),
    )
    ok, err = _realizes(base, past)
    assert not ok and "no slot/function available" in err, err


def test_every_id_the_rule_allows_realizes(tmp_path: Path, qemu_argv: list[str]) -> None:
    path = tmp_path / "ids.toml"
    ids = ["a" * 31, "Z-9_a", "b-", "c_"]
    path.write_text("".join(f'[[device]]\nid = "{i}"\nbus = "root"\n' for i in ids))
    ok, err = _realizes(qemu_argv, load_topology(path))
    assert ok, err
