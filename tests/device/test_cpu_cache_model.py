"""The CPU cache model's DC operations, one line at a time, by a bare-metal guest program.

guest-tests/cachetest/cachetest.S maps RAM cacheable and again Non-cacheable, stores through
one and reads through the other around DC CVAC, IVAC and CIVAC, and prints a verdict per check;
halfway it pauses for a byte on its serial port, where a snapshot is taken.
With the model (virt's x-noncoherent=on) every check holds and the model counts exactly the
lines the program made it move; without it (stock virt) both mappings are one memory, the
DC operations are NOPs, and there is no model object.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmalab.artifacts.guest_code import CROSS, ensure_compiler
from dmalab.machine.cpucache import PATH as MODEL
from dmalab.machine.process import QemuProcess
from dmalab.machine.snapshot import Snapshots

pytestmark = pytest.mark.asyncio(loop_scope="function")

SOURCE = Path(__file__).parents[2] / "guest-tests" / "cachetest" / "cachetest.S"
BUF = 0x40200000
LINE = 64
ALL_HOLD = [f"ok {n}" for n in range(1, 12)]
#: Stock virt: one memory behind both mappings, so what the model separates is the same.
STOCK = ["FAIL 1", "ok 2", "FAIL 3", "ok 4", "FAIL 5", "FAIL 6", "FAIL 7", "ok 8", "ok 9", "ok 10",
         "FAIL 11"]  # fmt: skip


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The program's ELF and the address of its `dc ivac` that loses a write."""
    ensure_compiler("aarch64")
    prefix = CROSS["aarch64"][1]
    out = tmp_path_factory.mktemp("cachetest") / "cachetest.elf"
    subprocess.run(
        [f"{prefix}gcc", "-nostdlib", "-static", "-Wl,-Ttext=0x40080000",
         "-Wl,--build-id=none", "-o", str(out), str(SOURCE)],
        check=True,
    )  # fmt: skip
    nm = subprocess.run([f"{prefix}nm", str(out)], check=True, capture_output=True, text=True)
    (lost,) = (
        int(w[0], 16) for w in map(str.split, nm.stdout.splitlines()) if w[-1] == "lost_ivac"
    )
    return out, lost


class Program:
    """The program running in one QEMU, its PL011 on a socket."""

    def __init__(self, qemu: QemuProcess, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.qemu = qemu
        self._reader = reader
        self._writer = writer

    async def until(self, last: str) -> list[str]:
        """The lines it prints up to and including `last`."""
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not lines or lines[-1] != last:
                line = await self._reader.readline()
                assert line, f"serial closed after {lines}"
                lines.append(line.decode().rstrip("\n"))
        return lines

    async def go(self) -> None:
        """Let it on past its pause."""
        self._writer.write(b"g")
        await self._writer.drain()

    async def powered_off(self) -> None:
        """Wait for its PSCI SYSTEM_OFF after the last line (-no-shutdown: QEMU stays, stopped)."""
        async with asyncio.timeout(60):
            while (await self.qemu.qmp.execute("query-status"))["status"] != "shutdown":
                await asyncio.sleep(0.05)

    async def model(self) -> tuple[dict | None, list | None]:
        """The model's counters and log, or (None, None) when virt has no model."""
        listed = await self.qemu.qmp.execute("qom-list", {"path": "/machine"})
        if not any(p["name"] == "cpucache" for p in listed):
            return None, None
        get = {"path": MODEL}
        counters = await self.qemu.qmp.execute("qom-get", {**get, "property": "counters"})
        log = await self.qemu.qmp.execute("qom-get", {**get, "property": "log"})
        return counters, log


@contextlib.asynccontextmanager
async def _started(
    qemu_argv_aarch64: list[str], elf: Path, model: bool, artifacts: Path
) -> AsyncIterator[Program]:
    argv = [
        *qemu_argv_aarch64, "-nodefaults", "-display", "none", "-accel", "tcg",
        "-machine", f"virt,gic-version=3,x-noncoherent={'on' if model else 'off'}",
        "-cpu", "cortex-a57", "-m", "512", "-kernel", str(elf), "-no-shutdown",
        "-serial", "chardev:serial",
    ]  # fmt: skip
    async with QemuProcess(
        argv, name="cachetest", channels=["serial"], artifacts_dir=artifacts
    ) as qemu:
        reader, writer = await asyncio.open_unix_connection(sock=qemu.channel("serial"))
        try:
            yield Program(qemu, reader, writer)
            await qemu.qmp.execute("quit")
        finally:
            writer.close()


async def _run(
    qemu_argv_aarch64: list[str], elf: Path, model: bool, artifacts: Path
) -> tuple[list[str], dict | None, list | None]:
    async with _started(qemu_argv_aarch64, elf, model, artifacts) as program:
        lines = await program.until("pause")
        await program.go()
        lines += await program.until("done")
        await program.go()
        await program.powered_off()
        counters, log = await program.model()
    return lines, counters, log


async def test_dc_ops_move_exactly_the_lines_they_should(
    program: tuple[Path, int], qemu_argv_aarch64: list[str], artifacts: Path
) -> None:
    elf, lost_ivac = program
    lines, counters, log = await _run(qemu_argv_aarch64, elf, True, artifacts)
    assert lines == [*ALL_HOLD[:4], "pause", *ALL_HOLD[4:], "done"], lines
    assert counters is not None and log is not None
    # Three dirty lines cleaned (checks 2 and 6, and 10's zeroed one), check 8's clean line
    # left alone; four lines invalidated (4, 5, 6, 9): one of them lost the CPU's write.
    assert {k: counters[k] for k in ("cleans", "lines-cleaned", "invalidates",
                                     "lines-invalidated")} == {
        "cleans": 4, "lines-cleaned": 3, "invalidates": 4, "lines-invalidated": 4,
    }  # fmt: skip
    others = ("device-read-stale", "cpu-read-stale", "cpu-clobber")
    assert {k: counters[k] for k in others} == dict.fromkeys(others, 0)
    assert counters["cpu-write-lost"] == 1
    (event,) = log
    assert event["kind"] == "CPU_WRITE_LOST" and event["master"] == "cpu"
    assert event["pa"] == BUF + 2 * LINE and event["iova"] == -1 and event["vcpu"] == 0
    # the guilty instruction, and the lost bytes against what memory holds
    assert event["pc"] == lost_ivac == event["frames"][0]
    assert bytes.fromhex(event["expected"])[:8] == (0x33).to_bytes(8, "little")
    assert bytes.fromhex(event["actual"]) == bytes(LINE)
    assert event["differing"] == 1


async def test_a_snapshot_brings_back_all_three_copies(
    program: tuple[Path, int], qemu_argv_aarch64: list[str], artifacts: Path
) -> None:
    """Saved at the pause (line 2 dirty, a line of the next page only in memory, the rest in
    step), loaded after the second half moved those lines: the second half runs again exactly
    as the first time.
    The model saves its copies as differences from guest RAM and rebuilds, on a load of the
    state it last saved or loaded, only the pages that changed since; after a reset, all."""
    elf, _ = program
    kinds = ("device-read-stale", "cpu-read-stale", "cpu-write-lost", "cpu-clobber")
    pages = 512 * 1024 * 1024 // 4096
    async with _started(qemu_argv_aarch64, elf, True, artifacts) as running:
        qmp = running.qemu.qmp
        assert await running.until("pause") == [*ALL_HOLD[:4], "pause"]
        snaps = Snapshots(running.qemu)
        await snaps.save("pause")
        runs, rebuilt = [], []
        for reset in (False, True, False):
            await running.go()
            lines = await running.until("done")
            counters, log = await running.model()
            assert counters is not None and log is not None
            runs.append((lines, {k: counters[k] for k in kinds}, log))
            if reset:
                # a reset refills the model from RAM: the load cannot trust what is in memory
                await qmp.execute("stop")
                await qmp.execute("system_reset")
            await snaps.load("pause")
            rebuilt.append((await running.model())[0]["rebuilt-pages"])  # type: ignore[index]
    first, *again = runs
    lines, counters, log = first
    assert lines == [*ALL_HOLD[4:], "done"], lines
    assert counters == {**dict.fromkeys(kinds, 0), "cpu-write-lost": 1}
    assert [e["pa"] for e in log] == [BUF + 2 * LINE]
    for other in again:
        # the same lines, findings and bytes; only the event's sequence number goes on
        assert other[:2] == (lines, counters)
        assert [{**e, "seq": 0} for e in other[2]] == [{**e, "seq": 0} for e in log]
    # without a reset only the four buffer pages the second half changed are rebuilt: three
    # the model moved lines of, one only a Non-cacheable store wrote (DRAM's dirty log)
    assert rebuilt[0] == rebuilt[2] == 4, rebuilt
    assert rebuilt[1] == pages, rebuilt


async def test_without_the_model_virt_is_stock(
    program: tuple[Path, int], qemu_argv_aarch64: list[str], artifacts: Path
) -> None:
    elf, _ = program
    lines, counters, log = await _run(qemu_argv_aarch64, elf, False, artifacts)
    assert lines == [*STOCK[:4], "pause", *STOCK[4:], "done"], lines
    assert counters is None and log is None
