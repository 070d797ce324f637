"""The ncdma device's binary interface: PCI identity, registers, descriptors, statuses, counters.

This module is the single source of truth. The C header `qemu-devices/ncdma-hw.h` (used by the
QEMU device and the guest driver) is generated from it by `dmalab.spec.cheader`, and a test fails
when the committed header and these declarations disagree. docs/ncdma.md describes the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import construct as c

PCI_VENDOR_ID = 0x1234
PCI_DEVICE_ID = 0xDCA0
PCI_REVISION = 1
#: BAR holding the registers; the MSI-X table and PBA live in an exclusive BAR of their own.
REGS_BAR = 0
MSIX_BAR = 1
REGS_BAR_SIZE = 0x1000
MSIX_VECTORS = 2
#: MSI-X vector numbers.
VEC_COMPLETION = 0
VEC_ERROR = 1

ID_MAGIC = 0x6E63646D  # "ncdm" read as a little-endian u32 at offset 0
VERSION = 0x00010000  # major 1, minor 0

DESC_SIZE = 64
RING_ALIGN = DESC_SIZE
RING_MIN_ENTRIES = 2
RING_MAX_ENTRIES = 65536

Opcode = c.Enum(
    c.Int8ul,
    NOP=0,
    COPY=1,  # dst[0:len] = src[0:len]; overlapping ranges give unspecified (but safe) results
    FILL=2,  # dst[0:len] = the 8-byte pattern repeated, starting at pattern byte 0
    CLEAN=3,  # write back dirty lines of dst[0:len] (or the whole cache with WHOLE)
    INVALIDATE=4,  # drop lines of dst[0:len] (or all); dirty bytes are lost
    CLEAN_INVALIDATE=5,  # write back, then drop
)

DescFlags = c.FlagsEnum(
    c.Int8ul,
    IRQ=0x01,  # raise the completion vector when this descriptor completes
    WHOLE=0x02,  # maintenance opcodes act on the whole cache; dst/len are ignored
)
DESC_FLAGS_VALID = 0x03

Status = c.Enum(
    c.Int32ul,
    PENDING=0,  # written by the driver; the device never writes it
    OK=1,
    IOMMU_FAULT=2,  # an IOVA did not translate with the needed permission; bytes before it landed
    BAD_OPCODE=3,
    BAD_FLAGS=4,  # reserved flag bits or reserved fields set
    BAD_LENGTH=5,  # zero or over MAX_XFER for a data opcode
    BAD_ADDRESS=6,  # address + length wraps around 2^64
    BUS_ERROR=7,  # the translated address is not memory (decode error past the IOMMU)
)

#: One ring entry. The device reads it once, executes it, then writes `status` and `done`.
Descriptor = c.Struct(
    "opcode" / Opcode,
    "flags" / DescFlags,
    "reserved0" / c.Const(0, c.Int16ul) * "must be zero",
    "status" / Status * "written by the device on completion",
    "cookie" / c.Int64ul * "opaque to the device; echoed into logs",
    "src" / c.Int64ul * "source IOVA (COPY)",
    "dst" / c.Int64ul * "destination IOVA (COPY, FILL, maintenance ranges)",
    "len" / c.Int64ul * "bytes",
    "pattern" / c.Int64ul * "FILL pattern, little-endian byte order",
    "done" / c.Int64ul * "written by the device: bytes transferred before completion or fault",
    "reserved1" / c.Const(0, c.Int64ul) * "must be zero",
)


def with_free_reserved(struct: c.Struct) -> c.Struct:
    """`struct` with each `Const` field a plain one that defaults to the constant: the same
    layout, names and docs, but a caller may set a reserved field and parse one that is set."""

    def free(sc: c.Construct) -> c.Construct:
        name, docs, inner = sc.name, "", sc
        while isinstance(inner, c.Renamed):
            docs = docs or (inner.docs or "")
            inner = inner.subcon
        if not isinstance(inner, c.Const):
            return sc
        return name / c.Default(inner.subcon, inner.value) * docs

    return c.Struct(*(free(sc) for sc in struct.subcons))


#: A descriptor as a hostile driver may write it (reserved fields set): for tests and the fuzzer.
RawDescriptor = with_free_reserved(Descriptor)


Ctrl = c.FlagsEnum(
    c.Int32ul,
    ENABLE=0x1,  # fetch and execute descriptors between HEAD and TAIL
    RESET=0x2,  # write 1: stop, clear ring state and errors (cache and counters are kept)
    IRQ_ENABLE=0x4,
)

DevStatus = c.FlagsEnum(
    c.Int32ul,
    ENABLED=0x1,
    BUSY=0x2,  # descriptors between HEAD and TAIL are still to be executed
    RING_ERROR=0x4,  # the device stopped; ERROR holds the reason; RESET clears it
)

RingError = c.Enum(
    c.Int32ul,
    NONE=0,
    BAD_BASE=1,  # RING_BASE not aligned to 64 bytes, or base + size wraps
    BAD_SIZE=2,  # RING_SIZE not a power of two in [2, 65536]
    BAD_TAIL=3,  # TAIL >= RING_SIZE
    FETCH_FAULT=4,  # a descriptor could not be read through the IOMMU
    STATUS_FAULT=5,  # a completion could not be written back
    NOT_READY=6,  # ENABLE set or TAIL written while the ring is not configured
)

Caps = c.FlagsEnum(
    c.Int32ul,
    CACHE=0x1,  # the device has a write-back cache (coherent=off)
    IOTLB=0x2,  # the device caches translations
    IOMMU=0x4,  # an IOMMU translates this device's DMA (known once the guest enabled it)
    IOMMU_EVENTS=0x8,  # MAP and UNMAP notifications are counted
    DEGRADED=0x10,  # only UNMAP notifications are available: MAP counts are not meaningful
)

IrqStatus = c.FlagsEnum(
    c.Int32ul,
    COMPLETION=0x1,  # write 1 to clear
    ERROR=0x2,
)

ViolationKind = c.Enum(
    c.Int32ul,
    STALE_READ=1,
    LOST_WRITE=2,
    CONFLICTING_WRITE=3,
    WRITEBACK_AFTER_UNMAP=4,
)

#: Counters, in BAR0 at COUNTERS_OFFSET (read-only u64s) and over QMP as the `counters` property.
Counters = c.Struct(
    "desc_completed" / c.Int64ul * "descriptors completed with OK",
    "desc_errors" / c.Int64ul * "descriptors completed with any other status",
    "bytes_read" / c.Int64ul * "data bytes the engine read (through the cache when present)",
    "bytes_written" / c.Int64ul * "data bytes the engine wrote",
    "cache_hits" / c.Int64ul,
    "cache_misses" / c.Int64ul,
    "cache_evictions" / c.Int64ul * "valid lines replaced to make room",
    "cache_writebacks" / c.Int64ul * "dirty lines written to memory (eviction or maintenance)",
    "cache_invalidations" / c.Int64ul * "lines dropped by maintenance",
    "stale_reads" / c.Int64ul,
    "lost_writes" / c.Int64ul,
    "conflicting_writes" / c.Int64ul,
    "writebacks_after_unmap" / c.Int64ul,
    "iotlb_hits" / c.Int64ul,
    "iotlb_misses" / c.Int64ul,
    "iommu_map_events" / c.Int64ul,
    "iommu_unmap_events" / c.Int64ul,
    "iommu_remaps" / c.Int64ul * "MAP events for an IOVA range mapped before",
    "translation_faults" / c.Int64ul,
    "bus_errors" / c.Int64ul,
    "ring_errors" / c.Int64ul,
    "irqs" / c.Int64ul * "MSI-X messages sent",
    "violations_logged" / c.Int64ul,
    "violations_dropped" / c.Int64ul * "violations not logged because the log was full",
)
COUNTER_NAMES: tuple[str, ...] = tuple(sc.name for sc in Counters.subcons)

COUNTERS_OFFSET = 0x100

#: BAR0. Registers are 32 bits wide; RING_BASE is written as two halves (LO first, then HI).
Registers = c.Struct(
    "ID" / c.Int32ul * "RO: ID_MAGIC",
    "VERSION" / c.Int32ul * "RO: major << 16 | minor",
    "CAPS" / Caps * "RO",
    "CACHE_LINE" / c.Int32ul * "RO: cache line size in bytes (0: coherent)",
    "CACHE_SIZE" / c.Int32ul * "RO: cache capacity in bytes (0: coherent)",
    "CACHE_WAYS" / c.Int32ul * "RO: associativity",
    "IOTLB_ENTRIES" / c.Int32ul * "RO: device IOTLB entries (0: none)",
    "MAX_XFER" / c.Int32ul * "RO: largest len accepted for a data descriptor",
    "CTRL" / Ctrl * "RW",
    "STATUS" / DevStatus * "RO",
    "ERROR" / RingError * "RO: why the ring stopped",
    "IRQ_STATUS" / IrqStatus * "RW1C",
    "RING_BASE_LO" / c.Int32ul * "RW: ring IOVA, low half",
    "RING_BASE_HI" / c.Int32ul * "RW: ring IOVA, high half",
    "RING_SIZE" / c.Int32ul * "RW: entries, a power of two",
    "RING_HEAD" / c.Int32ul * "RO: next entry the device executes",
    "RING_TAIL" / c.Int32ul * "RW: doorbell; the driver's next free entry",
    "COMPLETED" / c.Int32ul * "RO: descriptors completed since RESET, wrapping",
    c.Padding(COUNTERS_OFFSET - 18 * 4),
    "COUNTERS" / Counters * "RO: 64-bit counters, see Counters",
)


def register_offsets() -> dict[str, int]:
    """Offset of every named register in BAR0, computed from the declaration."""
    offsets: dict[str, int] = {}
    offset = 0
    for sc in Registers.subcons:
        if sc.name:
            offsets[sc.name] = offset
        offset += sc.sizeof()
    return offsets


REG = register_offsets()


# ---------------------------------------------------------------------------------------------
# `-device ncdma` properties: the one table the device (through the NCDMA_PROPERTIES X-macro
# in ncdma-hw.h: its property list and realize's range checks) and the topology files (their
# defaults, checks and -device arguments) are made from.


@dataclass(frozen=True)
class DeviceProperty:
    """A property: QEMU's name (the NcdmaState field is the name with `_` for `-`), its default,
    and the inclusive range realize accepts (booleans: 0..1)."""

    name: str
    default: int
    lo: int
    hi: int
    doc: str
    boolean: bool = False

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


PROPERTIES: tuple[DeviceProperty, ...] = (
    DeviceProperty("coherent", 0, 0, 1, "no device cache (the coherent baseline)", boolean=True),
    DeviceProperty("line-size", 64, 16, 4096, "cache line bytes, a power of two"),
    DeviceProperty(
        "cache-size", 256 << 10, 1, 64 << 20, "cache bytes, a multiple of line-size * cache-ways"
    ),
    DeviceProperty("cache-ways", 8, 1, 64, "associativity"),
    DeviceProperty("iotlb-entries", 64, 0, 4096, "device IOTLB entries (0: none)"),
    DeviceProperty("max-xfer", 64 << 20, 4096, 1 << 30, "largest length of one descriptor"),
    DeviceProperty("vlog-size", 256, 1, 65536, "violations kept (the first ones)"),
    DeviceProperty("xlog-size", 64, 1, 4096, "transactions kept (the latest ones)"),
    DeviceProperty("xlog-segs", 1024, 1, 65536, "IOVA -> PA segments kept per transaction"),
)
PROPERTY: dict[str, DeviceProperty] = {p.name: p for p in PROPERTIES}
