"""The pytest plugin, run as a user runs it: a real topology booted per test process, restored
before each test, a failing test's report carrying the machine's artifacts, and the summary
saying where they are (from the controller under pytest-xdist); settings from the ini file; and
a plugin load that imports nothing heavy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmalab.artifacts.cache import cache_root

pytest_plugins = ["pytester"]

TESTS = """
import os
import pytest

@pytest.mark.dmalab(topology="default")
def test_dirty(dmalab_machine):
    vm = dmalab_machine.vm
    buf = dmalab_machine.run(vm.agent.buf_create("NCDMA", 4096))
    dmalab_machine.run(vm.device("dma0").reset_stats())
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {vm.process.pid} {buf.id}\\n")

@pytest.mark.dmalab(topology="default")
def test_clean(dmalab_machine):
    vm = dmalab_machine.vm
    # restored to just after boot: the agent has no buffers, the counters are the boot's
    buf = dmalab_machine.run(vm.agent.buf_create("NCDMA", 4096))
    counters = dmalab_machine.run(vm.device("dma0").counters())
    assert buf.id == 1 and counters["iommu_map_events"] > 0
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {vm.process.pid} {buf.id}\\n")

@pytest.mark.asyncio
@pytest.mark.dmalab(topology="default")
async def test_async(dmalab_machine):
    hello = await dmalab_machine.arun(dmalab_machine.vm.agent.hello())
    assert hello.devices == 3

@pytest.mark.dmalab(topology="default")
def test_fails(dmalab_machine):
    counters = dmalab_machine.run(dmalab_machine.vm.device("dma1").counters())
    assert counters["desc_completed"] == 12345, "deliberately failing"
"""


@pytest.fixture(scope="session")
def real_cache(qemu_build: object, guest_image: object) -> Path:
    """The build cache the session's QEMU and image live in, found before pytester moves HOME."""
    return cache_root()


@pytest.fixture
def env(
    real_cache: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Path]:
    """The test file, the real build cache (pytester changes HOME), and a private runtime dir."""
    pytester.makepyfile(test_machine=TESTS)
    monkeypatch.setenv("DMALAB_CACHE", str(real_cache))
    runtime = Path(tempfile.mkdtemp(prefix="dmalab-t-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TMPDIR", str(runtime))
    monkeypatch.setenv("PIDS", str(tmp_path / "pids"))
    yield runtime
    shutil.rmtree(runtime, ignore_errors=True)


def _pids(tmp_path: Path) -> list[tuple[str, int, int]]:
    rows = (tmp_path / "pids").read_text().split("\n")
    return [(w, int(p), int(b)) for w, p, b in (r.split() for r in rows if r)]


def test_plugin_serial(pytester: pytest.Pytester, env: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--dmalab-accel", "tcg", f"--dmalab-artifacts={artifacts}",
        f"--junitxml={tmp_path / 'junit.xml'}", "-k", "not async",
        timeout=600,
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "deliberately failing" in out
    assert "dmalab default: console tail" in out and "DMALAB-READY" in out
    assert "dmalab default: ncdma counters and violations" in out
    assert len({pid for _, pid, _ in _pids(tmp_path)}) == 1  # one boot for the session
    assert [b for *_, b in _pids(tmp_path)] == [1, 1]  # the second test started clean
    (kept,) = (p for p in artifacts.iterdir() if "test_fails" in p.name)
    assert {"console.log", "qemu.log", "qmp-events.jsonl", "ncdma-dma1.json"} <= {
        p.name for p in kept.iterdir()
    }
    dump = json.loads((kept / "ncdma-dma1.json").read_text())
    assert dump["counters"]["iommu_map_events"] > 0 and "violations" in dump
    props = ET.parse(tmp_path / "junit.xml").findall(".//testcase[@name='test_fails']//property")
    assert [(p.get("name"), p.get("value")) for p in props] == [("dmalab_artifacts", str(kept))]
    assert list(env.iterdir()) == []  # no run directory, socket or temp dir left


ARM64_TESTS = """
import pytest

@pytest.mark.dmalab(topology="arm64-smmuv3")
def test_dirty(dmalab_machine):
    vm = dmalab_machine.vm
    assert vm.topology.arch == "aarch64" and vm.accel == "tcg"
    assert dmalab_machine.run(vm.agent.buf_create("NCDMA", 4096)).id == 1

@pytest.mark.dmalab(topology="arm64-smmuv3")
def test_clean(dmalab_machine):
    vm = dmalab_machine.vm
    # restored to just after boot: the buffer of the test before is gone
    assert dmalab_machine.run(vm.agent.buf_create("NCDMA", 4096)).id == 1
    hello = dmalab_machine.run(vm.agent.hello())
    assert hello.devices == 3 and hello.kernel_release.endswith("-arm64")
"""


def test_plugin_on_arm64(pytester: pytest.Pytester, env: Path, images: object) -> None:
    images("aarch64")  # type: ignore[operator]  # built before pytester moves HOME
    pytester.makepyfile(test_arm64=ARM64_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "test_arm64.py", "--dmalab-accel", "auto", timeout=600
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    assert list(env.iterdir()) == []


def test_plugin_xdist(pytester: pytest.Pytester, env: Path, tmp_path: Path) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "each", "--dmalab-accel", "tcg",
        "-k", "not fails", timeout=600,
    )  # fmt: skip
    result.assert_outcomes(passed=6)  # each worker runs every test
    rows = _pids(tmp_path)
    workers = {w for w, _, _ in rows}
    pids = {p for _, p, _ in rows}
    assert workers == {"gw0", "gw1"} and len(pids) == 2  # one machine per worker, none shared
    assert all(b == 1 for *_, b in rows)
    assert list(env.iterdir()) == []  # the default artifacts dir went away: nothing failed


def test_plugin_default_artifacts_kept_on_failure(pytester: pytest.Pytester, env: Path) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--dmalab-accel", "tcg", "-k", "fails", timeout=600
    )
    result.assert_outcomes(failed=1)
    (kept,) = env.iterdir()
    assert kept.name.startswith("dmalab-pytest-")
    assert f"dmalab: artifacts of failed tests in {kept}" in result.stdout.str()
    (test_dir,) = (p for p in kept.iterdir() if p.name != "machines")
    assert (test_dir / "ncdma-dma0.json").exists()


def test_plugin_xdist_summary_and_ini_settings(
    pytester: pytest.Pytester, env: Path, tmp_path: Path
) -> None:
    """Under xdist the worker that ran the failing test keeps the artifacts and the controller
    prints where; the accelerator and the directory come from the ini file."""
    pytester.makeini("[pytest]\ndmalab_accel = tcg\ndmalab_artifacts = kept-here\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "-k", "fails or clean", timeout=600
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    kept = pytester.path / "kept-here"
    assert f"dmalab: artifacts of failed tests in {kept}" in result.stdout.str()
    (test_dir,) = (p for p in kept.iterdir() if "test_fails" in p.name)
    assert (test_dir / "ncdma-dma1.json").exists()
    assert list(env.iterdir()) == []


MISUSED = """
import pytest

@pytest.mark.topology("default")
def test_old_marker(dmalab_machine):
    pass

@pytest.mark.dmalab("default")
def test_positional(dmalab_machine):
    pass
"""


def test_marker_misuse_and_bad_ini_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_misused=MISUSED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "@pytest.mark.topology(X) is now @pytest.mark.dmalab(topology=X)" in out
    assert "@pytest.mark.dmalab takes topology=NAME_OR_PATH and nothing else" in out
    pytester.makeini("[pytest]\ndmalab_accel = fast\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "dmalab_accel = fast: expected one of auto, tcg, kvm" in result.stderr.str()


def test_loading_the_plugin_imports_no_machinery() -> None:
    code = (
        "import sys, dmalab.pytest_plugin; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dmalab', 'qemu', 'construct'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dmalab", "dmalab.pytest_plugin"]
