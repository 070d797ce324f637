"""ncdma with no IOMMU: byte-exact data movement, and the device cache's noncoherent behaviour.

Every check reads guest memory from the host (qtest) and compares it byte for byte with what the
device was told to do.
"""

from __future__ import annotations

import random

import pytest

from dmalab.machine.ncdma_host import copy, fill, fill_bytes, maint
from dmalab.machine.ncdma_rig import NcdmaRig, RigDevice, ncdma_rig

MiB = 1 << 20
U64_COOKIE = (1 << 64) - 2
SIZES = [1, 7, 63, 64, 65, 4095, 4096, 4097, 3 * 4096 + 5, 65536 + 3, MiB + 5, 16 * MiB]


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def flush(dev: RigDevice) -> None:
    assert [c.status for c in await dev.host.submit([maint("CLEAN")])] == ["OK"]


@pytest.mark.parametrize("coherent", [True, False], ids=["coherent", "cached"])
@pytest.mark.parametrize("size", SIZES)
async def test_copy_and_fill_are_byte_exact(
    qemu_argv: list[str], size: int, coherent: bool
) -> None:
    props = "coherent=on" if coherent else ""
    async with ncdma_rig(qemu_argv, [props], memory_mib=128) as rig:
        dev = rig.devices[0]
        src, dst, fdst = rig.alloc(size + 8192), rig.alloc(size + 8192), rig.alloc(size + 8192)
        data = pattern(size + 64, size)
        before = pattern(size + 64, ~size)
        await rig.qtest.write(src, data)
        await rig.qtest.write(dst, before)
        # Unaligned on both sides and in different positions within a line and a page.
        done = await dev.host.submit(
            [copy(dst + 13, src + 5, size, cookie=1), fill(fdst + 3, size, 0x0123456789ABCDEF, 2)]
        )
        assert [(c.status, c.done) for c in done] == [("OK", size), ("OK", size)]
        await flush(dev)
        got = await rig.qtest.read(dst, size + 64)
        assert got[:13] == before[:13], "bytes before the destination changed"
        assert got[13 : 13 + size] == data[5 : 5 + size]
        assert got[13 + size :] == before[13 + size :], "bytes after the destination changed"
        assert await rig.qtest.read(fdst + 3, size) == fill_bytes(size, 0x0123456789ABCDEF)


async def cached_rig_buffers(rig: NcdmaRig, n: int = 3, size: int = 4096) -> list[int]:
    return [rig.alloc(size) for _ in range(n)]


async def test_device_writes_are_invisible_until_clean(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""]) as rig:
        dev = rig.devices[0]
        (dst,) = await cached_rig_buffers(rig, 1)
        old = pattern(4096, 1)
        await rig.qtest.write(dst, old)
        await dev.host.submit([fill(dst, 4096, 0xAA55AA55AA55AA55)])
        assert await rig.qtest.read(dst, 4096) == old, "memory saw the device's write before CLEAN"
        await dev.host.submit([maint("CLEAN", dst, 4096)])
        assert await rig.qtest.read(dst, 4096) == fill_bytes(4096, 0xAA55AA55AA55AA55)
        counters = await rig.qom(dev, "counters")
        assert counters["cache_writebacks"] == 4096 // 64
        assert counters["violations_logged"] == 0


async def test_stale_read_after_cpu_write_without_invalidate(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""]) as rig:
        dev = rig.devices[0]
        src, dst1, dst2 = await cached_rig_buffers(rig)
        first, second = pattern(4096, 10), pattern(4096, 11)
        await rig.qtest.write(src, first)
        await dev.host.submit([copy(dst1, src, 4096, cookie=0x11)])
        # The CPU writes the source while the device still holds its lines: nobody invalidates.
        await rig.qtest.write(src, second)
        await dev.host.submit([copy(dst2, src, 4096, cookie=0x22), maint("CLEAN")])
        assert await rig.qtest.read(dst2, 4096) == first, "the device must read its stale lines"
        counters = await rig.qom(dev, "counters")
        assert counters["stale_reads"] == 4096 // 64
        log = await rig.qom(dev, "violations")
        assert {v["kind"] for v in log} == {"STALE_READ"}
        v = log[0]
        assert (v["cookie"], v["pa"], v["iova"], v["differing"]) == (0x22, src, src, 64)
        assert bytes.fromhex(v["expected"]) == second[:32]  # memory now
        assert bytes.fromhex(v["actual"]) == first[:32]  # what the device used

        # The same sequence with an INVALIDATE before the second read is clean and fresh.
        await rig.reset_stats(dev)
        await rig.qtest.write(src, first)
        await dev.host.submit([maint("INVALIDATE", src, 4096)])
        await dev.host.submit([copy(dst1, src, 4096)])
        await rig.qtest.write(src, second)
        await dev.host.submit(
            [maint("INVALIDATE", src, 4096), copy(dst2, src, 4096), maint("CLEAN")]
        )
        assert await rig.qtest.read(dst2, 4096) == second
        assert (await rig.qom(dev, "counters"))["violations_logged"] == 0


async def test_invalidate_of_dirty_lines_loses_the_write(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""]) as rig:
        dev = rig.devices[0]
        (dst,) = await cached_rig_buffers(rig, 1)
        old = pattern(4096, 3)
        await rig.qtest.write(dst, old)
        await dev.host.submit(
            [
                fill(dst + 100, 200, 0x1111111111111111, cookie=5),
                maint("INVALIDATE", dst, 4096, cookie=6),
            ]
        )
        assert await rig.qtest.read(dst, 4096) == old
        counters = await rig.qom(dev, "counters")
        touched_lines = (100 + 200 - 1) // 64 - 100 // 64 + 1
        assert counters["lost_writes"] == touched_lines
        v = (await rig.qom(dev, "violations"))[0]
        assert v["kind"] == "LOST_WRITE" and v["cookie"] == 6 and v["pa"] == dst + 100
        assert bytes.fromhex(v["expected"]) == b"\x11" * 28  # the device's bytes, to line end
        assert bytes.fromhex(v["actual"]) == old[100:128]


async def test_cpu_write_under_a_dirty_line_conflicts_at_writeback(qemu_argv: list[str]) -> None:
    async with ncdma_rig(qemu_argv, [""]) as rig:
        dev = rig.devices[0]
        (dst,) = await cached_rig_buffers(rig, 1)
        await rig.qtest.write(dst, bytes(4096))
        await dev.host.submit([fill(dst, 64, 0x2222222222222222, cookie=7)])
        await rig.qtest.write(dst + 8, b"CPU!")  # the CPU writes a buffer the device owns
        await dev.host.submit([maint("CLEAN", dst, 64, cookie=8)])
        # The write-back still overwrites the CPU's bytes, as hardware does.
        assert await rig.qtest.read(dst, 64) == b"\x22" * 64
        counters = await rig.qom(dev, "counters")
        assert counters["conflicting_writes"] == 1
        v = (await rig.qom(dev, "violations"))[0]
        assert (v["kind"], v["cookie"], v["pa"], v["differing"]) == (
            "CONFLICTING_WRITE",
            8,
            dst + 8,
            4,
        )
        assert bytes.fromhex(v["actual"])[:4] == b"CPU!"


async def test_eviction_writes_back_at_capacity(qemu_argv: list[str]) -> None:
    cache = 4096
    async with ncdma_rig(qemu_argv, [f"cache-size={cache},cache-ways=2"]) as rig:
        dev = rig.devices[0]
        dst = rig.alloc(4 * cache)
        await rig.qtest.write(dst, bytes(4 * cache))
        await dev.host.submit([fill(dst, 4 * cache, 0x3333333333333333)])
        counters = await rig.qom(dev, "counters")
        lines = 4 * cache // 64
        assert counters["cache_misses"] == lines
        assert counters["cache_evictions"] == lines - cache // 64
        assert counters["cache_writebacks"] == lines - cache // 64
        # LRU: the first three quarters were evicted (and so written back), the last is held.
        memory = await rig.qtest.read(dst, 4 * cache)
        assert memory[: 3 * cache] == b"\x33" * (3 * cache)
        assert memory[3 * cache :] == bytes(cache)


async def scripted_run(qemu_argv: list[str]) -> tuple[dict, list, list]:
    async with ncdma_rig(qemu_argv, ["cache-size=8192,cache-ways=4"]) as rig:
        dev = rig.devices[0]
        rng = random.Random(1234)
        bufs = [rig.alloc(16384) for _ in range(4)]
        for i, buf in enumerate(bufs):
            await rig.qtest.write(buf, pattern(16384, i))
        for step in range(40):
            a, b = rng.sample(bufs, 2)
            n = rng.randrange(1, 12000)
            descs = [copy(b + rng.randrange(4096), a + rng.randrange(4096), n, cookie=step)]
            if rng.random() < 0.3:
                await rig.qtest.write(a + rng.randrange(16000), b"host")
            if rng.random() < 0.3:
                descs.append(
                    maint(
                        rng.choice(["CLEAN", "INVALIDATE", "CLEAN_INVALIDATE"]),
                        b,
                        rng.randrange(1, 16384),
                        cookie=step,
                    )
                )
            await dev.host.submit(descs)
        return (
            await rig.qom(dev, "counters"),
            await rig.qom(dev, "violations"),
            await rig.qom(dev, "transactions"),
        )


async def test_same_inputs_give_identical_counters_and_logs(qemu_argv: list[str]) -> None:
    first = await scripted_run(qemu_argv)
    second = await scripted_run(qemu_argv)
    assert first[0]["violations_logged"] > 0, "the script must exercise the detectors"
    assert first == second


async def test_violation_log_json_types(qemu_argv: list[str]) -> None:
    """Each entry of the log is an object of exactly the documented fields and JSON types."""
    async with ncdma_rig(qemu_argv, [""]) as rig:
        dev = rig.devices[0]
        src, dst = await cached_rig_buffers(rig, 2)
        await rig.qtest.write(src, pattern(4096, 20))
        await rig.qtest.write(dst, bytes(4096))
        await dev.host.submit([copy(dst, src, 64)])
        await rig.qtest.write(src, pattern(4096, 21))  # the device now holds stale lines
        await rig.qtest.write(dst + 4, b"CPU")  # under the device's dirty line
        await dev.host.submit(
            [
                copy(dst + 64, src, 64, cookie=U64_COOKIE),  # STALE_READ
                maint("CLEAN", dst, 64, cookie=3),  # CONFLICTING_WRITE
                fill(dst + 200, 10, 0x77, cookie=4),
                maint("INVALIDATE", dst + 192, 64, cookie=5),  # LOST_WRITE
            ]
        )
        log = await rig.qom(dev, "violations")
        assert [v["kind"] for v in log] == ["STALE_READ", "CONFLICTING_WRITE", "LOST_WRITE"]
        types = {
            "seq": int,
            "kind": str,
            "cookie": int,
            "iova": int,
            "pa": int,
            "line-pa": int,
            "differing": int,
            "expected": str,
            "actual": str,
        }
        for seq, v in enumerate(log):
            assert {k: type(x) for k, x in v.items()} == types
            assert v["seq"] == seq
            assert 0 < len(v["expected"]) == len(v["actual"]) <= 64
            for evidence in (v["expected"], v["actual"]):
                assert len(evidence) % 2 == 0 and evidence == evidence.lower()
                bytes.fromhex(evidence)
        assert log[0]["cookie"] == U64_COOKIE and log[0]["line-pa"] == src  # beyond 2^63: exact
