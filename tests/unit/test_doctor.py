"""dmalab doctor: read-only checks, each failing one with its fix, exit 3 (an environment
problem, as the README's table says) when anything fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmalab import doctor
from dmalab.cli import main


def test_findings_name_what_is_missing_and_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMALAB_CACHE", str(tmp_path))  # an empty cache: nothing built
    monkeypatch.delenv("DMALAB_QEMU", raising=False)
    findings = {f.check: f for f in doctor.diagnose()}
    assert not findings["qemu"].ok and findings["qemu"].fix == (
        "dmalab build qemu (about 8 minutes the first time)"
    )
    assert not findings["guest image"].ok
    assert findings["guest image"].fix == "dmalab build image --arch x86_64"
    assert findings["python"].ok and findings["cache"].ok
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 3
    parsed = {f["check"]: f for f in json.loads(result.output)}
    assert parsed["qemu"]["ok"] is False


def test_missing_packages_are_listed_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor.qemu, "missing_packages", lambda names: ["flex", "bison"])
    finding = doctor._packages()
    assert not finding.ok
    assert finding.detail == "missing: flex bison"
    assert finding.fix.startswith("apt-get install flex bison")


def test_render_shows_fixes_under_failures() -> None:
    text = doctor.render(
        [doctor.Finding("a", True, "fine"), doctor.Finding("bb", False, "broken", "do this")]
    )
    assert text.splitlines() == ["[ok  ] a   fine", "[FAIL] bb  broken", "           fix: do this"]


def test_exit_0_when_everything_is_there(qemu_build: object, guest_image: object) -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout and "[ok  ] qemu" in result.stdout
