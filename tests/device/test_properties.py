"""The device's properties are defined once (spec.ncdma.PROPERTIES): `dmalab topology check` and
ncdma's realize accept exactly the same values, at, just past and far past every bound."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dmalab.errors import BadInput
from dmalab.machine.topology import load_topology
from dmalab.spec import ncdma as spec

UINT32_MAX = (1 << 32) - 1


def _cases() -> list[tuple[str, int]]:
    cases = []
    for p in spec.PROPERTIES:
        if p.boolean:
            continue
        values = {p.lo, p.hi, p.hi + 1, p.hi * 16, UINT32_MAX, p.default}
        if p.lo > 0:
            values.add(p.lo - 1)
        cases += [(p.name, v) for v in sorted(values)]
    return cases


def _checked(tmp_path: Path, name: str, value: int) -> bool:
    """Whether the topology check accepts the property at this value."""
    path = tmp_path / f"{name}-{value}.toml"
    path.write_text(f'[[device]]\nid = "dma0"\nbus = "root"\n{name} = {value}\n')
    try:
        load_topology(path)
    except BadInput:
        return False
    return True


def _realized(qemu_argv: list[str], name: str, value: int) -> bool:
    """Whether QEMU realizes an ncdma with the property at this value (then quits)."""
    proc = subprocess.run(
        [*qemu_argv, "-machine", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults",
         "-device", f"ncdma,bus=pcie.0,{name}={value}", "-monitor", "stdio"],
        input="quit\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def test_the_table_matches_the_devices_own_defaults(qemu_argv: list[str]) -> None:
    out = subprocess.run(
        [*qemu_argv, "-device", "ncdma,help"], capture_output=True, text=True, timeout=60
    ).stdout
    lines = {line.split("=<")[0].strip(): line for line in out.splitlines() if "=<" in line}
    for p in spec.PROPERTIES:
        shown = ("on" if p.default else "off") if p.boolean else str(p.default)
        assert lines[p.name].endswith(f"(default: {shown})"), lines[p.name]


@pytest.mark.parametrize(("name", "value"), _cases())
def test_check_and_realize_agree(
    qemu_argv: list[str], tmp_path: Path, name: str, value: int
) -> None:
    p = spec.PROPERTY[name]
    checked = _checked(tmp_path, name, value)
    assert checked == _realized(qemu_argv, name, value), (name, value, checked)
    if not p.lo <= value <= p.hi:
        assert not checked
