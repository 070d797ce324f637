"""Programming QEMU's SMMUv3 (arm virt, `iommu=smmuv3`) from the host side, as a driver would.

A linear stream table indexed by StreamID (a PCI device's requester ID) whose entries are abort
STEs until a device is attached; an attached device's STE selects stage-1 translation through
one context descriptor (CD) per domain, which holds the domain's ASID and the root of an AArch64
stage-1 table (4 KiB granule, 48-bit input, no TTB1). Several STEs pointing at one CD share the
domain. Everything lives in guest RAM from a `PhysAllocator` and is written through qtest; the
registers at 0x09050000 are driven through the command queue (CFGI_*, TLBI_*, CMD_SYNC) and faults
are read from the event queue. Interrupts stay off: the queues are polled.

QEMU consumes the command queue synchronously on the CMDQ_PROD write, so a CMD_SYNC has completed
once CMDQ_CONS catches up; the code still checks that, and CMDQ_CONS.ERR and GERROR.CMDQ_ERR.

What reaches IOMMU notifiers (QEMU 10.0 hw/arm/smmuv3.c): only UNMAP, from TLBI_NH_VA (one
notification per naturally aligned block of a range invalidation), TLBI_NH_ASID and
TLBI_NSNH_ALL (the whole address space). virt's SMMU implements both stages ("nested"), so
TLBI_NH_ALL invalidates the IOTLB without notifying anyone: it is not used here.

Register layout and formats: Arm IHI 0070 (SMMUv3) chapters 4-7; QEMU hw/arm/smmuv3-internal.h.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from dmalab.errors import DmalabError
from dmalab.machine.pagetable import (
    IoDomain,
    IoPageTable,
    PagingIommu,
    invalidation_blocks,
    zeroed_page,
)
from dmalab.machine.pci import Bdf, PciDevice
from dmalab.machine.physmem import PAGE_SIZE, PhysAllocator
from dmalab.machine.qtest import QtestClient

log = logging.getLogger(__name__)

#: virt's SMMUv3 (hw/arm/virt.c base_memmap[VIRT_SMMU]): two 64 KiB register pages.
SMMU_BASE = 0x0905_0000
PAGE1 = 0x1_0000

# Registers (offsets from the base; the event queue's PROD and CONS live in page 1)
IDR0 = 0x00
IDR1 = 0x04
IDR3 = 0x0C
IDR5 = 0x14
CR0 = 0x20
CR0ACK = 0x24
GERROR = 0x60
GERRORN = 0x64
STRTAB_BASE = 0x80
STRTAB_BASE_CFG = 0x88
CMDQ_BASE = 0x90
CMDQ_PROD = 0x98
CMDQ_CONS = 0x9C
EVENTQ_BASE = 0xA0
EVENTQ_PROD = PAGE1 + 0xA8
EVENTQ_CONS = PAGE1 + 0xAC

IDR0_S1P = 1 << 1
IDR0_TTF_AARCH64 = 2 << 2
IDR3_RIL = 1 << 10
IDR5_GRAN4K = 1 << 4

CR0_SMMUEN = 1 << 0
CR0_EVENTQEN = 1 << 2
CR0_CMDQEN = 1 << 3

GERROR_CMDQ_ERR = 1 << 0
GERROR_EVENTQ_ABT_ERR = 1 << 2

Q_BASE_RA = 1 << 62  # read-allocate hint for the stream table and the queues
Q_ADDR_MASK = ((1 << 52) - 1) & ~0x3F
CMDQ_CONS_ERR_SHIFT = 24
CMDQ_ERRORS = {1: "illegal command", 2: "abort on command fetch", 3: "ATC invalidation sync"}

# Command opcodes
CMD_CFGI_STE = 0x03
CMD_CFGI_STE_RANGE = 0x04
CMD_CFGI_CD = 0x05
CMD_TLBI_NH_ASID = 0x11
CMD_TLBI_NH_VA = 0x12
CMD_TLBI_NSNH_ALL = 0x30
CMD_SYNC = 0x46
CMD_SIZE = 16
TLBI_TG_4K = 1  # range invalidation with a 4 KiB translation granule

# Event types (IHI 0070 7.3)
EVT_SIZE = 32
EVENT_NAMES = {
    0x01: "F_UUT",
    0x02: "C_BAD_STREAMID",
    0x03: "F_STE_FETCH",
    0x04: "C_BAD_STE",
    0x06: "F_STREAM_DISABLED",
    0x07: "F_TRANSL_FORBIDDEN",
    0x08: "C_BAD_SUBSTREAMID",
    0x09: "F_CD_FETCH",
    0x0A: "C_BAD_CD",
    0x0B: "F_WALK_EABT",
    0x10: "F_TRANSLATION",
    0x11: "F_ADDR_SIZE",
    0x12: "F_ACCESS",
    0x13: "F_PERMISSION",
    0x20: "F_TLB_CONFLICT",
    0x21: "F_CFG_CONFLICT",
}
EVT_F_TRANSLATION = 0x10
EVT_F_PERMISSION = 0x13

# Stream table entry (64 bytes)
STE_SIZE = 64
STE_V = 1 << 0
STE_CFG_ABORT = 0b000 << 1
STE_CFG_S1_TRANS = 0b101 << 1  # stage 1 translates, stage 2 bypassed

# Context descriptor (64 bytes), 4 KiB granule, 48-bit input through TTB0 only
CD_SIZE = 64
CD_T0SZ_48BIT = 64 - 48
CD_TG0_4K = 0 << 6
CD_IRGN0_WBWA = 1 << 8
CD_ORGN0_WBWA = 1 << 10
CD_SH0_INNER = 3 << 12
CD_EPD1 = 1 << 30
CD_V = 1 << 31
CD_AA64 = 1 << 41
CD_R = 1 << 45  # record faults in the event queue
CD_A = 1 << 46  # abort (not stall) faulting transactions
CD_ASID_SHIFT = 48
MAIR_NORMAL_WB = 0xFF  # attribute index 0: Normal, write-back cacheable

# Stage-1 descriptors (VMSAv8-64, 4 KiB granule)
PTE_VALID_TABLE = 0b11  # table at levels 0-2, page at level 3
PTE_AP_UNPRIV = 1 << 6
PTE_AP_RDONLY = 1 << 7
PTE_SH_INNER = 3 << 8
PTE_AF = 1 << 10
PTE_NG = 1 << 11


class SmmuError(DmalabError):
    """The SMMU refused a command, lacks a needed feature, or its queues failed."""


class Stage1Format:
    """AArch64 stage-1 descriptors, as Linux's io-pgtable-arm writes them.

    Stage 1 cannot deny reads: a write-only mapping is read-write.
    """

    def table(self, pa: int) -> int:
        return pa | PTE_VALID_TABLE

    def leaf(self, pa: int, read: bool, write: bool) -> int:
        entry = pa | PTE_VALID_TABLE | PTE_AF | PTE_SH_INNER | PTE_AP_UNPRIV | PTE_NG
        return entry if write else entry | PTE_AP_RDONLY


_FORMAT = Stage1Format()


@dataclass(frozen=True)
class SmmuEvent:
    """One event queue record."""

    type: int
    sid: int
    address: int  # the input address (IOVA) of a translation fault
    read: bool  # RnW: the faulting access was a read
    fault_class: int  # 0 CD fetch, 1 table walk, 2 input address
    address2: int  # the IPA or fetch address, if any

    @property
    def name(self) -> str:
        return EVENT_NAMES.get(self.type, f"event {self.type:#x}")

    @classmethod
    def parse(cls, raw: bytes) -> SmmuEvent:
        w = struct.unpack("<8I", raw)
        return cls(
            type=w[0] & 0xFF,
            sid=w[1],
            address=w[5] << 32 | w[4],
            read=bool(w[3] & 1 << 3),
            fault_class=(w[3] >> 8) & 3,
            address2=w[7] << 32 | w[6],
        )

    def __str__(self) -> str:
        kind = "read" if self.read else "write"
        return f"{self.name} from {Bdf.from_sid(self.sid)}: {kind} at {self.address:#x}"


@dataclass(eq=False)
class SmmuDomain(IoDomain):
    """A stage-1 address space: its page table, ASID and context descriptor."""

    asid: int
    cd: int  # guest-physical address of the context descriptor


class SmmuV3(PagingIommu[SmmuDomain]):
    """One SMMUv3, set up by `setup()` with translation off (incoming transactions bypass)."""

    def __init__(
        self,
        qtest: QtestClient,
        memory: PhysAllocator,
        base: int = SMMU_BASE,
        *,
        cmdq_log2: int = 8,
        eventq_log2: int = 7,
    ) -> None:
        super().__init__(qtest, base)
        self.memory = memory
        self.cmdq_log2 = cmdq_log2
        self.eventq_log2 = eventq_log2
        self.sid_bits = 0
        self.oas = 0  # IDR5.OAS: the output address size, as the CD's IPS field encodes it
        self.stream_table = 0
        self.range_invalidation = False
        self._cmdq = 0
        self._cmdq_prod = 0
        self._eventq = 0
        self._eventq_cons = 0
        self._next_asid = 1
        self.domains: dict[int, SmmuDomain] = {}  # ASID -> domain

    # ------------------------------------------------------------------------------------------
    # Registers

    async def _set_cr0(self, value: int) -> None:
        await self.write32(CR0, value)
        # QEMU acknowledges synchronously; the bound turns a change of that into an error.
        for _ in range(1000):
            if await self.read32(CR0ACK) == value:
                return
        raise SmmuError(f"SMMUv3 CR0 {value:#x} was never acknowledged")

    # ------------------------------------------------------------------------------------------
    # Setup

    async def setup(self, sid_bits: int = 8) -> None:
        """Check the features used, install a stream table of abort STEs for `sid_bits` bits of
        StreamID and the two queues, enable the queues and invalidate every cached structure."""
        idr0, idr1 = await self.read32(IDR0), await self.read32(IDR1)
        idr3, idr5 = await self.read32(IDR3), await self.read32(IDR5)
        log.debug("SMMUv3 IDR0 %#x IDR1 %#x IDR3 %#x IDR5 %#x", idr0, idr1, idr3, idr5)
        if not idr0 & IDR0_S1P or not idr0 & IDR0_TTF_AARCH64:
            raise SmmuError(f"SMMUv3 without AArch64 stage-1 translation (IDR0 {idr0:#x})")
        if not idr5 & IDR5_GRAN4K:
            raise SmmuError(f"SMMUv3 without the 4 KiB granule (IDR5 {idr5:#x})")
        if not 1 <= sid_bits <= idr1 & 0x3F:
            raise SmmuError(f"{sid_bits} StreamID bits: the SMMU has {idr1 & 0x3F}")
        for name, log2, shift in (("command", self.cmdq_log2, 21), ("event", self.eventq_log2, 16)):
            if not 1 <= log2 <= (idr1 >> shift) & 0x1F:
                raise SmmuError(f"SMMUv3 {name} queue of 2^{log2} entries is too large")
        self.oas = idr5 & 0x7
        self.range_invalidation = bool(idr3 & IDR3_RIL)
        self.sid_bits = sid_bits
        await self._set_cr0(0)

        # A linear table must be aligned to its size; every StreamID aborts until attached.
        size = STE_SIZE << sid_bits
        self.stream_table = self.memory.alloc(size, size)
        abort = struct.pack("<8Q", STE_V | STE_CFG_ABORT, *[0] * 7)
        await self.qtest.write(self.stream_table, abort * (1 << sid_bits))
        await self.write64(STRTAB_BASE, self.stream_table | Q_BASE_RA)
        await self.write32(STRTAB_BASE_CFG, sid_bits)  # FMT 0: linear

        self._cmdq = await zeroed_page(self.qtest, self.memory, CMD_SIZE << self.cmdq_log2)
        await self.write64(CMDQ_BASE, self._cmdq | Q_BASE_RA | self.cmdq_log2)
        await self.write32(CMDQ_PROD, 0)
        await self.write32(CMDQ_CONS, 0)
        self._cmdq_prod = 0
        self._eventq = await zeroed_page(self.qtest, self.memory, EVT_SIZE << self.eventq_log2)
        await self.write64(EVENTQ_BASE, self._eventq | Q_BASE_RA | self.eventq_log2)
        await self.write32(EVENTQ_PROD, 0)
        await self.write32(EVENTQ_CONS, 0)
        self._eventq_cons = 0
        await self._set_cr0(CR0_CMDQEN | CR0_EVENTQEN)
        await self.submit(
            [
                _command(CMD_CFGI_STE_RANGE, word2=31),  # range 31: every StreamID
                _command(CMD_TLBI_NSNH_ALL),
            ]
        )

    async def enable_translation(self) -> None:
        await self._set_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)

    # ------------------------------------------------------------------------------------------
    # Command queue

    async def submit(self, commands: list[bytes]) -> None:
        """Issue `commands` and a CMD_SYNC, then check that the SMMU consumed them all."""
        commands = [*commands, _command(CMD_SYNC)]  # CS 0: completion is seen by polling
        entries = 1 << self.cmdq_log2
        for start in range(0, len(commands), entries):
            batch = commands[start : start + entries]
            prod = self._cmdq_prod
            for command in batch:
                await self.qtest.write(self._cmdq + CMD_SIZE * (prod % entries), command)
                prod = (prod + 1) % (2 * entries)  # the index and its wrap bit
            await self.write32(CMDQ_PROD, prod)
            self._cmdq_prod = prod
            await self._wait_consumed(prod)

    async def _wait_consumed(self, prod: int) -> None:
        for _ in range(1000):
            cons = await self.read32(CMDQ_CONS)
            error = (cons >> CMDQ_CONS_ERR_SHIFT) & 0x7F
            if error or await self.global_errors() & GERROR_CMDQ_ERR:
                index = cons % (1 << self.cmdq_log2)  # CONS stops at the failed command
                bad = await self.qtest.read(self._cmdq + CMD_SIZE * index, CMD_SIZE)
                reason = CMDQ_ERRORS.get(error, f"error {error}")
                raise SmmuError(f"SMMUv3 stopped its command queue: {reason} at {bad.hex()}")
            if cons & ((2 << self.cmdq_log2) - 1) == prod:
                return
        raise SmmuError(f"SMMUv3 did not consume its command queue (PROD {prod:#x})")

    # ------------------------------------------------------------------------------------------
    # Domains and devices

    async def new_domain(self, asid: int | None = None) -> SmmuDomain:
        """A context descriptor with a fresh ASID (by default) and an empty stage-1 table."""
        if asid is None:
            asid = self._next_asid
        if asid in self.domains or not 0 < asid < 1 << 16:
            raise SmmuError(f"ASID {asid} is taken or out of range")
        self._next_asid = max(self._next_asid, asid + 1)
        table = await IoPageTable.create(self.qtest, self.memory, _FORMAT)
        cd = await zeroed_page(self.qtest, self.memory)
        low = CD_V | CD_EPD1 | CD_SH0_INNER | CD_ORGN0_WBWA | CD_IRGN0_WBWA | CD_TG0_4K
        low |= CD_T0SZ_48BIT | CD_AA64 | CD_R | CD_A | asid << CD_ASID_SHIFT
        low |= self.oas << 32  # IPS: the output size the SMMU has
        await self.qtest.write(cd, struct.pack("<4Q", low, table.root, 0, MAIR_NORMAL_WB))
        domain = SmmuDomain(table=table, asid=asid, cd=cd)
        self.domains[asid] = domain
        return domain

    async def attach(self, device: Bdf | PciDevice, domain: SmmuDomain) -> None:
        """Point the device's STE at the domain's context descriptor, then invalidate it."""
        sid = self._sid(device)
        await self._write_ste(sid, STE_V | STE_CFG_S1_TRANS | domain.cd)
        leaf = 1  # only the entry of this StreamID (SSID 0) changed
        await self.submit(
            [
                _command(CMD_CFGI_STE, word1=sid, word2=leaf),
                _command(CMD_CFGI_CD, word1=sid, word2=leaf),
            ]
        )

    def _sid(self, device: Bdf | PciDevice) -> int:
        sid = (device.bdf if isinstance(device, PciDevice) else device).sid
        if sid >> self.sid_bits:
            raise SmmuError(f"StreamID {sid:#x} beyond the {self.sid_bits}-bit stream table")
        return sid

    async def _write_ste(self, sid: int, dword0: int) -> None:
        # Dword 2 (S2VMID 0) and the rest stay zero: stage 2 is bypassed.
        await self.qtest.write(
            self.stream_table + STE_SIZE * sid, struct.pack("<8Q", dword0, *[0] * 7)
        )

    # ------------------------------------------------------------------------------------------
    # Invalidation

    async def _invalidate(self, domain: SmmuDomain, iova: int, size: int, *, changed: bool) -> None:
        # The SMMU caches no invalid entry: a new mapping needs no TLBI, a changed one does.
        if changed:
            await self.invalidate_range(domain, iova, size)

    async def invalidate_range(self, domain: SmmuDomain, iova: int, size: int) -> None:
        """TLBI_NH_VA of [iova, iova+size) in the domain's ASID (leaf entries only): one command
        per naturally aligned block with range invalidation, else one per page."""
        commands = []
        max_order = 31 if self.range_invalidation else 0
        for addr, order in invalidation_blocks(iova, size, max_order):
            word0 = CMD_TLBI_NH_VA
            tg = 0
            if self.range_invalidation:
                word0 |= order << 20  # SCALE; NUM 0: one block of 2^SCALE pages
                tg = TLBI_TG_4K
            commands.append(
                _command(word0, word1=domain.asid << 16, word2=1 | tg << 10, address=addr)
            )
        await self.submit(commands)

    async def invalidate_asid(self, domain: SmmuDomain) -> None:
        """TLBI_NH_ASID: everything cached for the domain's ASID."""
        await self.submit([_command(CMD_TLBI_NH_ASID, word1=domain.asid << 16)])

    async def invalidate_all(self) -> None:
        """TLBI_NSNH_ALL: every non-secure translation, of every stage."""
        await self.submit([_command(CMD_TLBI_NSNH_ALL)])

    # ------------------------------------------------------------------------------------------
    # Event queue

    async def events(self) -> list[SmmuEvent]:
        """The records the SMMU wrote since the last call, oldest first (consumed)."""
        entries = 1 << self.eventq_log2
        wrap_index = 2 * entries - 1
        prod = await self.read32(EVENTQ_PROD)
        if prod & ~wrap_index or await self.global_errors() & GERROR_EVENTQ_ABT_ERR:
            raise SmmuError(f"SMMUv3 lost events (EVENTQ_PROD {prod:#x})")
        found = []
        cons = self._eventq_cons
        while cons != prod:
            raw = await self.qtest.read(self._eventq + EVT_SIZE * (cons % entries), EVT_SIZE)
            found.append(SmmuEvent.parse(raw))
            cons = (cons + 1) & wrap_index
        self._eventq_cons = cons
        await self.write32(EVENTQ_CONS, cons)
        return found

    async def global_errors(self) -> int:
        """GERROR bits still active (not acknowledged through GERRORN)."""
        return await self.read32(GERROR) ^ await self.read32(GERRORN)


def _command(word0: int, *, word1: int = 0, word2: int = 0, address: int = 0) -> bytes:
    """A 16-byte command: opcode and fields in word 0, StreamID or ASID << 16 | VMID in word 1,
    and words 2-3 holding the address (bits 63:12) over the low fields of word 2."""
    return struct.pack("<IIQ", word0, word1, address & ~(PAGE_SIZE - 1) | word2)
