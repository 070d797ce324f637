"""`dmalab up` as a user runs it: boots, says it is ready, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmalab.cli.up import READY_LINE
from procs import qemu_pids

DMALAB = [sys.executable, "-m", "dmalab"]


def _start(run_base: Path, *args: str, topology: str = "default") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*DMALAB, "up", topology, "--accel", "tcg", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(run_base), "TMPDIR": str(run_base)},
    )


def _wait_ready(proc: subprocess.Popen[str], stream: str) -> list[str]:
    lines = []
    deadline = time.monotonic() + 240
    pipe = proc.stderr if stream == "stderr" else proc.stdout
    assert pipe is not None
    while time.monotonic() < deadline:
        line = pipe.readline()
        assert line, f"dmalab up ended early: {lines}"
        lines.append(line)
        if READY_LINE in line:
            return lines
    raise AssertionError(f"not ready: {lines}")


def _descendants(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def test_up_ctrl_c(run_base: Path) -> None:
    proc = _start(run_base)
    try:
        lines = _wait_ready(proc, "stdout")
        qemu = _descendants(proc.pid)
        assert len(qemu) == 1
        (run_dir,) = run_base.iterdir()
        assert {"qmp.sock", "console.sock", "agent.sock", "console.log"} <= {
            p.name for p in run_dir.iterdir()
        }
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        out = "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "dma0" in out and "/machine/peripheral/dma1" in out and "qmp.sock" in out
    assert "stopped" in err
    for pid in qemu:
        assert not Path(f"/proc/{pid}").exists()
    assert qemu_pids() == set()
    assert list(run_base.iterdir()) == []


@pytest.mark.parametrize("topology", ["default", "arm64-smmuv3"])
def test_up_json_then_attach_agent(run_base: Path, topology: str) -> None:
    proc = _start(run_base, "--json", topology=topology)
    try:
        _wait_ready(proc, "stderr")
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert [d["id"] for d in info["devices"]] == ["dma0", "dma1", "dma2"]
        assert info["accel"] == "tcg"
        assert info["devices"][0]["qom_path"] == "/machine/peripheral/dma0"
        assert Path(info["qmp"]).is_socket() and Path(info["agent"]).is_socket()
        shell = subprocess.run(
            [*DMALAB, "shell", "--attach", info["run_dir"], "--agent"],
            input="devices\nbuf-create NCDMA 4096 dma2\nread 1 0 16\nnope\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        assert "dma1: /dev/ncdma1" in shell.stdout and "(DMA)" in shell.stdout
        assert "buffer 1: 4096 bytes" in shell.stdout
        assert "00000000  " in shell.stdout
        assert "error: unknown op 'nope'" in shell.stdout
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert list(run_base.iterdir()) == []


def test_up_on_your_own_kernel(run_base: Path, own_kernel: list[str], tmp_path: Path) -> None:
    """--kernel/--modules: the machine boots the image built around that kernel (the one
    `dmalab build image` with the same options names); --output gets the endpoints."""
    built = subprocess.run(
        [*DMALAB, "build", "image", *own_kernel], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr
    image_dir = Path(built.stdout.split()[-1]).parent
    endpoints = tmp_path / "up.json"
    proc = _start(run_base, *own_kernel, "--json", "--output", str(endpoints))
    try:
        _wait_ready(proc, "stderr")
        info = json.loads(endpoints.read_text())
        argv = json.loads((Path(info["run_dir"]) / "argv.json").read_text())
        flat = argv if isinstance(argv, list) else argv["argv"]
        kernel = Path(flat[flat.index("-kernel") + 1])
        assert kernel.parent == image_dir
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == ""  # the endpoints went to the file
    assert list(run_base.iterdir()) == []


def test_shell_boots_your_own_kernel(run_base: Path, own_kernel: list[str]) -> None:
    shell = subprocess.run(
        [*DMALAB, "shell", "default", "--accel", "tcg", "--agent", *own_kernel],
        input="devices\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert "dma2: /dev/ncdma2" in shell.stdout
    assert list(run_base.iterdir()) == []


def test_kernel_options_are_checked_before_anything_boots(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"not a kernel")
    for args, message in (
        (["shell", "--attach", str(tmp_path), "--kernel", str(kernel)],
         "--kernel/--modules: only when booting a TOPOLOGY, not with --attach"),
        (["up", "default", "--modules", str(tmp_path)], "--modules: give --kernel too"),
        (["up", "default", "--kernel", str(tmp_path / "nothing")],
         "up: --kernel: " + str(tmp_path / "nothing") + ": no such file"),
        (["up", "no-such-topology", "--kernel", str(kernel)], "no-such-topology"),
    ):  # fmt: skip
        proc = subprocess.run([*DMALAB, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"dmalab: error: {message}") and proc.stderr.count("\n") == 1
