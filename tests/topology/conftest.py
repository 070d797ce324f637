"""Fixtures for booting the shipped topologies under TCG."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def run_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $XDG_RUNTIME_DIR and $TMPDIR, so a test sees every file a run leaves behind
    (short: unix socket paths have at most 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="dmalab-t-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    monkeypatch.setenv("TMPDIR", str(base))
    yield base
    shutil.rmtree(base, ignore_errors=True)
