"""Stopping dmalab by signal, as a nightly job's timeout or a closed terminal does.

SIGINT and SIGTERM at the boot, inside a scenario and while results.json is written: the exit
code is 128 + the signal, one line says so, no QEMU is left and no run directory either; the same
when the reader of dmalab's output goes away (`dmalab run 2>&1 | head -1`: 141, quietly). The
same for `up` and `shell` during the boot (SIGTERM, SIGHUP), `bench device` and `fuzz` while
they measure (`fuzz --artifacts` keeps its run directory there and says so). SIGKILL in the
middle of a run: its QEMU dies with it, and the next run removes the run directory the kill
left. Each boot and run stage is reached exactly (tests/cli/stop_at.py pauses dmalab there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stop_at import ANNOUNCE

from dmalab.machine.process import OWNER_FILE
from procs import qemu_pids

STOP_AT = Path(__file__).with_name("stop_at.py")
RUN = ["run", "-t", "default", "-s", "002", "--accel", "tcg"]


def start(run_base: Path, stage: str | None, *args: str) -> subprocess.Popen[str]:
    """dmalab ARGS (paused at `stage`), its run and temporary directories in `run_base`."""
    head = [sys.executable, str(STOP_AT), stage] if stage else [sys.executable, "-m", "dmalab"]
    return subprocess.Popen(
        [*head, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(run_base), "TMPDIR": str(run_base)},
    )


def wait_for_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    """stderr up to the line holding `text` (a boot takes seconds, a busy machine minutes)."""
    assert proc.stderr is not None
    lines = []
    while line := proc.stderr.readline():
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"dmalab ended (status {proc.wait()}) before {text!r}: {lines}")


def finish(proc: subprocess.Popen[str], before: list[str]) -> str:
    try:
        _, rest = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "".join(before) + rest


def wait_gone(pids: set[int]) -> None:
    """Until none of `pids` runs (the kernel delivers a parent-death signal asynchronously)."""
    for _ in range(600):
        if not pids & qemu_pids():
            return
        time.sleep(0.05)


@pytest.mark.parametrize("stage", ["boot", "scenario", "report"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_run_cleanly(
    stage: str, sig: signal.Signals, run_base: Path, tmp_path: Path, qemu_build: object,
    guest_image: object,
) -> None:  # fmt: skip
    results = tmp_path / "results"
    proc = start(run_base, stage, *RUN, "--results", str(results))
    before = wait_for_line(proc, ANNOUNCE + stage)
    running = qemu_pids()
    assert len(running) == (0 if stage == "report" else 1)
    proc.send_signal(sig)
    err = finish(proc, before)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == f"dmalab: interrupted by {sig.name}"
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []
    assert list(results.iterdir()) == []  # results.json is whole or absent: here absent


@pytest.mark.parametrize(
    ("command", "sig"),
    [("up", signal.SIGHUP), ("up", signal.SIGTERM), ("shell", signal.SIGTERM),
     ("shell", signal.SIGHUP)],
)  # fmt: skip
def test_up_and_shell_stop_during_the_boot(
    command: str, sig: signal.Signals, run_base: Path, qemu_build: object, guest_image: object
) -> None:
    proc = start(run_base, "boot", command, "default", "--accel", "tcg")
    before = wait_for_line(proc, ANNOUNCE + "boot")
    proc.send_signal(sig)
    err = finish(proc, before)
    assert proc.returncode == 128 + sig, err
    assert err.splitlines()[-1] == f"dmalab: interrupted by {sig.name}"
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []


def test_a_closed_output_stops_a_run_cleanly(run_base: Path, qemu_build: object,
                                             guest_image: object) -> None:  # fmt: skip
    # `dmalab run 2>&1 | head -1`: the reader takes the first progress line and goes away.
    proc = start(run_base, None, *RUN)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stderr.readline()
    assert first.strip(), first
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 128 + signal.SIGPIPE
    wait_gone(qemu_pids())
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []


def test_sigterm_stops_bench_device_mid_measurement(run_base: Path, qemu_build: object) -> None:
    proc = start(run_base, None, "bench", "device", "--size", "4K,16M", "--batch-mib", "64",
                 "--repeats", "30")  # fmt: skip
    before = wait_for_line(proc, ", 4 KiB: ")  # the first configuration measures 16 MiB now
    assert qemu_pids()
    proc.send_signal(signal.SIGTERM)
    err = finish(proc, before)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == "dmalab: interrupted by SIGTERM"
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []


def test_sigterm_stops_fuzz_and_keeps_what_was_asked_for(
    run_base: Path, tmp_path: Path, qemu_build: object
) -> None:
    artifacts = tmp_path / "artifacts"
    proc = start(run_base, None, "fuzz", "--seed", "1", "--config", "cached",
                 "--ops", "10000000", "--artifacts", str(artifacts))  # fmt: skip
    before = wait_for_line(proc, " ops")
    proc.send_signal(signal.SIGTERM)
    err = finish(proc, before)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert f"run directory kept at {kept}" in err


def test_sigkill_takes_qemu_along_and_the_next_run_cleans_up(
    run_base: Path, qemu_build: object, guest_image: object
) -> None:
    proc = start(run_base, "scenario", *RUN)
    wait_for_line(proc, ANNOUNCE + "scenario")
    (qemu,) = qemu_pids()
    proc.kill()
    proc.communicate()
    wait_gone({qemu})
    assert qemu_pids() == set()
    (left,) = run_base.iterdir()  # no clean-up runs on SIGKILL: the run directory stays
    assert (left / OWNER_FILE).read_text().split()[0] == str(proc.pid)

    again = start(run_base, None, *RUN)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "verdict: PASS" in out
    assert list(run_base.iterdir()) == []
