"""Client of the guest agent (protocol: `dmalab.spec.agent`, docs/guest-agent.md).

`AgentClient` speaks to `dmalab-agent` over any asyncio stream, normally the host end of the
virtio-serial port named `dmalab.agent` (a socket chardev). It has one coroutine per operation.
Replies are matched to requests by sequence number, so requests may be issued concurrently;
operations that may block in the guest (a map waiting for an exclusive owner) should pass
`background=True`, which makes the agent run them on a thread of their own.

A failed operation raises `AgentError`, which carries the errno name the agent reported (e.g.
"EBUSY") and its message. A broken stream raises `AgentConnectionLost`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import construct as c

from dmalab.errors import CheckFailed, EnvironmentProblem
from dmalab.machine.stream import StreamClient
from dmalab.spec import agent as spec
from dmalab.spec import ncdma as hw

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

DEFAULT_TIMEOUT = 30.0


class AgentError(CheckFailed):
    """The agent answered a request with an error: `name` is its errno name ("ENOENT")."""

    def __init__(self, op: str, number: int, message: str = "") -> None:
        self.op = op
        self.errno = number
        self.name = spec.errno_name(number)
        self.message = message
        super().__init__(f"agent {op}: {self.name}" + (f": {message}" if message else ""))


class AgentConnectionLost(EnvironmentProblem):
    """The stream to the agent closed or carried something that is not the protocol."""


class AgentTimeout(CheckFailed, TimeoutError):
    """No reply within the request's timeout (the guest may be hung)."""


# ---------------------------------------------------------------------------------------------
# Typed results


@dataclass(frozen=True)
class Hello:
    proto_version: int
    uapi_version: int
    page_size: int
    devices: int
    kernel_release: str


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    hw_id: int
    hw_version: int
    caps: set[str]
    cache_line: int
    cache_size: int
    cache_ways: int
    iotlb_entries: int
    max_xfer: int
    ring_entries: int
    irq_mode: str  # "msix" or "poll"
    dma_mask_bits: int
    iommu_group: int  # -1: none
    iommu_domain: str  # "NONE", "IDENTITY", "DMA", "OTHER"
    pci_name: str


@dataclass(frozen=True)
class Stats:
    driver: dict[str, int]
    device: dict[str, int]


@dataclass(frozen=True)
class Buffer:
    id: int
    handle: int  # NCDMA: the handle on the exporting device
    size: int


@dataclass(frozen=True)
class BufInfo:
    kind: str
    state: set[str]
    size: int
    flags: set[str]
    faults: set[str]
    attachments: int
    mappings: int
    pins: int
    cpu_owners: int
    moves: int
    generation: int


@dataclass(frozen=True)
class Attachment:
    id: int
    handle: int
    dev: int
    buf: int


@dataclass(frozen=True)
class AttInfo:
    state: set[str]
    dir: str
    flags: set[str]
    faults: set[str]
    nsegs: int
    size: int
    maps: int
    generation: int
    segs: list[tuple[int, int]]  # (DMA address, length)


@dataclass(frozen=True)
class Verify:
    mismatches: int
    first: int | None
    expected: int
    actual: int


@dataclass(frozen=True)
class Result:
    status: str  # "OK", "IOMMU_FAULT", ..., "RING_ERROR"
    pieces: int
    done: int

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass(frozen=True)
class Batch:
    id: int
    pieces: int


@dataclass(frozen=True)
class KmsgRecords:
    last_seq: int
    records: list[str]
    truncated: bool

    def messages(self) -> list[str]:
        """The text of each record (after the `prio,seq,time,flags;` prefix)."""
        return [r.split(";", 1)[1].rstrip("\n") if ";" in r else r for r in self.records]


@dataclass(frozen=True)
class Desc:
    """One descriptor of a batch, naming agent attachment ids (`spec.agent.Desc`)."""

    op: str  # "NOP", "COPY", "FILL", "CLEAN", "INVALIDATE", "CLEAN_INVALIDATE"
    src: int = 0
    dst: int = 0
    src_off: int = 0
    dst_off: int = 0
    len: int = 0
    pattern: int = 0
    cookie: int = 0
    flags: set[str] = field(default_factory=set)  # "WHOLE", "RAW"

    @classmethod
    def copy(
        cls, src: int, dst: int, length: int, *, src_off: int = 0, dst_off: int = 0, cookie: int = 0
    ) -> Desc:
        return cls(
            "COPY", src=src, dst=dst, src_off=src_off, dst_off=dst_off, len=length, cookie=cookie
        )

    @classmethod
    def fill(
        cls, dst: int, length: int, pattern: int, *, dst_off: int = 0, cookie: int = 0
    ) -> Desc:
        return cls("FILL", dst=dst, dst_off=dst_off, len=length, pattern=pattern, cookie=cookie)

    @classmethod
    def maint(
        cls,
        op: str,
        dst: int = 0,
        length: int = 0,
        *,
        dst_off: int = 0,
        whole: bool = False,
        cookie: int = 0,
    ) -> Desc:
        return cls(
            op,
            dst=dst,
            dst_off=dst_off,
            len=length,
            cookie=cookie,
            flags={"WHOLE"} if whole else set(),
        )

    @classmethod
    def raw(
        cls,
        op: str,
        *,
        src: int = 0,
        dst: int = 0,
        length: int = 0,
        pattern: int = 0,
        cookie: int = 0,
    ) -> Desc:
        """A device descriptor exactly as given: src and dst are DMA addresses."""
        return cls(
            op, src_off=src, dst_off=dst, len=length, pattern=pattern, cookie=cookie, flags={"RAW"}
        )

    def to_fields(self) -> dict[str, Any]:
        flags = _flag_value(spec.UdescFlags, self.flags)
        return {
            "op": int(hw.Opcode.encmapping[self.op]),
            "flags": flags,
            "src": self.src,
            "dst": self.dst,
            "src_off": self.src_off,
            "dst_off": self.dst_off,
            "len": self.len,
            "pattern": self.pattern,
            "cookie": self.cookie,
        }


def _flag_names(con: c.FlagsEnum, value: int) -> set[str]:
    return {name for name, bit in con.flags.items() if value & bit}


def _flag_value(con: c.FlagsEnum, names: int | str | Sequence[str] | set[str]) -> int:
    if isinstance(names, int):
        return names
    if isinstance(names, str):
        names = [names]
    value = 0
    for name in names:
        try:
            value |= con.flags[name]
        except KeyError:
            expected = ", ".join(con.flags)
            raise ValueError(f"unknown flag {name!r}: expected one of {expected}") from None
    return value


def _enum_value(con: c.Enum, name: int | str) -> int:
    if isinstance(name, int):
        return name
    try:
        return int(con.encmapping[name])
    except KeyError:
        expected = ", ".join(str(k) for k in con.encmapping)
        raise ValueError(f"unknown value {name!r}: expected one of {expected}") from None


def status_name(status: int) -> str:
    if status == spec.RESULT_RING_ERROR:
        return "RING_ERROR"
    return str(hw.Status.decmapping.get(status, status))


# ---------------------------------------------------------------------------------------------
# The client


class AgentClient(StreamClient[int, tuple[int, bytes]]):
    """One connection to the agent. Use `async with AgentClient.over_socket(sock) as agent:`
    or construct it over an asyncio stream pair and call `start()`."""

    READER_NAME = "agent-replies"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(reader, writer)
        self.timeout = timeout
        self._seq = itertools.count(1)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def over_socket(cls, sock: socket.socket, **kwargs: Any) -> Self:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer, **kwargs)
        client.start()
        return client

    async def _read_reply(self) -> None:
        head = await self._reader.readexactly(spec.HEADER_SIZE)
        try:
            header = spec.Header.parse(head)
        except c.ConstructError:  # a reserved field set
            header = None
        if header is None or header.magic != spec.MAGIC or header.length > spec.MAX_PAYLOAD:
            raise AgentConnectionLost(
                f"agent sent a bad header ({head.hex()}): the stream is out of step"
            )
        payload = await self._reader.readexactly(header.length)
        fut = self._take(header.seq)
        if fut is None:
            log.warning("agent reply to unknown request %d dropped", header.seq)
        elif not fut.done():
            fut.set_result((header.status, payload))

    def _connection_lost(self, exc: Exception | None) -> Exception:
        if exc is None:
            return AgentConnectionLost("agent connection closed")
        if isinstance(exc, asyncio.IncompleteReadError):
            return AgentConnectionLost("the agent closed the connection")
        if isinstance(exc, AgentConnectionLost):
            return exc
        if isinstance(exc, (ConnectionError, OSError)):
            return AgentConnectionLost(f"agent connection: {exc}")
        log.error("agent reply reader failed", exc_info=exc)
        return AgentConnectionLost(f"agent reply reader failed: {exc!r}")

    async def request(
        self,
        op: spec.Op | str,
        fields: dict[str, Any] | None = None,
        tail: bytes | list[Any] = b"",
        *,
        background: bool = False,
        timeout: float | None = None,
    ) -> tuple[c.Container, Any]:
        """Send one request and wait for its reply: (fixed reply fields, reply tail)."""
        if isinstance(op, str):
            op = spec.OP_BY_NAME[op]
        if self.lost is not None:
            raise AgentConnectionLost(f"agent {op.name}: connection lost ({self.lost})")
        self.start()
        seq = next(self._seq) & 0xFFFFFFFF
        message = spec.encode_request(
            op, seq, fields, tail, flags=spec.HeaderFlags.flags["ASYNC"] if background else 0
        )
        fut = self._expect(seq)
        try:
            async with self._write_lock:
                self._writer.write(message)
                await self._writer.drain()
            status, payload = await asyncio.wait_for(
                fut, timeout if timeout is not None else self.timeout
            )
        except TimeoutError:
            raise AgentTimeout(
                f"agent {op.name}: no reply within {timeout or self.timeout} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise AgentConnectionLost(f"agent {op.name}: {exc}") from exc
        finally:
            self._take(seq)
        if status:
            raise AgentError(op.name, status, payload.decode(errors="replace"))
        try:
            return spec.decode_reply(op, payload)
        except (spec.ProtocolError, c.ConstructError) as exc:
            raise AgentConnectionLost(f"agent {op.name}: malformed reply: {exc}") from exc

    # -----------------------------------------------------------------------------------------
    # System

    async def hello(self) -> Hello:
        r, tail = await self.request("HELLO")
        return Hello(
            r.proto_version,
            r.uapi_version,
            r.page_size,
            r.devices,
            bytes(tail).decode(errors="replace"),
        )

    async def echo(self, data: bytes = b"") -> bytes:
        _, tail = await self.request("ECHO", tail=data)
        return bytes(tail)

    async def read_file(self, path: str, max_len: int = 65536) -> bytes:
        _, tail = await self.request("READ_FILE", {"max_len": max_len}, path.encode())
        return bytes(tail)

    async def write_file(self, path: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self.request("WRITE_FILE", {"path_len": len(path.encode())}, path.encode() + raw)

    async def kmsg_mark(self) -> int:
        r, _ = await self.request("KMSG_MARK")
        return int(r.seq)

    async def kmsg_read(self, since: int = 0, max_len: int = 1 << 20) -> KmsgRecords:
        r, tail = await self.request("KMSG_READ", {"since": since, "max_len": max_len})
        text = bytes(tail).decode(errors="replace")
        records = [rec for rec in text.split("\n") if rec and not rec.startswith(" ")]
        return KmsgRecords(int(r.last_seq), records, bool(r.truncated))

    async def module_unload(self, name: str) -> None:
        await self.request("MODULE_UNLOAD", tail=name.encode())

    async def module_load(self, path: str, params: str = "") -> None:
        await self.request("MODULE_LOAD", tail=path.encode() + b"\0" + params.encode())

    async def close_all(self) -> tuple[int, int]:
        """Forget every buffer and attachment and close the devices: (buffers, attachments)."""
        r, _ = await self.request("CLOSE_ALL")
        return int(r.buffers), int(r.attachments)

    # -----------------------------------------------------------------------------------------
    # Devices

    async def device_info(self, dev: int = 0) -> DeviceInfo:
        r, _ = await self.request("DEVICE_INFO", {"dev": dev})
        return DeviceInfo(
            index=r.index,
            hw_id=r.hw_id,
            hw_version=r.hw_version,
            caps=_flag_names(hw.Caps, r.caps),
            cache_line=r.cache_line,
            cache_size=r.cache_size,
            cache_ways=r.cache_ways,
            iotlb_entries=r.iotlb_entries,
            max_xfer=r.max_xfer,
            ring_entries=r.ring_entries,
            irq_mode="msix" if r.irq_mode else "poll",
            dma_mask_bits=r.dma_mask_bits,
            iommu_group=r.iommu_group,
            iommu_domain=str(spec.IommuDomain.decmapping.get(r.iommu_domain, r.iommu_domain)),
            pci_name=bytes(r.pci_name).split(b"\0", 1)[0].decode(),
        )

    async def stats(self, dev: int = 0, *, reset: bool = False) -> Stats:
        """The driver's counters for the device (optionally zeroing them) and the device's own
        counters (BAR0; zeroed only over QMP)."""
        r, _ = await self.request("STATS", {"dev": dev, "flags": 1 if reset else 0})
        driver = dict(zip(spec.DRIVER_STAT_NAMES, r.driver, strict=False))
        n = min(r.ndevice, len(hw.COUNTER_NAMES))
        device = dict(zip(hw.COUNTER_NAMES[:n], r.device[:n], strict=True))
        return Stats(driver, device)

    # -----------------------------------------------------------------------------------------
    # Buffers

    async def buf_create(
        self,
        kind: str,
        size: int,
        *,
        dev: int = 0,
        flags: int | str | Sequence[str] = 0,
        faults: int | str | Sequence[str] = 0,
    ) -> Buffer:
        """kind: "NCDMA" (exported by device dev), "UDMABUF", "HEAP_SYSTEM" or "VGEM"."""
        r, _ = await self.request(
            "BUF_CREATE",
            {
                "kind": kind,
                "dev": dev,
                "size": size,
                "flags": _flag_value(spec.BufFlags, flags),
                "faults": _flag_value(spec.Faults, faults),
            },
        )
        return Buffer(r.buf, r.handle, r.size)

    async def buf_free(self, buf: int) -> None:
        await self.request("BUF_FREE", {"buf": buf})

    async def buf_info(self, buf: int, dev: int = spec.ANY_DEVICE) -> BufInfo:
        r, _ = await self.request("BUF_INFO", {"buf": buf, "dev": dev})
        return BufInfo(
            kind=str(r.kind),
            state=_flag_names(spec.BufState, r.state),
            size=r.size,
            flags=_flag_names(spec.BufFlags, r.flags),
            faults=_flag_names(spec.Faults, r.faults),
            attachments=r.attachments,
            mappings=r.mappings,
            pins=r.pins,
            cpu_owners=r.cpu_owners,
            moves=r.moves,
            generation=r.generation,
        )

    async def buf_move(self, buf: int) -> None:
        await self.request("BUF_MOVE", {"buf": buf})

    async def buf_revoke(self, buf: int) -> None:
        await self.request("BUF_REVOKE", {"buf": buf})

    async def buf_set_faults(self, buf: int, faults: int | str | Sequence[str]) -> None:
        await self.request(
            "BUF_SET_FAULTS", {"buf": buf, "faults": _flag_value(spec.Faults, faults)}
        )

    async def buf_pages(self, buf: int, first: int = 0, count: int = 1) -> list[int]:
        """Physical addresses of pages first..first+count-1 (0: not present)."""
        _, items = await self.request("BUF_PAGES", {"buf": buf, "count": count, "first": first})
        return [int(i.pa) for i in items]

    # -----------------------------------------------------------------------------------------
    # CPU access (through the agent's mapping of the buffer; no implicit sync)

    async def cpu_write_pattern(
        self, buf: int, offset: int, length: int, seed: int, *, background: bool = False
    ) -> None:
        """Write spec.agent.pattern(seed, length) at offset."""
        await self.request(
            "CPU_WRITE",
            {"buf": buf, "mode": "PATTERN", "offset": offset, "len": length, "seed": seed},
            background=background,
        )

    async def cpu_write(
        self, buf: int, offset: int, data: bytes, *, background: bool = False
    ) -> None:
        await self.request(
            "CPU_WRITE",
            {"buf": buf, "mode": "DATA", "offset": offset, "len": len(data), "seed": 0},
            data,
            background=background,
        )

    async def cpu_fill(
        self, buf: int, offset: int, length: int, byte: int, *, background: bool = False
    ) -> None:
        await self.request(
            "CPU_WRITE",
            {"buf": buf, "mode": "BYTE", "offset": offset, "len": length, "seed": byte & 0xFF},
            background=background,
        )

    async def cpu_read(
        self, buf: int, offset: int, length: int, *, background: bool = False
    ) -> bytes:
        _, tail = await self.request(
            "CPU_READ",
            {"buf": buf, "mode": "BYTES", "offset": offset, "len": length},
            background=background,
        )
        return bytes(tail)

    async def cpu_crc32(self, buf: int, offset: int, length: int) -> int:
        r, _ = await self.request(
            "CPU_READ", {"buf": buf, "mode": "CRC32", "offset": offset, "len": length}
        )
        return int(r.crc32)

    async def cpu_verify(self, buf: int, offset: int, length: int, seed: int) -> Verify:
        r, _ = await self.request(
            "CPU_VERIFY", {"buf": buf, "offset": offset, "len": length, "seed": seed}
        )
        first = None if r.first == (1 << 64) - 1 else int(r.first)
        return Verify(int(r.mismatches), first, int(r.expected), int(r.actual))

    async def sync(
        self,
        buf: int,
        *,
        end: bool,
        read: bool = True,
        write: bool = True,
        background: bool = False,
    ) -> None:
        """DMA_BUF_IOCTL_SYNC: start (end=False) or end a CPU access."""
        flags = {"READ": read, "WRITE": write, "END": end}
        await self.request("SYNC", {"buf": buf, "flags": flags}, background=background)

    # -----------------------------------------------------------------------------------------
    # Attachments

    async def attach(
        self,
        buf: int,
        dev: int = 0,
        *,
        flags: int | str | Sequence[str] = 0,
        faults: int | str | Sequence[str] = 0,
    ) -> Attachment:
        r, _ = await self.request(
            "ATTACH",
            {
                "buf": buf,
                "dev": dev,
                "flags": _flag_value(spec.AttFlags, flags),
                "faults": _flag_value(spec.Faults, faults),
            },
        )
        return Attachment(r.att, r.handle, dev, buf)

    async def detach(self, att: int) -> None:
        await self.request("DETACH", {"att": att})

    async def map(
        self,
        att: int,
        direction: str | int = "BIDIRECTIONAL",
        *,
        timeout_ms: int = 0,
        background: bool = False,
    ) -> int:
        """The device takes ownership; returns the number of DMA segments."""
        r, _ = await self.request(
            "MAP",
            {
                "att": att,
                "dir": _enum_value(spec.Direction, direction),
                "timeout_ms": timeout_ms,
            },
            background=background,
            timeout=max(self.timeout, timeout_ms / 1000 + 5),
        )
        return int(r.nsegs)

    async def unmap(self, att: int, *, background: bool = False) -> None:
        await self.request("UNMAP", {"att": att}, background=background)

    async def att_info(self, att: int, max_segs: int = 1024) -> AttInfo:
        r, items = await self.request("ATT_INFO", {"att": att, "max_segs": max_segs})
        return AttInfo(
            state=_flag_names(spec.AttState, r.state),
            dir=str(spec.Direction.decmapping.get(r.dir, r.dir)),
            flags=_flag_names(spec.AttFlags, r.flags),
            faults=_flag_names(spec.Faults, r.faults),
            nsegs=r.nsegs,
            size=r.size,
            maps=r.maps,
            generation=r.generation,
            segs=[(int(s.addr), int(s.len)) for s in items],
        )

    async def att_sync(self, att: int, *, for_cpu: bool) -> None:
        direction = "CPU" if for_cpu else "DEVICE"
        await self.request(
            "ATT_SYNC", {"att": att, "flags": _enum_value(spec.AttSyncFor, direction)}
        )

    async def att_set_faults(self, att: int, faults: int | str | Sequence[str]) -> None:
        await self.request(
            "ATT_SET_FAULTS", {"att": att, "faults": _flag_value(spec.Faults, faults)}
        )

    # -----------------------------------------------------------------------------------------
    # Descriptors

    async def submit(self, dev: int, descs: Sequence[Desc]) -> Batch:
        r, _ = await self.request("SUBMIT", {"dev": dev}, [d.to_fields() for d in descs])
        return Batch(int(r.batch), int(r.pieces))

    async def wait(
        self,
        dev: int,
        batch: int | Batch,
        count: int,
        *,
        timeout_ms: int = 0,
        background: bool = False,
    ) -> list[Result]:
        batch_id = batch.id if isinstance(batch, Batch) else batch
        _, items = await self.request(
            "WAIT",
            {
                "dev": dev,
                "timeout_ms": timeout_ms,
                "batch": batch_id,
                "count": count,
            },
            background=background,
            timeout=max(self.timeout, timeout_ms / 1000 + 5),
        )
        return [Result(status_name(i.status), int(i.pieces), int(i.done)) for i in items]

    async def run(
        self, dev: int, descs: Sequence[Desc], *, timeout_ms: int = 0, background: bool = False
    ) -> list[Result]:
        """Submit and wait in one round trip."""
        _, items = await self.request(
            "RUN",
            {"dev": dev, "timeout_ms": timeout_ms},
            [d.to_fields() for d in descs],
            background=background,
            timeout=max(self.timeout, timeout_ms / 1000 + 5),
        )
        return [Result(status_name(i.status), int(i.pieces), int(i.done)) for i in items]

    async def cache_op(
        self,
        dev: int,
        op: str,
        *,
        att: int = 0,
        offset: int = 0,
        length: int = 0,
        whole: bool = False,
        raw: bool = False,
    ) -> str:
        """CLEAN, INVALIDATE or CLEAN_INVALIDATE of an attachment's range, of a raw DMA range,
        or of the whole cache; returns the device's status name."""
        flags = _flag_value(
            spec.UdescFlags, [n for n, on in (("WHOLE", whole), ("RAW", raw)) if on]
        )
        r, _ = await self.request(
            "CACHE_OP",
            {
                "dev": dev,
                "op": int(hw.Opcode.encmapping[op]),
                "flags": flags,
                "att": att,
                "offset": offset,
                "len": length,
            },
        )
        return status_name(r.status)
