"""The guest agent's protocol: a versioned binary request/response protocol over a byte stream
(the virtio-serial port named `dmalab.agent`).

This module is the single source of truth. The C header `guest-tests/agent/agent-proto.h` is
generated from it by `dmalab.spec.agent_cheader`, and a test fails when they disagree.
docs/guest-agent.md describes the semantics.

Every message is a 24-byte `Header` followed by `length` bytes of payload. A request's payload
is the op's fixed request struct, then its tail (raw bytes, or `count` items of a struct). A
reply echoes `op` and `seq`, sets `REPLY`, and carries `status`: 0, or a Linux errno number.
A successful reply's payload is the op's fixed reply struct and its tail; an error reply's
payload is a UTF-8 message (possibly empty). Exactly one reply answers each request; replies to
requests sent with `ASYNC` may arrive out of order.
"""

from __future__ import annotations

import errno as _errno
import struct as _struct
from dataclasses import dataclass
from enum import Enum

import construct as c

MAGIC = 0x67616D64  # b"dmag" as a little-endian u32
VERSION = 1
HEADER_SIZE = 24
#: Largest payload either side sends (a CPU read of 4 MiB plus its reply struct).
MAX_PAYLOAD = (4 << 20) + 4096
#: The agent's virtio-serial port name.
PORT_NAME = "dmalab.agent"

HeaderFlags = c.FlagsEnum(
    c.Int16ul,
    REPLY=0x1,  # set on every reply
    ASYNC=0x2,  # request: run on a thread of its own; its reply may overtake earlier ones
)
_REPLY = HeaderFlags.flags["REPLY"]

Header = c.Struct(
    "magic" / c.Int32ul * "MAGIC",
    "version" / c.Int16ul * "VERSION",
    "op" / c.Int16ul * "Op code; echoed in the reply",
    "seq" / c.Int32ul * "chosen by the host; echoed in the reply",
    "flags" / HeaderFlags,
    "reserved" / c.Const(0, c.Int16ul) * "zero",
    "status" / c.Int32ul * "reply: 0 or a Linux errno number",
    "length" / c.Int32ul * "payload bytes after the header",
)

# ---------------------------------------------------------------------------------------------
# Vocabulary shared with the driver's UAPI (guest-tests/include/ncdma-uapi.h)

BufKind = c.Enum(
    c.Int32ul,
    NCDMA=1,  # an ncdma export (own pages, dma-buf exporter)
    UDMABUF=2,  # /dev/udmabuf over a sealed memfd
    HEAP_SYSTEM=3,  # /dev/dma_heap/system
    VGEM=4,  # a dumb buffer of the vgem DRM card, exported through PRIME
)

CpuWriteMode = c.Enum(c.Int32ul, PATTERN=0, DATA=1, BYTE=2)
CpuReadMode = c.Enum(c.Int32ul, BYTES=0, CRC32=1)

#: DMA_BUF_IOCTL_SYNC flags (include/uapi/linux/dma-buf.h).
SyncFlags = c.FlagsEnum(c.Int32ul, READ=0x1, WRITE=0x2, END=0x4)
SYNC_START = 0

#: No device: ANY_DEVICE in BUF_INFO asks the device that created (or first imported) it.
ANY_DEVICE = 0xFFFFFFFF
NO_ATTACHMENT = 0

# ---------------------------------------------------------------------------------------------
# The driver's vocabulary, carried through unchanged. These mirror guest-tests/include/ncdma-uapi.h
# (the C header is the driver's own; a test checks that both say the same).

Direction = c.Enum(c.Int32ul, BIDIRECTIONAL=0, TO_DEVICE=1, FROM_DEVICE=2)

BufFlags = c.FlagsEnum(
    c.Int32ul,
    DYNAMIC=0x1,  # pin/unpin: movable while unpinned (seed 001)
    CACHE_SGT=0x2,  # the dma-buf core keeps the first mapping until detach (seed 003)
    EXCLUSIVE=0x4,  # one owner at a time (seed 000)
    SHARE_DOMAIN=0x8,  # one mapping per IOMMU domain, reused by its devices (seed 004)
)
AttFlags = c.FlagsEnum(
    c.Int32ul,
    DYNAMIC=0x1,  # dma_buf_dynamic_attach with move_notify (seed 001)
    CACHE_SGT=0x2,  # map at attach, keep until detach (seed 003)
)
Faults = c.FlagsEnum(
    c.Int32ul,
    SKIP_MAP_INVALIDATE=0x01,
    SKIP_UNMAP_CLEAN=0x02,
    SKIP_UNMAP_MAINT=0x04,
    SKIP_CPU_BEGIN=0x08,
    SKIP_CPU_END=0x10,
    SKIP_TEARDOWN_CLEAN=0x20,
    USE_STALE=0x40,
    # The kernel's streaming DMA API syncs (the CPU caches of a noncoherent platform)
    SKIP_SYNC_FOR_CPU=0x80,
    SKIP_SYNC_FOR_DEVICE=0x100,
    SYNC_WRONG_DIR=0x200,
    CPU_ACCESS_NO_SYNC=0x400,
)
BufState = c.FlagsEnum(c.Int32ul, NCDMA=0x1, REVOKED=0x2, DEVICE_OWNED=0x4)
AttState = c.FlagsEnum(
    c.Int32ul,
    MAPPED=0x01,
    HAS_SGT=0x02,
    INVALIDATED=0x04,
    REVOKED=0x08,
    STALE=0x10,
    DYNAMIC=0x20,
    OWNER=0x40,
)
UdescFlags = c.FlagsEnum(c.Int8ul, WHOLE=0x1, RAW=0x2)
AttSyncFor = c.Enum(c.Int32ul, CPU=1, DEVICE=2)
#: Result status beyond the device's NCDMA_ST_* values.
RESULT_RING_ERROR = 0x100
#: Cookies of the driver's own maintenance descriptors: COOKIE_DRIVER | reason << 32 | handle.
COOKIE_DRIVER = 1 << 63
CookieReason = c.Enum(
    c.Int8ul,
    MAP=1,
    UNMAP=2,
    CPU_BEGIN=3,
    CPU_END=4,
    MOVE=5,
    REVOKE=6,
    MOVE_NOTIFY=7,
    ATT_SYNC=8,
    CACHE_OP=9,
)
IommuDomain = c.Enum(c.Int32ul, NONE=0, IDENTITY=1, DMA=2, OTHER=3)
MAX_BATCH = 4096

# ---------------------------------------------------------------------------------------------
# Items of tails

Desc = c.Struct(
    "op" / c.Int8ul * "NCDMA_UOP_*",
    "flags" / c.Int8ul * "NCDMA_UDESC_* (WHOLE 1, RAW 2)",
    "reserved0" / c.Const(0, c.Int16ul),
    "src" / c.Int32ul * "agent attachment id (COPY), 0 with RAW",
    "dst" / c.Int32ul * "agent attachment id, 0 with RAW or WHOLE",
    "reserved1" / c.Const(0, c.Int32ul),
    "src_off" / c.Int64ul,
    "dst_off" / c.Int64ul,
    "len" / c.Int64ul,
    "pattern" / c.Int64ul,
    "cookie" / c.Int64ul,
)

Result = c.Struct(
    "status" / c.Int32ul * "NCDMA_ST_*, or 0x100 (ring error)",
    "pieces" / c.Int32ul * "device descriptors it became",
    "done" / c.Int64ul * "bytes done",
)

Seg = c.Struct("addr" / c.Int64ul, "len" / c.Int64ul)

PhysAddr = c.Struct("pa" / c.Int64ul * "physical address of the page, 0 if not present")

# ---------------------------------------------------------------------------------------------
# Fixed parts of requests and replies

Empty = c.Struct()

HelloReply = c.Struct(
    "proto_version" / c.Int32ul,
    "uapi_version" / c.Int32ul * "NCDMA_UAPI_VERSION the agent was built with",
    "page_size" / c.Int32ul,
    "devices" / c.Int32ul * "ncdma devices present (/dev/ncdma0..N-1)",
)

ReadFileRequest = c.Struct("max_len" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))
WriteFileRequest = c.Struct(
    "path_len" / c.Int32ul * "the tail is the path, then the data",
    "reserved" / c.Const(0, c.Int32ul),
)
KmsgMarkReply = c.Struct("seq" / c.Int64ul * "sequence number of the newest record")
KmsgReadRequest = c.Struct(
    "since" / c.Int64ul * "records with a larger sequence number",
    "max_len" / c.Int32ul,
    "reserved" / c.Const(0, c.Int32ul),
)
KmsgReadReply = c.Struct(
    "last_seq" / c.Int64ul,
    "records" / c.Int32ul,
    "truncated" / c.Int32ul * "1 if records were left out for max_len",
)
CloseAllReply = c.Struct("buffers" / c.Int32ul, "attachments" / c.Int32ul)

DevRequest = c.Struct("dev" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))

DeviceInfoReply = c.Struct(
    "uapi_version" / c.Int32ul,
    "index" / c.Int32ul,
    "hw_id" / c.Int32ul,
    "hw_version" / c.Int32ul,
    "caps" / c.Int32ul,
    "cache_line" / c.Int32ul,
    "cache_size" / c.Int32ul,
    "cache_ways" / c.Int32ul,
    "iotlb_entries" / c.Int32ul,
    "max_xfer" / c.Int32ul,
    "ring_entries" / c.Int32ul,
    "irq_mode" / c.Int32ul * "0 polling, 1 MSI-X",
    "dma_mask_bits" / c.Int32ul,
    "iommu_group" / c.Int32sl * "-1: none",
    "iommu_domain" / c.Int32ul * "0 none, 1 identity, 2 DMA (IOVAs), 3 other",
    "reserved" / c.Const(0, c.Int32ul),
    "pci_name" / c.Bytes(32) * "NUL-terminated",
)

#: The driver's counters for one device (struct ncdma_drv_stats), in order.
DRIVER_STAT_NAMES: tuple[str, ...] = (
    "imp_maps",
    "imp_unmaps",
    "exp_maps",
    "exp_unmaps",
    "exp_shared_maps",
    "owner_maps",
    "owner_unmaps",
    "syncs",
    "maint_descs",
    "cpu_begins",
    "cpu_ends",
    "moves",
    "moves_refused",
    "move_notifies",
    "remaps",
    "revokes",
    "pins",
    "unpins",
    "owner_waits",
    "submits",
    "descs",
    "pieces",
    "waits",
    "wait_timeouts",
    "irqs",
    "polls",
    "ring_errors",
    "attaches",
    "detaches",
    "maint_fallbacks",
)
DRIVER_STATS_SLOTS = 32
DEVICE_COUNTERS_MAX = 32

StatsRequest = c.Struct("dev" / c.Int32ul, "flags" / c.Int32ul * "1: zero the driver's counters")
StatsReply = c.Struct(
    "driver" / c.Array(DRIVER_STATS_SLOTS, c.Int64ul) * "DRIVER_STAT_NAMES, in order",
    "ndevice" / c.Int32ul * "device counters present",
    "flags" / c.Int32ul,
    "device" / c.Array(DEVICE_COUNTERS_MAX, c.Int64ul) * "spec.ncdma.COUNTER_NAMES, in order",
)

BufCreateRequest = c.Struct(
    "kind" / BufKind,
    "dev" / c.Int32ul * "NCDMA: the exporting device",
    "size" / c.Int64ul,
    "flags" / c.Int32ul * "NCDMA: NCDMA_BUF_*",
    "faults" / c.Int32ul * "NCDMA: NCDMA_FAULT_* of the exporter",
)
BufCreateReply = c.Struct(
    "buf" / c.Int32ul * "agent buffer id",
    "handle" / c.Int32ul * "NCDMA: the handle on dev",
    "size" / c.Int64ul,
)
BufRequest = c.Struct("buf" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))
BufInfoRequest = c.Struct("buf" / c.Int32ul, "dev" / c.Int32ul * "ANY_DEVICE or a device index")
BufInfoReply = c.Struct(
    "kind" / BufKind,
    "state" / c.Int32ul * "NCDMA_BUF_STATE_*",
    "size" / c.Int64ul,
    "flags" / c.Int32ul,
    "faults" / c.Int32ul,
    "attachments" / c.Int32ul,
    "mappings" / c.Int32ul,
    "pins" / c.Int32ul,
    "cpu_owners" / c.Int32ul,
    "moves" / c.Int64ul,
    "generation" / c.Int64ul,
)
BufFaultsRequest = c.Struct("buf" / c.Int32ul, "faults" / c.Int32ul)
BufPagesRequest = c.Struct(
    "buf" / c.Int32ul,
    "count" / c.Int32ul * "pages, at most 65536",
    "first" / c.Int64ul * "page index",
)
CountReply = c.Struct("count" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))

CpuWriteRequest = c.Struct(
    "buf" / c.Int32ul,
    "mode" / CpuWriteMode,
    "offset" / c.Int64ul,
    "len" / c.Int64ul * "PATTERN, BYTE; DATA: the tail's length",
    "seed" / c.Int64ul * "PATTERN: the generator's seed; BYTE: the byte",
)
CpuReadRequest = c.Struct(
    "buf" / c.Int32ul,
    "mode" / CpuReadMode,
    "offset" / c.Int64ul,
    "len" / c.Int64ul,
)
CpuReadReply = c.Struct(
    "crc32" / c.Int32ul * "zlib's CRC-32 of the range",
    "reserved" / c.Const(0, c.Int32ul),
    "len" / c.Int64ul,
)
CpuVerifyRequest = c.Struct(
    "buf" / c.Int32ul,
    "reserved" / c.Const(0, c.Int32ul),
    "offset" / c.Int64ul,
    "len" / c.Int64ul,
    "seed" / c.Int64ul,
)
CpuVerifyReply = c.Struct(
    "mismatches" / c.Int64ul * "bytes that differ from pattern(seed)",
    "first" / c.Int64ul * "offset (from the request's) of the first, or 2^64-1",
    "expected" / c.Int32ul,
    "actual" / c.Int32ul,
)
SyncRequest = c.Struct("buf" / c.Int32ul, "flags" / SyncFlags)

AttachRequest = c.Struct(
    "buf" / c.Int32ul,
    "dev" / c.Int32ul,
    "flags" / c.Int32ul * "NCDMA_ATT_*",
    "faults" / c.Int32ul * "NCDMA_FAULT_*",
)
AttachReply = c.Struct(
    "att" / c.Int32ul * "agent attachment id",
    "handle" / c.Int32ul * "the driver's handle on dev",
)
AttRequest = c.Struct("att" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))
MapRequest = c.Struct(
    "att" / c.Int32ul,
    "dir" / c.Int32ul * "0 bidirectional, 1 to device, 2 from device",
    "timeout_ms" / c.Int32ul,
    "reserved" / c.Const(0, c.Int32ul),
)
MapReply = c.Struct("nsegs" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul))
AttInfoRequest = c.Struct("att" / c.Int32ul, "max_segs" / c.Int32ul)
AttInfoReply = c.Struct(
    "state" / c.Int32ul * "NCDMA_ATT_STATE_*",
    "dir" / c.Int32ul,
    "flags" / c.Int32ul,
    "faults" / c.Int32ul,
    "nsegs" / c.Int32ul * "segments of the mapping",
    "count" / c.Int32ul * "segments in the tail",
    "size" / c.Int64ul,
    "maps" / c.Int64ul,
    "generation" / c.Int64ul,
)
AttSyncRequest = c.Struct("att" / c.Int32ul, "flags" / c.Int32ul * "1 for CPU, 2 for device")
AttFaultsRequest = c.Struct("att" / c.Int32ul, "faults" / c.Int32ul)

SubmitRequest = c.Struct("dev" / c.Int32ul, "count" / c.Int32ul)
SubmitReply = c.Struct(
    "batch" / c.Int64ul, "pieces" / c.Int32ul, "reserved" / c.Const(0, c.Int32ul)
)
WaitRequest = c.Struct(
    "dev" / c.Int32ul,
    "timeout_ms" / c.Int32ul * "0: 30 s",
    "batch" / c.Int64ul,
    "count" / c.Int32ul * "results wanted",
    "reserved" / c.Const(0, c.Int32ul),
)
RunRequest = c.Struct(
    "dev" / c.Int32ul,
    "count" / c.Int32ul,
    "timeout_ms" / c.Int32ul,
    "reserved" / c.Const(0, c.Int32ul),
)
RunReply = c.Struct("batch" / c.Int64ul, "pieces" / c.Int32ul, "count" / c.Int32ul)
CacheOpRequest = c.Struct(
    "dev" / c.Int32ul,
    "op" / c.Int32ul * "3 CLEAN, 4 INVALIDATE, 5 CLEAN_INVALIDATE",
    "flags" / c.Int32ul * "WHOLE 1, RAW 2 (offset is a DMA address)",
    "att" / c.Int32ul,
    "offset" / c.Int64ul,
    "len" / c.Int64ul,
)
CacheOpReply = c.Struct("status" / c.Int32ul * "NCDMA_ST_*", "reserved" / c.Const(0, c.Int32ul))

# ---------------------------------------------------------------------------------------------
# Operations


class TailKind(Enum):
    NONE = 0
    BYTES = 1  # the rest of the payload
    ITEMS = 2  # `count` items of a struct; `count` is a field of the fixed part


@dataclass(frozen=True)
class Tail:
    kind: TailKind = TailKind.NONE
    item: c.Construct | None = None
    count_field: str = "count"

    @property
    def item_size(self) -> int:
        return self.item.sizeof() if self.item is not None else 0


NO_TAIL = Tail()
BYTES = Tail(TailKind.BYTES)


def items(item: c.Construct, count_field: str = "count") -> Tail:
    return Tail(TailKind.ITEMS, item, count_field)


@dataclass(frozen=True)
class Op:
    code: int
    name: str
    doc: str
    request: c.Construct = Empty
    reply: c.Construct = Empty
    request_tail: Tail = NO_TAIL
    reply_tail: Tail = NO_TAIL


OPS: tuple[Op, ...] = (
    Op(
        0x01,
        "HELLO",
        "protocol and driver versions, page size, device count; tail: uname -r",
        reply=HelloReply,
        reply_tail=BYTES,
    ),
    Op(0x02, "ECHO", "the request's tail, back", request_tail=BYTES, reply_tail=BYTES),
    Op(
        0x03,
        "READ_FILE",
        "up to max_len bytes of the file named by the tail",
        request=ReadFileRequest,
        request_tail=BYTES,
        reply_tail=BYTES,
    ),
    Op(
        0x04,
        "WRITE_FILE",
        "write data to a file (sysfs, procfs); tail: path then data",
        request=WriteFileRequest,
        request_tail=BYTES,
    ),
    Op(0x05, "KMSG_MARK", "the newest kernel log sequence number", reply=KmsgMarkReply),
    Op(
        0x06,
        "KMSG_READ",
        "kernel log records after a mark; tail: /dev/kmsg records",
        request=KmsgReadRequest,
        reply=KmsgReadReply,
        reply_tail=BYTES,
    ),
    Op(0x07, "MODULE_UNLOAD", "delete_module; tail: the module name", request_tail=BYTES),
    Op(0x08, "MODULE_LOAD", "finit_module; tail: path, NUL, parameters", request_tail=BYTES),
    Op(
        0x09,
        "CLOSE_ALL",
        "forget every buffer and attachment, close the devices",
        reply=CloseAllReply,
    ),
    Op(
        0x10,
        "DEVICE_INFO",
        "NCDMA_IOC_INFO of /dev/ncdma<dev>",
        request=DevRequest,
        reply=DeviceInfoReply,
    ),
    Op(
        0x11,
        "STATS",
        "driver and device counters (NCDMA_IOC_STATS)",
        request=StatsRequest,
        reply=StatsReply,
    ),
    Op(
        0x20,
        "BUF_CREATE",
        "a buffer: an ncdma export, a udmabuf, a system dma-heap or a vgem buffer",
        request=BufCreateRequest,
        reply=BufCreateReply,
    ),
    Op(0x21, "BUF_FREE", "detach and forget a buffer", request=BufRequest),
    Op(0x22, "BUF_INFO", "NCDMA_IOC_BUF_INFO", request=BufInfoRequest, reply=BufInfoReply),
    Op(0x23, "BUF_MOVE", "the exporter moves the backing pages", request=BufRequest),
    Op(0x24, "BUF_REVOKE", "the exporter revokes every mapping", request=BufRequest),
    Op(0x25, "BUF_SET_FAULTS", "faulty mode of the exporter", request=BufFaultsRequest),
    Op(
        0x26,
        "BUF_PAGES",
        "physical addresses of pages of the buffer (its CPU mapping)",
        request=BufPagesRequest,
        reply=CountReply,
        reply_tail=items(PhysAddr),
    ),
    Op(
        0x30,
        "CPU_WRITE",
        "CPU writes through the buffer's mapping (no sync)",
        request=CpuWriteRequest,
        request_tail=BYTES,
    ),
    Op(
        0x31,
        "CPU_READ",
        "CPU reads a range: bytes or their CRC-32",
        request=CpuReadRequest,
        reply=CpuReadReply,
        reply_tail=BYTES,
    ),
    Op(
        0x32,
        "CPU_VERIFY",
        "compare a range with pattern(seed)",
        request=CpuVerifyRequest,
        reply=CpuVerifyReply,
    ),
    Op(0x33, "SYNC", "DMA_BUF_IOCTL_SYNC on the buffer", request=SyncRequest),
    Op(
        0x40,
        "ATTACH",
        "attach a buffer to a device (imports it there first if needed)",
        request=AttachRequest,
        reply=AttachReply,
    ),
    Op(0x41, "DETACH", "detach (unmaps first)", request=AttRequest),
    Op(
        0x42,
        "MAP",
        "the device takes ownership (NCDMA_IOC_MAP)",
        request=MapRequest,
        reply=MapReply,
    ),
    Op(0x43, "UNMAP", "the device gives ownership back", request=AttRequest),
    Op(
        0x44,
        "ATT_INFO",
        "state and DMA segments of an attachment",
        request=AttInfoRequest,
        reply=AttInfoReply,
        reply_tail=items(Seg),
    ),
    Op(0x45, "ATT_SYNC", "streaming sync without unmapping", request=AttSyncRequest),
    Op(0x46, "ATT_SET_FAULTS", "faulty mode of an attachment", request=AttFaultsRequest),
    Op(
        0x50,
        "SUBMIT",
        "queue a batch of descriptors",
        request=SubmitRequest,
        request_tail=items(Desc),
        reply=SubmitReply,
    ),
    Op(
        0x51,
        "WAIT",
        "wait for a batch; its per-descriptor results",
        request=WaitRequest,
        reply=CountReply,
        reply_tail=items(Result),
    ),
    Op(
        0x52,
        "RUN",
        "SUBMIT then WAIT in one round trip",
        request=RunRequest,
        request_tail=items(Desc),
        reply=RunReply,
        reply_tail=items(Result),
    ),
    Op(
        0x53,
        "CACHE_OP",
        "one device cache maintenance operation",
        request=CacheOpRequest,
        reply=CacheOpReply,
    ),
)

OP_BY_NAME: dict[str, Op] = {op.name: op for op in OPS}
OP_BY_CODE: dict[int, Op] = {op.code: op for op in OPS}

# ---------------------------------------------------------------------------------------------
# Errors


#: Where Linux has two names for one number, the one the kernel uses.
_KERNEL_ERRNO_NAMES = {11: "EAGAIN", 35: "EDEADLK", 95: "EOPNOTSUPP"}


def errno_name(number: int) -> str:
    """The symbolic name of a Linux errno number (the guest's), e.g. 2 -> "ENOENT"."""
    return _KERNEL_ERRNO_NAMES.get(number) or _errno.errorcode.get(number, f"E{number}")


#: What the agent answers to requests it cannot parse.
PROTOCOL_ERRORS = {
    "bad magic (the agent then looks for the next MAGIC)": "EBADMSG",
    "unsupported version": "EPROTONOSUPPORT",
    "payload longer than MAX_PAYLOAD (then looks for the next MAGIC)": "EMSGSIZE",
    "unknown op": "EOPNOTSUPP",
    "payload does not fit the op's structs": "EPROTO",
}

# ---------------------------------------------------------------------------------------------
# The deterministic CPU pattern: xorshift64 per 8 bytes

PATTERN_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def pattern_state(seed: int) -> int:
    state = (seed ^ PATTERN_MIX) & _MASK
    return state or PATTERN_MIX


def pattern(seed: int, length: int) -> bytes:
    """The bytes CPU_WRITE(PATTERN, seed) writes: little-endian xorshift64 (13, 7, 17) words,
    the first word after one step from `pattern_state(seed)`, the last one truncated."""
    state = pattern_state(seed)
    words = []
    for _ in range((length + 7) // 8):
        state ^= (state << 13) & _MASK
        state ^= state >> 7
        state ^= (state << 17) & _MASK
        words.append(state)
    return _struct.pack(f"<{len(words)}Q", *words)[:length]


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


class ProtocolError(ValueError):
    """Bytes that are not a well-formed message of this protocol."""


def encode_payload(fixed_con: c.Construct, tail: Tail, fields: dict, data: bytes | list) -> bytes:
    if tail.kind is TailKind.ITEMS:
        items_list = list(data)
        fields = {**fields, tail.count_field: len(items_list)}
        assert tail.item is not None
        return fixed_con.build(fields) + b"".join(tail.item.build(i) for i in items_list)
    body = fixed_con.build(fields)
    if tail.kind is TailKind.BYTES:
        return body + bytes(data)
    if data:
        raise ProtocolError("this message has no tail")
    return body


def decode_payload(
    fixed_con: c.Construct, tail: Tail, payload: bytes
) -> tuple[c.Container, object]:
    """(fixed fields, tail) of a payload: tail is bytes, a list of items, or None."""
    size = fixed_con.sizeof()
    if len(payload) < size:
        raise ProtocolError(f"payload of {len(payload)} bytes is shorter than {size}")
    fixed = fixed_con.parse(payload[:size])
    rest = payload[size:]
    if tail.kind is TailKind.NONE:
        if rest:
            raise ProtocolError(f"{len(rest)} unexpected bytes after the fixed part")
        return fixed, None
    if tail.kind is TailKind.BYTES:
        return fixed, rest
    count = int(fixed[tail.count_field])
    if len(rest) != count * tail.item_size:
        raise ProtocolError(f"{len(rest)} tail bytes for {count} items of {tail.item_size} bytes")
    assert tail.item is not None
    return fixed, [
        tail.item.parse(rest[i * tail.item_size : (i + 1) * tail.item_size]) for i in range(count)
    ]


def encode_header(
    op: int,
    seq: int,
    length: int,
    *,
    flags: int = 0,
    status: int = 0,
    magic: int = MAGIC,
    version: int = VERSION,
) -> bytes:
    return Header.build(
        {
            "magic": magic,
            "version": version,
            "op": op,
            "seq": seq,
            "flags": flags,
            "status": status,
            "length": length,
        }
    )


def encode_request(
    op: Op, seq: int, fields: dict | None = None, tail: bytes | list = b"", *, flags: int = 0
) -> bytes:
    payload = encode_payload(op.request, op.request_tail, fields or {}, tail)
    return encode_header(op.code, seq, len(payload), flags=flags) + payload


def decode_request(message: bytes) -> tuple[c.Container, Op, c.Container, object]:
    header = Header.parse(message[:HEADER_SIZE])
    op = OP_BY_CODE.get(header.op)
    if op is None:
        raise ProtocolError(f"unknown op {header.op:#x}")
    fixed, tail = decode_payload(op.request, op.request_tail, message[HEADER_SIZE:])
    return header, op, fixed, tail


def encode_reply(
    op: Op, seq: int, fields: dict | None = None, tail: bytes | list = b"", *, flags: int = 0
) -> bytes:
    payload = encode_payload(op.reply, op.reply_tail, fields or {}, tail)
    return encode_header(op.code, seq, len(payload), flags=flags | _REPLY) + payload


def encode_error(op_code: int, seq: int, status: int, message: str = "") -> bytes:
    payload = message.encode()
    return encode_header(op_code, seq, len(payload), flags=_REPLY, status=status) + payload


def decode_reply(op: Op, payload: bytes) -> tuple[c.Container, object]:
    return decode_payload(op.reply, op.reply_tail, payload)
