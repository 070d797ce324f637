"""The scenario API and the ownership ledger, without a guest."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from dmalab.scenarios.codec import COOKIE_DRIVER, describe_cookie, step_cookie
from dmalab.scenarios.ownership import Ledger
from dmalab.scenarios.report import render_table, write_json, write_junit
from dmalab.scenarios.results import Finding, Result, StepRecord, as_json, outcome

PAGE = 4096


def test_step_cookies_name_the_step() -> None:
    assert describe_cookie(step_cookie(12, 3))[:2] == ("step", 12)
    kind, step, text = describe_cookie(COOKIE_DRIVER | 2 << 32 | 7)
    assert (kind, step) == ("driver", None) and "UNMAP" in text and "handle 7" in text
    assert describe_cookie(0x1234)[0] == "other"
    assert not step_cookie(1) & COOKIE_DRIVER


def test_outcome() -> None:
    f4, f11 = Finding(4, "OWNERSHIP", "x"), Finding(11, "BYTES", "y")
    assert outcome("pass", (), []) == "pass"
    assert outcome("pass", (), [f4]) == "FAIL"
    assert outcome("detected", (4, 11), [f4, f11]) == "detected"
    assert outcome("detected", (4, 11), [f4]) == "FAIL"  # step 11 not named
    assert outcome("detected", (4,), []) == "FAIL"


def test_ledger_flags_cpu_access_while_a_device_owns_with_byte_evidence() -> None:
    led = Ledger()
    led.add_buffer("b", 2 * PAGE)
    zero = bytes(2 * PAGE)
    assert led.cpu_access(1, "b", "driver A", zero, zero) is None
    assert led.owners("b") == ["CPU"]
    led.map(3, "b", "device A", zero)
    assert led.owners("b") == ["device A"]
    after = b"\x55" * 0x40 + bytes(2 * PAGE - 0x40)
    flag = led.cpu_access(4, "b", "driver B", zero, after)
    assert flag is not None and flag.step == 4
    assert flag.what == "driver B CPU read/write while device A owns the buffer"
    assert "64 bytes changed at offset 0x0 under device A (mapped at step 3)" in flag.evidence[0]
    led.dma(5, "b", "device A", reads=[(0, PAGE)], writes={PAGE: b"\x11" * 16})
    assert "device A read 64 of them (offset 0x0) at step 5" in flag.evidence
    led.unmap(9, "b", "device A", after)
    assert led.owners("b") == ["CPU"]
    assert [s for s, _, _ in led.snapshots("b")] == [3, 9]
    assert led.model("b")[PAGE : PAGE + 16] == b"\x11" * 16


def test_ledger_cpu_read_differs_from_what_the_device_wrote() -> None:
    led = Ledger()
    led.add_buffer("b", PAGE)
    led.map(6, "b", "device B")
    led.dma(10, "b", "device B", writes={0: b"\xab" * 32})
    flag = led.cpu_access(11, "b", "driver A", bytes(PAGE), bytes(PAGE), read=(0, bytes(32)))
    assert flag is not None
    assert any(
        "read 32 bytes at offset 0x0 that differ" in e and "device B wrote them at step 10" in e
        for e in flag.evidence
    )


def test_ledger_flags_two_owners_writing_the_same_bytes_not_reading() -> None:
    led = Ledger()
    led.add_buffer("b", 4 * PAGE)
    led.map(3, "b", "device A")
    led.map(6, "b", "device B")
    assert led.dma(7, "b", "device A", reads=[(0, PAGE)], writes={PAGE: bytes(PAGE)}) is None
    assert led.dma(8, "b", "device B", reads=[(0, PAGE)], writes={2 * PAGE: bytes(PAGE)}) is None
    assert led.dma(8, "b", "device B", writes={3 * PAGE: b"\1" * PAGE}) is None
    flag = led.dma(9, "b", "device A", writes={3 * PAGE + 64: b"\2" * 64})
    assert flag is not None and flag.step == 9
    assert (
        "64 bytes at offset 0x3040 written by device B at step 8 and by device A at step 9"
        in flag.evidence
    )


def _result(variant: str, expect: str, outcome: str) -> Result:
    return Result(
        "000-arnd-table", "000", "default", variant, expect, outcome, [4, 11], [4, 11, 12],
        ["step 4 (x): y"], {"dma1": {"conflicting_writes": 64}},
        [StepRecord(1, "driver A", "CPU read/write", 1, {"b": ["CPU"]})],
        timing={"seconds": 0.1},
    )  # fmt: skip


def test_reports(tmp_path: Path) -> None:
    results = [
        _result("table", "detected", "detected"),
        _result("shared-read", "pass", "FAIL"),
        _result("shared", "pass", "unavailable"),
    ]
    table = render_table(results)
    assert "detected as expected" in table and "FAIL" in table and "conflict=64" in table
    write_json(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())["results"]
    assert data[0]["steps"][0]["owners"] == {"b": ["CPU"]}
    assert "timing" not in as_json(results, timing=False)[0]
    write_junit(results, tmp_path / "j.xml")
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
