"""`dmalab bench cache-model`: the two layouts, the report's ratios and targets, the table."""

from __future__ import annotations

import dataclasses

from click.testing import CliRunner

from dmalab.bench import cache_model as bench
from dmalab.cli import main


def test_the_model_is_the_only_difference_between_the_layouts() -> None:
    t = bench.topologies()
    on, off = t["on"], t["off"]
    assert on.machine.coherency == "noncoherent" and off.machine.coherency == "coherent"
    assert all(d.coherent for d in on.devices) and off.devices == on.devices
    assert off.name != on.name  # run directories and sockets apart
    same = dataclasses.replace(off, name=on.name, machine=on.machine)
    assert same == on


def _samples(scale: float) -> dict[str, list[float]]:
    return {"boot": [1500 * scale, 1400 * scale, 1600 * scale], "suite": [4.0 * scale],
            "restores": [1.0 * scale], "dma": [2000 / scale], "cpu": [100.0, 101.0]}  # fmt: skip


def test_ratios_of_medians_and_targets() -> None:
    report = bench.build_report({"on": _samples(1.2), "off": _samples(1.0)}, {"on": {"pass": 16}})
    r = report["results"]
    assert r["on"]["boot"]["median"] == 1800.0 and r["off"]["boot"]["median"] == 1500.0
    assert r["on_vs_off"]["boot"] == 1.2 and r["on_vs_off"]["cpu"] == 1.0
    assert {t["name"]: t["pass"] for t in report["targets"]} == {
        "boot_on_vs_off": True, "suite_on_vs_off": True, "cpu_on_vs_off": True,
    }  # fmt: skip
    slow = bench.build_report({"on": _samples(1.4), "off": _samples(1.0)}, {})
    assert not slow["all_targets_pass"]
    table = bench.render_table(slow)
    assert "| boot to agent-ready (ms) | 2100 [1960-2240] | 1500 [1400-1600] | 1.400 |" in table
    assert "target suite_on_vs_off <= 1.3: 1.4 MISSED" in table


def test_the_command_is_registered() -> None:
    result = CliRunner().invoke(main, ["bench", "cache-model", "--help"])
    assert result.exit_code == 0 and "--rounds" in result.output and "--check" in result.output
