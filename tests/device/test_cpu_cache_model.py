"""The CPU cache model's DC operations, one line at a time, by a bare-metal guest program.

guest-tests/cachetest/cachetest.S maps RAM cacheable and again Non-cacheable, stores through
one and reads through the other around DC CVAC, IVAC and CIVAC, and prints a verdict per check.
With the model (virt's x-noncoherent=on) every check holds and the model counts exactly the
lines the program made it move; without it (stock virt) both mappings are one memory, the
DC operations are NOPs, and there is no model object.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from dmalab.artifacts.guest_code import CROSS, ensure_compiler
from dmalab.machine.cpucache import PATH as MODEL
from dmalab.machine.process import QemuProcess

pytestmark = pytest.mark.asyncio(loop_scope="function")

SOURCE = Path(__file__).parents[2] / "guest-tests" / "cachetest" / "cachetest.S"
BUF = 0x40200000
LINE = 64
ALL_HOLD = [f"ok {n}" for n in range(1, 9)]
#: Stock virt: one memory behind both mappings, so what the model separates is the same.
STOCK = ["FAIL 1", "ok 2", "FAIL 3", "ok 4", "FAIL 5", "FAIL 6", "FAIL 7", "ok 8"]


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


async def _run(
    qemu_argv_aarch64: list[str], elf: Path, model: bool, serial: Path, artifacts: Path
) -> tuple[list[str], dict | None, list | None]:
    argv = [
        *qemu_argv_aarch64, "-nodefaults", "-display", "none", "-accel", "tcg",
        "-machine", f"virt,gic-version=3,x-noncoherent={'on' if model else 'off'}",
        "-cpu", "cortex-a57", "-m", "512", "-kernel", str(elf), "-no-shutdown",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    async with QemuProcess(argv, name="cachetest", artifacts_dir=artifacts) as qemu:
        async with asyncio.timeout(60):
            # PSCI SYSTEM_OFF after the last line: QEMU stops (-no-shutdown), the model stays
            while (await qemu.qmp.execute("query-status"))["status"] != "shutdown":
                await asyncio.sleep(0.05)
        counters = log = None
        listed = await qemu.qmp.execute("qom-list", {"path": "/machine"})
        if any(p["name"] == "cpucache" for p in listed):
            get = {"path": MODEL}
            counters = await qemu.qmp.execute("qom-get", {**get, "property": "counters"})
            log = await qemu.qmp.execute("qom-get", {**get, "property": "log"})
        await qemu.qmp.execute("quit")
    lines = serial.read_text().splitlines()
    return lines, counters, log


async def test_dc_ops_move_exactly_the_lines_they_should(
    program: tuple[Path, int], qemu_argv_aarch64: list[str], tmp_path: Path, artifacts: Path
) -> None:
    elf, lost_ivac = program
    lines, counters, log = await _run(qemu_argv_aarch64, elf, True, tmp_path / "s", artifacts)
    assert lines == [*ALL_HOLD, "done"], lines
    assert counters is not None and log is not None
    # Two dirty lines cleaned (checks 2 and 6), check 8's clean line left alone; three lines
    # invalidated (4, 5, 6): one of them lost the CPU's write.
    assert {k: counters[k] for k in ("cleans", "lines-cleaned", "invalidates",
                                     "lines-invalidated")} == {
        "cleans": 3, "lines-cleaned": 2, "invalidates": 3, "lines-invalidated": 3,
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


async def test_without_the_model_virt_is_stock(
    program: tuple[Path, int], qemu_argv_aarch64: list[str], tmp_path: Path, artifacts: Path
) -> None:
    elf, _ = program
    lines, counters, log = await _run(qemu_argv_aarch64, elf, False, tmp_path / "s", artifacts)
    assert lines == [*STOCK, "done"], lines
    assert counters is None and log is None
