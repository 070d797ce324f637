"""The private apt configuration: a failed index refresh is never taken for a fresh one; where
the cache lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmalab.artifacts import apt
from dmalab.artifacts.cache import cache_root
from dmalab.errors import EnvironmentProblem


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> apt.AptRepo:
    monkeypatch.setenv("DMALAB_CACHE", str(tmp_path))
    return apt.AptRepo("test", ("deb [signed-by=/k] http://mirror.invalid/debian trixie main",))


def offline(self: apt.AptRepo, tool: str, *args: str, cwd: Path | None = None) -> str:
    raise EnvironmentProblem(f"{tool} {' '.join(args)} failed: W: Failed to fetch")


def test_offline_refresh_with_an_index_from_before_uses_it_and_retries_later(
    repo: apt.AptRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(apt.AptRepo, "run", lambda self, *a, **k: calls.append(a) or "")
    repo.update()
    assert calls == [("apt-get", "update", "--error-on=any")]
    (repo.root / "updated").touch()
    stamp = (repo.root / "updated").stat().st_mtime
    monkeypatch.setattr(apt.AptRepo, "run", offline)
    repo.update(max_age_s=0)  # stale: tries, fails, keeps the old index
    assert (repo.root / "updated").stat().st_mtime == stamp


def test_offline_refresh_with_no_index_is_an_error(
    repo: apt.AptRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apt.AptRepo, "run", offline)
    with pytest.raises(EnvironmentProblem, match="Failed to fetch"):
        repo.update()
    assert not (repo.root / "updated").exists()


def test_cache_root_follows_dmalab_cache_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DMALAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "dmalab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as XDG says
    assert cache_root() == tmp_path / "home" / ".cache" / "dmalab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "dmalab"
    monkeypatch.setenv("DMALAB_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine" and cache_root().is_dir()
