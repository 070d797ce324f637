"""Programming QEMU's intel-iommu (VT-d) from the host side, as a guest driver would.

Legacy (non-scalable) mode: a root table indexed by bus, one context table per bus indexed by
devfn, and per domain a 4-level second-level page table (48-bit IOVAs, 4 KiB pages). All tables
live in guest RAM from a `PhysAllocator` and are written through qtest; the registers at
0xfed90000 are driven with register-based invalidation (no invalidation queue).

Every `map`/`unmap` is followed by page-selective IOTLB invalidation of exactly that range. With
`caching-mode=on` that invalidation is also what makes QEMU tell IOMMU notifiers about the change
(MAP after a map, UNMAP after an unmap), so devices that count those events see one per call.

Register layout and bits: Intel VT-d specification chapter 11; QEMU hw/i386/intel_iommu_internal.h.
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

VTD_BASE = 0xFED9_0000

# Registers (offsets from VTD_BASE)
VER = 0x00
CAP = 0x08
ECAP = 0x10
GCMD = 0x18
GSTS = 0x1C
RTADDR = 0x20
CCMD = 0x28
FSTS = 0x34
FECTL = 0x38

# GCMD commands and the GSTS bits that report them
GCMD_TE = 1 << 31
GCMD_SRTP = 1 << 30
GSTS_TES = 1 << 31
GSTS_RTPS = 1 << 30
GSTS_QIES = 1 << 26
GSTS_IRES = 1 << 25
GSTS_CFIS = 1 << 23
#: Status bits that are states, not one-shot commands: a GCMD write must repeat them.
GSTS_PERSISTENT = GSTS_TES | GSTS_QIES | GSTS_IRES | GSTS_CFIS

CCMD_ICC = 1 << 63
CCMD_GLOBAL = 1 << 61
CCMD_DEVICE = 3 << 61

IOTLB_IVT = 1 << 63
IOTLB_GLOBAL = 1 << 60
IOTLB_DOMAIN = 2 << 60
IOTLB_PAGE = 3 << 60

FSTS_PFO = 1 << 0
FSTS_PPF = 1 << 1
FECTL_IM = 1 << 31

FRCD_F = 1 << 63
FRCD_T_READ = 1 << 62

CAP_CM = 1 << 7
CAP_PSI = 1 << 39
SAGAW_48BIT = 1 << 2
ECAP_PT = 1 << 6

# Table entries
ROOT_PRESENT = 1
CONTEXT_PRESENT = 1
CONTEXT_FPD = 1 << 1
CONTEXT_TT_PASSTHROUGH = 2 << 2
CONTEXT_AW_48BIT = 2  # 4-level table
SL_READ = 1 << 0
SL_WRITE = 1 << 1
SL_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)

FAULT_REASONS = {
    0x1: "root entry not present",
    0x2: "context entry not present",
    0x3: "invalid context entry",
    0x4: "address beyond the guest address width",
    0x5: "no write permission",
    0x6: "no read permission",
    0x7: "cannot read a paging entry",
    0x8: "cannot read the root table",
    0x9: "cannot read a context table",
    0xA: "reserved bits set in a root entry",
    0xB: "reserved bits set in a context entry",
    0xC: "reserved bits set in a paging entry",
    0xD: "translation type blocks the request",
    0xE: "output address in the interrupt range",
}


class VtdError(DmalabError):
    """The IOMMU refused or never completed a command, or lacks a needed capability."""


@dataclass(frozen=True)
class VtdCaps:
    """The CAP and ECAP registers, decoded where used."""

    cap: int
    ecap: int

    @property
    def caching_mode(self) -> bool:
        return bool(self.cap & CAP_CM)

    @property
    def sagaw(self) -> int:
        return (self.cap >> 8) & 0x1F

    @property
    def mgaw(self) -> int:
        return ((self.cap >> 16) & 0x3F) + 1

    @property
    def domain_id_bits(self) -> int:
        return 4 + 2 * (self.cap & 0x7)

    @property
    def page_selective(self) -> bool:
        return bool(self.cap & CAP_PSI)

    @property
    def max_address_mask(self) -> int:
        """MAMV: the largest `am` (log2 of pages) one page-selective invalidation may cover."""
        return (self.cap >> 48) & 0x3F

    @property
    def fault_records_offset(self) -> int:
        return ((self.cap >> 24) & 0x3FF) * 16

    @property
    def fault_records(self) -> int:
        return ((self.cap >> 40) & 0xFF) + 1

    @property
    def iotlb_offset(self) -> int:
        """Offset of the IVA register; the IOTLB invalidate register follows at +8."""
        return ((self.ecap >> 8) & 0x3FF) * 16

    @property
    def passthrough(self) -> bool:
        return bool(self.ecap & ECAP_PT)


@dataclass(frozen=True)
class VtdFault:
    """One primary fault record."""

    index: int
    source: Bdf
    address: int  # page of the faulting IOVA
    reason: int
    is_write: bool

    @property
    def reason_text(self) -> str:
        return FAULT_REASONS.get(self.reason, f"reason {self.reason:#x}")

    def __str__(self) -> str:
        kind = "write" if self.is_write else "read"
        return f"{self.source} {kind} at {self.address:#x}: {self.reason_text}"


class SecondLevelFormat:
    """Second-level paging entries: the address with read and write bits."""

    def table(self, pa: int) -> int:
        # Non-leaf entries grant both: the leaf decides what the device may do.
        return pa | SL_READ | SL_WRITE

    def leaf(self, pa: int, read: bool, write: bool) -> int:
        return pa | (SL_READ if read else 0) | (SL_WRITE if write else 0)


@dataclass(eq=False)
class VtdDomain(IoDomain):
    """A second-level address space and its domain id."""

    did: int

    @property
    def root(self) -> int:
        return self.table.root


_FORMAT = SecondLevelFormat()


class IntelIommu(PagingIommu[VtdDomain]):
    """One intel-iommu, set up in legacy mode by `setup()`; translation starts off."""

    def __init__(self, qtest: QtestClient, memory: PhysAllocator, base: int = VTD_BASE) -> None:
        super().__init__(qtest, base)
        self.memory = memory
        self.caps = VtdCaps(0, 0)
        self.root_table = 0
        self._context_tables: dict[int, int] = {}  # bus -> PA
        self._next_did = 1  # with caching mode, domain id 0 is reserved
        self.domains: dict[int, VtdDomain] = {}

    # ------------------------------------------------------------------------------------------
    # Registers (QEMU asserts on the access size of 32-bit registers: never write64 them)

    async def _poll64(self, offset: int, bit: int, *, want_set: bool, what: str) -> int:
        # QEMU completes register commands synchronously; the loop only guards against that
        # changing, and the bound turns a stuck command into an error instead of a hang.
        for _ in range(1000):
            value = await self.read64(offset)
            if bool(value & bit) == want_set:
                return value
        raise VtdError(f"VT-d {what} did not complete (register {offset:#x} = {value:#x})")

    async def _global_command(self, command: int, status_bit: int, on: bool, what: str) -> None:
        status = await self.read32(GSTS) & GSTS_PERSISTENT
        value = status | command if on else status & ~command
        await self.write32(GCMD, value)
        for _ in range(1000):
            if bool(await self.read32(GSTS) & status_bit) == on:
                return
        raise VtdError(f"VT-d {what}: GSTS never reported it")

    # ------------------------------------------------------------------------------------------
    # Setup

    async def setup(self) -> None:
        """Read the capabilities, install an empty root table, flush every cache.

        Fault events stay masked (FECTL.IM, set at reset): faults are read with `faults()`.
        """
        self.caps = VtdCaps(await self.read64(CAP), await self.read64(ECAP))
        if not self.caps.sagaw & SAGAW_48BIT:
            raise VtdError(f"VT-d without 4-level tables (SAGAW {self.caps.sagaw:#x})")
        if not self.caps.page_selective:
            raise VtdError("VT-d without page-selective invalidation")
        log.debug("VT-d CAP %#x ECAP %#x", self.caps.cap, self.caps.ecap)
        self.root_table = await self._zeroed_page()
        await self.write64(RTADDR, self.root_table)  # TTM 00: legacy mode
        await self._global_command(GCMD_SRTP, GSTS_RTPS, True, "set root table pointer")
        await self.invalidate_context()
        await self.invalidate_iotlb()

    async def enable_translation(self) -> None:
        await self._global_command(GCMD_TE, GSTS_TES, True, "translation enable")

    async def disable_translation(self) -> None:
        await self._global_command(GCMD_TE, GSTS_TES, False, "translation disable")

    async def _zeroed_page(self) -> int:
        return await zeroed_page(self.qtest, self.memory)

    # ------------------------------------------------------------------------------------------
    # Domains and devices

    async def new_domain(self, did: int | None = None) -> VtdDomain:
        """A domain with an empty 4-level table; `did` defaults to the next unused id."""
        if did is None:
            did = self._next_did
        if did in self.domains or not 0 < did < 1 << self.caps.domain_id_bits:
            raise VtdError(f"domain id {did} is taken or out of range")
        self._next_did = max(self._next_did, did + 1)
        table = await IoPageTable.create(self.qtest, self.memory, _FORMAT)
        domain = VtdDomain(table=table, did=did)
        self.domains[did] = domain
        return domain

    async def attach(
        self,
        device: Bdf | PciDevice,
        domain: VtdDomain,
        *,
        fault_processing: bool = True,
        passthrough: bool = False,
    ) -> None:
        """Point the device's context entry at the domain (or pass-through), then invalidate."""
        bdf = device.bdf if isinstance(device, PciDevice) else device
        if passthrough and not self.caps.passthrough:
            raise VtdError("this VT-d has no pass-through translation type")
        table = self._context_tables.get(bdf.bus)
        if table is None:
            table = await self._zeroed_page()
            self._context_tables[bdf.bus] = table
            await self.qtest.write(
                self.root_table + 16 * bdf.bus, struct.pack("<QQ", table | ROOT_PRESENT, 0)
            )
        low = domain.root | CONTEXT_PRESENT
        low |= 0 if fault_processing else CONTEXT_FPD
        low |= CONTEXT_TT_PASSTHROUGH if passthrough else 0
        high = CONTEXT_AW_48BIT | domain.did << 8
        await self.qtest.write(table + 16 * bdf.devfn, struct.pack("<QQ", low, high))
        await self.invalidate_context(bdf)
        await self.invalidate_iotlb(domain.did)

    async def detach(self, device: Bdf | PciDevice, domain: VtdDomain) -> None:
        """Clear the device's context entry: its DMA faults from now on."""
        bdf = device.bdf if isinstance(device, PciDevice) else device
        table = self._context_tables.get(bdf.bus)
        if table is None:
            return
        await self.qtest.write(table + 16 * bdf.devfn, bytes(16))
        await self.invalidate_context(bdf)
        await self.invalidate_iotlb(domain.did)

    # ------------------------------------------------------------------------------------------
    # Invalidation

    async def _invalidate(self, domain: VtdDomain, iova: int, size: int, *, changed: bool) -> None:
        # With caching mode not-present entries may be cached too: invalidate after every map.
        await self.invalidate_pages(domain.did, iova, size)

    async def invalidate_context(self, device: Bdf | None = None) -> None:
        """Context-cache invalidation: of one device (any domain), or global."""
        command = CCMD_ICC | (CCMD_DEVICE | device.sid << 16 if device else CCMD_GLOBAL)
        await self.write64(CCMD, command)
        await self._poll64(CCMD, CCMD_ICC, want_set=False, what="context-cache invalidation")

    async def invalidate_iotlb(self, did: int | None = None) -> None:
        """IOTLB invalidation: of one domain, or global."""
        command = IOTLB_IVT | (IOTLB_DOMAIN | did << 32 if did is not None else IOTLB_GLOBAL)
        await self._iotlb_command(command, "IOTLB invalidation")

    async def invalidate_pages(self, did: int, iova: int, size: int) -> None:
        """Page-selective IOTLB invalidation of [iova, iova+size), in aligned blocks."""
        for addr, order in invalidation_blocks(iova, size, self.caps.max_address_mask):
            await self.write64(self.caps.iotlb_offset, addr | order)
            await self._iotlb_command(IOTLB_IVT | IOTLB_PAGE | did << 32, "page invalidation")

    async def _iotlb_command(self, command: int, what: str) -> None:
        register = self.caps.iotlb_offset + 8
        await self.write64(register, command)
        value = await self._poll64(register, IOTLB_IVT, want_set=False, what=what)
        if not (value >> 57) & 3:  # IAIG 0: QEMU refused the request
            raise VtdError(f"VT-d {what} rejected (IOTLB register {value:#x})")

    # ------------------------------------------------------------------------------------------
    # Faults

    async def fault_status(self) -> int:
        """The FSTS register (FSTS_PPF: a fault is pending; FSTS_PFO: one was lost)."""
        return await self.read32(FSTS)

    async def faults(self) -> list[VtdFault]:
        """The fault records that hold a fault (F set), in register order."""
        found = []
        for index in range(self.caps.fault_records):
            offset = self.caps.fault_records_offset + 16 * index
            high = await self.read64(offset + 8)
            if high & FRCD_F:
                low = await self.read64(offset)
                found.append(VtdFault(
                    index=index,
                    source=Bdf.from_sid(high & 0xFFFF),
                    address=low & ~(PAGE_SIZE - 1),
                    reason=(high >> 32) & 0xFF,
                    is_write=not high & FRCD_T_READ,
                ))  # fmt: skip
        return found

    async def clear_faults(self) -> None:
        """Clear every fault record and the overflow flag, so new faults get recorded."""
        for index in range(self.caps.fault_records):
            offset = self.caps.fault_records_offset + 16 * index
            await self.write64(offset + 8, FRCD_F)  # write-1-to-clear
        await self.write32(FSTS, FSTS_PFO)
