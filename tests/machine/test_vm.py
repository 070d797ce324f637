"""Booting the guest (q35 + intel-iommu + ncdma, TCG): shared memory against the agent, device
views over QMP, and every way a run can end leaving no QEMU, run directory or memfd behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dmalab.machine.agent import AgentConnectionLost, Desc
from dmalab.machine.compare_bytes import assert_same
from dmalab.machine.guestmem import iova_segments
from dmalab.machine.process import QemuDied, QemuStartFailed
from dmalab.machine.vm import BootTimeout, GuestFailed, Vm
from dmalab.spec import agent as aspec

PATTERN = 0x1122_3344_5566_7788


async def test_host_mapping_and_agent_agree(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path
) -> None:
    async with make_vm() as vm:
        assert vm.hello is not None and vm.hello.devices == 1
        agent, ram = vm.agent, vm.ram
        assert ram is not None
        buf = await agent.buf_create("NCDMA", 64 * 1024)
        pages = await agent.buf_pages(buf.id, 0, 16)
        assert all(pages)

        # host writes through the mapping, the guest CPU reads the same bytes
        data = os.urandom(16 * 4096)
        for i, pa in enumerate(pages):
            ram.write(pa, data[i * 4096 : (i + 1) * 4096])
        assert_same(data, await agent.cpu_read(buf.id, 0, len(data)), "guest read of host write")

        # the guest CPU writes, the host reads the same bytes (zero-copy views)
        await agent.cpu_write_pattern(buf.id, 0, len(data), seed=7)
        got = b"".join(bytes(v) for v in ram.views((pa, 4096) for pa in pages))
        assert_same(aspec.pattern(7, len(data)), got, "host read of guest write")

        # pmemsave agrees with the mapping
        from dmalab.machine.guestmem import PmemsaveMemory

        assert_same(
            await ram.read(pages[3], 4096),
            await PmemsaveMemory(vm.qmp, vm.run_dir).read(pages[3], 4096),
            "pmemsave",
        )

        # a device FILL, made visible with a CLEAN, read by IOVA through the transaction log
        dev = vm.device()
        await dev.reset_stats()
        att = await agent.attach(buf.id)
        await agent.map(att.id)
        results = await agent.run(
            0,
            [
                Desc.fill(att.id, 8192, PATTERN, dst_off=4096),
                Desc.maint("CLEAN", att.id, 8192, dst_off=4096),
            ],
        )
        assert all(r.ok for r in results), results
        txs = await dev.transactions()
        fill = next(t for t in txs if t.opcode == "FILL")
        segs = iova_segments(txs, fill.dst, fill.len)
        assert_same(
            PATTERN.to_bytes(8, "little") * 1024,
            b"".join(bytes(v) for v in ram.views(segs)),
            "FILL by IOVA",
        )
        counters = await dev.counters()
        assert counters["desc_completed"] >= 2 and counters["bytes_written"] >= 8192

        # the ring, read from guest memory through the VT-d tables
        ring = await dev.ring(ram)
        assert (ring.size >= 2 and ring.base >= 1 << 32) or ring.base > 0
        ops = [str(d.opcode) for d in ring.descriptors if str(d.status) == "OK"]
        assert "FILL" in ops and "CLEAN" in ops
        pid = vm.process.pid
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
    assert leaks.memfds() == set()


async def test_sigkill_mid_test(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    before = leaks.memfds()
    with pytest.raises(QemuDied, match="SIGKILL") as info:
        async with make_vm() as vm:
            pid = vm.process.pid
            os.kill(pid, signal.SIGKILL)
            await vm.agent.echo(b"anyone?")
    assert isinstance(info.value.__cause__, AgentConnectionLost)
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
    kept = list(artifacts.iterdir())
    assert len(kept) == 1 and (kept[0] / "console.log").read_bytes().count(b"DMALAB-READY") == 1
    assert leaks.memfds() == before


async def test_body_error_keeps_device_artifacts(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    with pytest.raises(ValueError, match="scenario broke") as info:
        async with make_vm() as vm:
            pid = vm.process.pid
            raise ValueError("scenario broke")
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert str(kept) in "".join(info.value.__notes__)
    dump = json.loads((kept / "ncdma-ncdma0.json").read_text())
    assert dump["counters"]["iommu_map_events"] > 0 and dump["iommu"]["active"] is True
    assert {"violations", "transactions"} <= dump.keys()
    assert (kept / "qmp-events.jsonl").exists() and (kept / "console.log").stat().st_size > 0


async def test_cancellation(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def body() -> None:
        async with make_vm() as vm:
            pids.append(vm.process.pid)
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leaks.assert_gone(pids[0])
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert (kept / "ncdma-ncdma0.json").exists()


async def test_cancellation_during_boot(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path
) -> None:
    vm = make_vm()
    task = asyncio.create_task(vm.__aenter__())
    while vm.console is None:  # QEMU runs; the quiet guest prints nothing before the marker
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert not task.done() and not vm.console.data
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leaks.assert_gone(vm.process.pid)
    assert list(run_base.iterdir()) == []
    assert leaks.memfds() == set()


async def test_panic_is_a_clear_error(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    with pytest.raises(GuestFailed, match="Kernel panic") as info:
        async with make_vm() as vm:
            pid = vm.process.pid
            with pytest.raises(AgentConnectionLost):
                await vm.agent.write_file("/proc/sysrq-trigger", "c")
                await vm.agent.echo(b"after the panic")
    assert "sysrq" in str(info.value).lower()  # the console tail is in the message
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
    (kept,) = artifacts.iterdir()
    assert b"Kernel panic" in (kept / "console.log").read_bytes()


async def test_a_qemu_that_does_not_start_says_why(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    # QEMU refuses its command line: the reason reaches the caller, nothing is left running
    vm = make_vm()
    original = vm._argv
    vm._argv = lambda fd: [*original(fd), "-no-such-option"]
    with pytest.raises(QemuStartFailed, match="no-such-option"):
        async with vm:
            pass
    assert vm.process is None
    assert list(run_base.iterdir()) == []
    assert leaks.memfds() == set()
    (kept,) = artifacts.iterdir()
    assert "no-such-option" in (kept / "qemu.log").read_text()


async def test_hung_guest_times_out(make_vm: Callable[..., Vm], leaks: Any, run_base: Path) -> None:
    # the guest never gets to run: the boot must time out, not hang
    vm = make_vm(boot_timeout=3.0)
    original = vm._argv
    vm._argv = lambda fd: [*original(fd), "-S"]
    with pytest.raises(BootTimeout, match="not ready"):
        async with vm:
            pass
    leaks.assert_gone(vm.process.pid)
    assert list(run_base.iterdir()) == []


async def test_paused_guest_request_times_out(
    make_vm: Callable[..., Vm], leaks: Any, run_base: Path, artifacts: Path
) -> None:
    from dmalab.machine.agent import AgentTimeout

    with pytest.raises(AgentTimeout):
        async with make_vm() as vm:
            pid = vm.process.pid
            await vm.qmp.execute("stop")
            await vm.agent.request("ECHO", tail=b"x", timeout=1.0)
    leaks.assert_gone(pid)
    assert list(run_base.iterdir()) == []
    assert len(list(artifacts.iterdir())) == 1
