"""The host client against a fake agent (no guest): typed methods encode what the spec says and
decode typed results; errors, out-of-order replies, timeouts, a broken stream and malformed
replies each end the way the client promises."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import construct as c
import pytest

from dmalab.machine.agent import (
    AgentClient,
    AgentConnectionLost,
    AgentError,
    AgentTimeout,
    Desc,
)
from dmalab.spec import agent as spec
from dmalab.spec import ncdma as hw

Handler = Callable[[spec.Op, Any, Any], Awaitable[tuple[dict, Any] | int | bytes | None]]


class FakeAgent:
    """Serves one socket with the spec's encoders. A handler returns (fields, tail), an errno
    (int), raw bytes to send instead of a reply, or None to stay silent."""

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.requests: list[tuple[Any, spec.Op, Any, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.answering: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        reader, writer = await asyncio.open_connection(sock=self.sock)
        try:
            while True:
                head = await reader.readexactly(spec.HEADER_SIZE)
                h = spec.Header.parse(head)
                body = await reader.readexactly(h.length)
                header, op, fields, tail = spec.decode_request(head + body)
                self.requests.append((header, op, fields, tail))
                task = asyncio.create_task(self._answer(writer, header, op, fields, tail))
                self.answering.add(task)
                task.add_done_callback(self.answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, header: Any, op: spec.Op, fields: Any, tail: Any
    ) -> None:
        result = await self.handler(op, fields, tail)
        if result is None:
            return
        if isinstance(result, bytes):
            writer.write(result)
        elif isinstance(result, int):
            writer.write(spec.encode_error(op.code, header.seq, result, "fake failure"))
        else:
            reply_fields, reply_tail = result
            writer.write(spec.encode_reply(op, header.seq, reply_fields, reply_tail))
        await writer.drain()


@contextlib.asynccontextmanager
async def fake(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[AgentClient, FakeAgent]]:
    ours, theirs = socket.socketpair()
    agent = FakeAgent(theirs, handler)
    agent.task = asyncio.create_task(agent.serve())
    client = await AgentClient.over_socket(ours, **kwargs)
    try:
        yield client, agent
    finally:
        await client.close()
        agent.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent.task


def zeros(con: c.Struct) -> dict[str, Any]:
    """A reply with every field zero (or the first value of an enum)."""
    out: dict[str, Any] = {}
    for sc in con.subcons:
        inner = sc
        while isinstance(inner, c.Renamed):
            inner = inner.subcon
        if isinstance(inner, c.Array):
            out[sc.name] = [0] * inner.count
        elif isinstance(inner, c.Bytes):
            out[sc.name] = bytes(inner.length)
        elif isinstance(inner, c.Enum):
            out[sc.name] = next(iter(inner.encmapping))
        else:
            out[sc.name] = 0
    return out


async def test_typed_methods_encode_and_decode() -> None:
    async def handler(op: spec.Op, fields: Any, tail: Any) -> tuple[dict, Any]:
        reply = zeros(op.reply)
        if op.name == "HELLO":
            reply.update(proto_version=1, uapi_version=1, page_size=4096, devices=2)
            return reply, b"6.12.0-test"
        if op.name == "ECHO":
            return reply, tail
        if op.name == "BUF_CREATE":
            assert fields.kind == "UDMABUF" and fields.flags == 0x6 and fields.faults == 0x41
            reply.update(buf=3, handle=0, size=fields.size)
            return reply, b""
        if op.name == "ATTACH":
            assert (fields.flags, fields.faults) == (0x3, 0x2)
            reply.update(att=7, handle=9)
            return reply, b""
        if op.name == "MAP":
            assert (fields.dir, fields.timeout_ms) == (2, 500)
            reply.update(nsegs=2)
            return reply, b""
        if op.name == "ATT_INFO":
            reply.update(state=0x3, dir=1, nsegs=2, size=8192)
            return reply, [{"addr": 0xFFFF0000, "len": 4096}, {"addr": 0xFFFE0000, "len": 4096}]
        if op.name == "RUN":
            assert [d.op for d in tail] == [1, 3]
            assert tail[1].flags == 0x1 and tail[0].cookie == 0xABC
            reply.update(batch=5, pieces=3, count=2)
            return reply, [
                {"status": 1, "pieces": 2, "done": 8192},
                {"status": 2, "pieces": 1, "done": 0},
            ]
        if op.name == "STATS":
            reply["driver"] = list(range(spec.DRIVER_STATS_SLOTS))
            reply["ndevice"] = len(hw.COUNTER_NAMES)
            reply["device"] = [i * 10 for i in range(spec.DEVICE_COUNTERS_MAX)]
            return reply, b""
        if op.name == "DEVICE_INFO":
            reply.update(
                caps=0x5,
                irq_mode=1,
                iommu_group=-1,
                iommu_domain=2,
                pci_name=b"0000:00:02.0".ljust(32, b"\0"),
            )
            return reply, b""
        if op.name == "KMSG_READ":
            reply.update(last_seq=12, records=2)
            return reply, b"6,11,100,-;first\n4,12,200,-;second line\n"
        if op.name == "CPU_VERIFY":
            reply.update(mismatches=0, first=2**64 - 1)
            return reply, b""
        if op.name == "CACHE_OP":
            reply.update(status=2)
            return reply, b""
        return reply, b""

    async with fake(handler) as (client, agent):
        hello = await client.hello()
        assert (hello.devices, hello.kernel_release) == (2, "6.12.0-test")
        assert await client.echo(b"\0\x01" * 3000) == b"\0\x01" * 3000
        buf = await client.buf_create(
            "UDMABUF",
            8192,
            flags=["CACHE_SGT", "EXCLUSIVE"],
            faults=["SKIP_MAP_INVALIDATE", "USE_STALE"],
        )
        assert (buf.id, buf.size) == (3, 8192)
        att = await client.attach(3, 1, flags=["DYNAMIC", "CACHE_SGT"], faults="SKIP_UNMAP_CLEAN")
        assert (att.id, att.handle, att.dev) == (7, 9, 1)
        assert await client.map(7, "FROM_DEVICE", timeout_ms=500) == 2
        info = await client.att_info(7)
        assert info.state == {"MAPPED", "HAS_SGT"} and info.dir == "TO_DEVICE"
        assert info.segs == [(0xFFFF0000, 4096), (0xFFFE0000, 4096)]
        results = await client.run(
            1, [Desc.copy(7, 7, 8192, dst_off=8192, cookie=0xABC), Desc.maint("CLEAN", whole=True)]
        )
        assert [r.status for r in results] == ["OK", "IOMMU_FAULT"] and results[0].ok
        stats = await client.stats(1)
        assert stats.driver["imp_maps"] == 0 and stats.driver["detaches"] == 28
        assert list(stats.device) == list(hw.COUNTER_NAMES)
        assert stats.device["violations_dropped"] == 230
        dev = await client.device_info(1)
        assert dev.caps == {"CACHE", "IOMMU"} and dev.iommu_group == -1
        assert (dev.irq_mode, dev.iommu_domain, dev.pci_name) == ("msix", "DMA", "0000:00:02.0")
        kmsg = await client.kmsg_read(10)
        assert kmsg.last_seq == 12 and kmsg.messages() == ["first", "second line"]
        verify = await client.cpu_verify(3, 0, 8192, 1)
        assert verify.first is None and verify.mismatches == 0
        assert await client.cache_op(1, "INVALIDATE", att=7, length=4096) == "IOMMU_FAULT"
        with pytest.raises(ValueError, match="unknown flag"):
            await client.attach(3, 0, flags="BOGUS")

        sent = {op.name: fields for _, op, fields, _ in agent.requests}
        assert sent["KMSG_READ"].since == 10
        assert sent["CACHE_OP"].op == hw.Opcode.encmapping["INVALIDATE"]


async def test_error_reply_raises_with_the_errno_name() -> None:
    async def handler(op: spec.Op, fields: Any, tail: Any) -> int:
        return 16  # EBUSY

    async with fake(handler) as (client, _):
        with pytest.raises(AgentError) as info:
            await client.buf_free(4)
        assert info.value.name == "EBUSY" and info.value.errno == 16
        assert info.value.op == "BUF_FREE" and info.value.message == "fake failure"
        assert "BUF_FREE: EBUSY: fake failure" in str(info.value)
        # The connection stays usable after an error.
        with pytest.raises(AgentError):
            await client.hello()


async def test_replies_out_of_order_reach_their_requests() -> None:
    release = asyncio.Event()

    async def handler(op: spec.Op, fields: Any, tail: Any) -> tuple[dict, Any]:
        if tail == b"slow":
            await release.wait()
        return zeros(op.reply), tail

    async with fake(handler) as (client, agent):
        slow = asyncio.create_task(client.echo(b"slow"))
        await asyncio.sleep(0.05)
        assert await client.echo(b"fast") == b"fast"
        assert not slow.done()
        release.set()
        assert await slow == b"slow"
        await client.map(1, background=True)
        flags = [h.flags for h, op, _, _ in agent.requests if op.name == "MAP"]
        assert flags[0].ASYNC


async def test_timeout_then_the_connection_still_works() -> None:
    async def handler(op: spec.Op, fields: Any, tail: Any) -> tuple[dict, Any] | None:
        if tail == b"never":
            return None
        return zeros(op.reply), tail

    async with fake(handler, timeout=0.2) as (client, _):
        with pytest.raises(AgentTimeout):
            await client.echo(b"never")
        assert await client.echo(b"again") == b"again"


async def test_garbage_from_the_agent_fails_every_pending_request() -> None:
    async def handler(op: spec.Op, fields: Any, tail: Any) -> bytes | None:
        if tail == b"break":
            return b"X" * spec.HEADER_SIZE
        return None

    async with fake(handler) as (client, _):
        waiting = asyncio.create_task(client.echo(b"waits forever"))
        await asyncio.sleep(0.05)
        with pytest.raises(AgentConnectionLost, match="bad header"):
            await client.echo(b"break")
        with pytest.raises(AgentConnectionLost):
            await waiting
        with pytest.raises(AgentConnectionLost):
            await client.hello()


async def test_agent_going_away_is_connection_lost() -> None:
    ours, theirs = socket.socketpair()
    client = await AgentClient.over_socket(ours)
    try:
        pending = asyncio.create_task(client.hello())
        await asyncio.sleep(0.05)
        theirs.close()
        with pytest.raises(AgentConnectionLost):
            await pending
    finally:
        await client.close()


async def test_malformed_reply_is_connection_lost() -> None:
    async def handler(op: spec.Op, fields: Any, tail: Any) -> bytes:
        return spec.encode_header(op.code, 1, 3, flags=1) + b"abc"  # HELLO reply is 16+ bytes

    async with fake(handler) as (client, _):
        with pytest.raises(AgentConnectionLost, match="malformed reply"):
            await client.hello()
