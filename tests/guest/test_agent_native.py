"""The real dmalab-agent, built from guest-tests/agent and run on the host in stdio mode
(`dmalab-agent -`): it answers, refuses bad input with the documented errno and keeps serving,
and survives garbage. Operations that need /dev/ncdmaN or a dma-buf exporter are covered by the
boot tests; here they must fail cleanly."""

from __future__ import annotations

import asyncio
import os
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dmalab.artifacts.cache import repo_root
from dmalab.artifacts.guest_code import GuestCode, build_agent
from dmalab.machine.agent import AgentClient, AgentError
from dmalab.spec import agent as spec


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agent")
    with GuestCode(repo_root()).scratch() as scratch:
        data = build_agent(scratch, out / "build.log")
    binary = out / "dmalab-agent"
    binary.write_bytes(data)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


class Native:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    async def send(self, raw: bytes) -> None:
        self.stdin.write(raw)
        await self.stdin.drain()

    async def reply(self) -> tuple[object, bytes]:
        head = await asyncio.wait_for(self.stdout.readexactly(spec.HEADER_SIZE), 10)
        header = spec.Header.parse(head)
        return header, await self.stdout.readexactly(header.length)

    async def expect_error(self, raw: bytes, name: str) -> bytes:
        await self.send(raw)
        header, payload = await self.reply()
        assert spec.errno_name(header.status) == name, payload  # type: ignore[attr-defined]
        assert header.flags.REPLY  # type: ignore[attr-defined]
        return payload

    async def expect_echo(self, seq: int, data: bytes) -> None:
        await self.send(spec.encode_request(spec.OP_BY_NAME["ECHO"], seq, {}, data))
        header, payload = await self.reply()
        assert (header.seq, header.status, payload) == (seq, 0, data)  # type: ignore[attr-defined]


@pytest_asyncio.fixture
async def native(agent_binary: Path) -> AsyncIterator[Native]:
    proc = await asyncio.create_subprocess_exec(
        str(agent_binary),
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        yield Native(proc)
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_hello_and_echo_through_the_client(native: Native) -> None:
    client = AgentClient(native.stdout, native.stdin)
    client.start()
    hello = await client.hello()
    assert hello.proto_version == spec.VERSION and hello.page_size == os.sysconf("SC_PAGE_SIZE")
    assert hello.kernel_release == os.uname().release
    big = bytes(random.Random(1).randbytes(1 << 20))
    assert await client.echo(big) == big
    # ASYNC requests run on threads; all of them are answered.
    answers = await asyncio.gather(
        *(client.request("ECHO", tail=bytes([i]) * 100, background=True) for i in range(32))
    )
    assert sorted(bytes(t) for _, t in answers) == sorted(bytes([i]) * 100 for i in range(32))
    assert (await client.read_file("/proc/self/stat"))[:1].isdigit()


async def test_operations_fail_cleanly_without_devices(native: Native) -> None:
    client = AgentClient(native.stdout, native.stdin)
    client.start()
    cases = [
        (client.buf_free(7), "ENOENT"),
        (client.buf_info(1), "ENOENT"),
        (client.detach(3), "ENOENT"),
        (client.map(3), "ENOENT"),
        (client.cpu_read(1, 0, 16), "ENOENT"),
        (client.cpu_write_pattern(1, 0, 16, 1), "ENOENT"),
        (client.buf_create("NCDMA", 0), "EINVAL"),
        (
            client.request(
                "BUF_CREATE", {"kind": 9, "dev": 0, "size": 4096, "flags": 0, "faults": 0}
            ),
            "EINVAL",
        ),
        (client.read_file("/nonexistent/file"), "ENOENT"),
        (client.request("CPU_READ", {"buf": 1, "mode": 7, "offset": 0, "len": 1}), "EINVAL"),
        (client.request("SUBMIT", {"dev": 0}, []), "EINVAL"),
        (client.module_unload("not_a_module_here"), None),
    ]
    if not Path("/dev/ncdma0").exists():
        cases.append((client.device_info(0), "ENOENT"))
    for call, name in cases:
        with pytest.raises(AgentError) as info:
            await call
        if name:
            assert info.value.name == name, info.value
        assert info.value.message
    assert (await client.hello()).proto_version == spec.VERSION


async def test_protocol_errors_get_replies_and_serving_goes_on(native: Native) -> None:
    echo = spec.OP_BY_NAME["ECHO"]
    hello = spec.OP_BY_NAME["HELLO"]
    # Unknown op: EOPNOTSUPP, payload skipped.
    await native.expect_error(spec.encode_header(0xEE, 1, 5) + b"12345", "EOPNOTSUPP")
    await native.expect_echo(2, b"after unknown op")
    # Other version: EPROTONOSUPPORT.
    await native.expect_error(
        spec.encode_header(echo.code, 3, 2, version=99) + b"hi", "EPROTONOSUPPORT"
    )
    await native.expect_echo(4, b"after bad version")
    # Payload that does not fit the op (HELLO has none; BUF_FREE needs 8 bytes).
    await native.expect_error(spec.encode_header(hello.code, 5, 3) + b"abc", "EPROTO")
    await native.expect_error(
        spec.encode_header(spec.OP_BY_NAME["BUF_FREE"].code, 6, 4) + b"abcd", "EPROTO"
    )
    # Items that do not fill the payload.
    submit = spec.OP_BY_NAME["SUBMIT"]
    bad = spec.SubmitRequest.build({"dev": 0, "count": 3}) + b"\0" * 56
    await native.expect_error(spec.encode_header(submit.code, 7, len(bad)) + bad, "EPROTO")
    await native.expect_echo(8, b"after bad items")
    # Bad magic: EBADMSG, then the agent finds the next message.
    await native.expect_error(b"\xff" * 40, "EBADMSG")
    await native.expect_echo(9, b"after bad magic")
    # Too long: EMSGSIZE, then it looks for the next MAGIC.
    await native.expect_error(spec.encode_header(echo.code, 10, spec.MAX_PAYLOAD + 1), "EMSGSIZE")
    await native.expect_echo(11, b"after too long")


async def test_garbage_never_stops_the_agent(native: Native) -> None:
    rng = random.Random(2024)
    for seq in range(100, 160):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        if b"dmag" in junk:
            continue
        await native.send(junk)
        await native.send(spec.encode_request(spec.OP_BY_NAME["ECHO"], seq, {}, b"ok%d" % seq))
        # Garbage is answered with EBADMSG (at most once per junk run); then the echo.
        while True:
            header, payload = await native.reply()
            if header.status == 0:  # type: ignore[attr-defined]
                assert (header.seq, payload) == (seq, b"ok%d" % seq)  # type: ignore[attr-defined]
                break
            assert spec.errno_name(header.status) in ("EBADMSG", "EMSGSIZE")  # type: ignore[attr-defined]
    assert native.proc.returncode is None
