"""IOMMU page tables in guest RAM, written from the host through qtest, and what every IOMMU
driven that way shares.

Intel's second-level tables and Arm's VMSAv8-64 stage-1 tables (4 KiB granule, 48-bit input)
have the same shape: four levels of 4 KiB tables with 512 8-byte entries, indexed by IOVA bits
47:39, 38:30, 29:21 and 20:12. Only the entries differ, so each IOMMU module passes an
`EntryFormat` and this module does the walking, allocating and bookkeeping. `PagingIommu` is the
interface the ncdma rig programs (vtd.IntelIommu, smmuv3.SmmuV3): map and unmap write the table,
then each IOMMU invalidates in its own way.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from dmalab.machine.pci import Bdf, PciDevice
from dmalab.machine.physmem import PAGE_SIZE, PhysAllocator
from dmalab.machine.qtest import QtestClient, QtestRegisters

LEVELS = 4
IOVA_BITS = 48
ENTRIES = 512


class EntryFormat(Protocol):
    def table(self, pa: int) -> int:
        """A non-leaf entry pointing at the table at `pa`."""
        ...

    def leaf(self, pa: int, read: bool, write: bool) -> int:
        """A last-level entry mapping the page at `pa`."""
        ...


def level_shift(level: int) -> int:
    """log2 of the IOVA span of one entry in a table of `level` (1 = leaf)."""
    return 12 + 9 * (level - 1)


def invalidation_blocks(iova: int, size: int, max_order: int) -> list[tuple[int, int]]:
    """Split [iova, iova+size) into naturally aligned (address, log2 pages) blocks."""
    blocks = []
    page, pages = iova >> 12, size >> 12
    while pages:
        order = min(max_order, pages.bit_length() - 1)
        if page:
            order = min(order, (page & -page).bit_length() - 1)
        blocks.append((page << 12, order))
        page += 1 << order
        pages -= 1 << order
    return blocks


def check_range(iova: int, size: int, pa: int = 0) -> None:
    if (iova | size | pa) % PAGE_SIZE or size <= 0:
        raise ValueError(f"unaligned mapping iova={iova:#x} pa={pa:#x} size={size:#x}")
    if iova + size > 1 << IOVA_BITS:
        raise ValueError(f"IOVA range {iova:#x}+{size:#x} beyond {IOVA_BITS} bits")


async def zeroed_page(qtest: QtestClient, memory: PhysAllocator, size: int = PAGE_SIZE) -> int:
    page = memory.alloc(size, max(size, PAGE_SIZE))
    await qtest.memset(page, size, 0)
    return page


@dataclass(eq=False)
class IoPageTable:
    """One address space. `mappings` mirrors the leaf entries written:
    IOVA page -> (PA page, read, write as asked)."""

    qtest: QtestClient
    memory: PhysAllocator
    format: EntryFormat
    root: int  # guest-physical address of the top-level table
    tables: dict[tuple[int, int], int] = field(default_factory=dict)  # (level, index) -> PA
    mappings: dict[int, tuple[int, bool, bool]] = field(default_factory=dict)

    @classmethod
    async def create(
        cls, qtest: QtestClient, memory: PhysAllocator, fmt: EntryFormat
    ) -> IoPageTable:
        table = cls(qtest, memory, fmt, await zeroed_page(qtest, memory))
        table.tables[(LEVELS, 0)] = table.root
        return table

    def translate(self, iova: int) -> int | None:
        """Where `iova` goes per the tables written (None: not mapped)."""
        entry = self.mappings.get(iova & ~(PAGE_SIZE - 1))
        return None if entry is None else entry[0] | (iova & (PAGE_SIZE - 1))

    async def map(self, iova: int, pa: int, size: int, *, read: bool, write: bool) -> None:
        """Write leaf entries mapping [iova, iova+size) to [pa, pa+size); no invalidation."""
        check_range(iova, size, pa)
        if not (read or write):
            raise ValueError("a mapping needs read or write permission (use unmap)")
        await self._write_leaves(iova, size, lambda off: self.format.leaf(pa + off, read, write))
        for off in range(0, size, PAGE_SIZE):
            self.mappings[iova + off] = (pa + off, read, write)

    async def unmap(self, iova: int, size: int) -> None:
        """Clear the leaf entries of [iova, iova+size); no invalidation."""
        check_range(iova, size)
        await self._write_leaves(iova, size, lambda off: 0)
        for off in range(0, size, PAGE_SIZE):
            self.mappings.pop(iova + off, None)

    async def _write_leaves(self, iova: int, size: int, entry: Callable[[int], int]) -> None:
        """Write leaf entries, one qtest write per run of entries within a leaf table."""
        off = 0
        while off < size:
            addr = iova + off
            table = await self._table(1, addr)
            first = (addr >> 12) % ENTRIES
            count = min(ENTRIES - first, (size - off) >> 12)
            data = struct.pack(f"<{count}Q", *(entry(off + i * PAGE_SIZE) for i in range(count)))
            await self.qtest.write(table + 8 * first, data)
            off += count * PAGE_SIZE

    async def _table(self, level: int, iova: int) -> int:
        """The table of `level` that translates `iova`, created (zeroed, linked) if missing."""
        key = (level, iova >> level_shift(level + 1))
        table = self.tables.get(key)
        if table is None:
            parent = await self._table(level + 1, iova)
            table = await zeroed_page(self.qtest, self.memory)
            index = (iova >> level_shift(level + 1)) % ENTRIES
            await self.qtest.writeq(parent + 8 * index, self.format.table(table))
            self.tables[key] = table
        return table


@dataclass(eq=False)
class IoDomain:
    """An address space devices are attached to; devices attached to one domain share it."""

    table: IoPageTable

    def translate(self, iova: int) -> int | None:
        """Where `iova` goes per the tables written (None: not mapped)."""
        return self.table.translate(iova)


D = TypeVar("D", bound=IoDomain)


class PagingIommu(QtestRegisters, ABC, Generic[D]):
    """An IOMMU whose domains (of type D) are `IoPageTable`s."""

    @abstractmethod
    async def new_domain(self) -> D: ...

    @abstractmethod
    async def attach(self, device: Bdf | PciDevice, domain: D) -> None: ...

    @abstractmethod
    async def enable_translation(self) -> None: ...

    @abstractmethod
    async def _invalidate(self, domain: D, iova: int, size: int, *, changed: bool) -> None:
        """Make the IOMMU forget what it cached of [iova, iova+size) in `domain`. `changed`: valid
        entries changed or went; otherwise only not-present entries became valid."""

    async def map(
        self,
        domain: D,
        iova: int,
        pa: int,
        size: int,
        *,
        read: bool = True,
        write: bool = True,
    ) -> None:
        """Map [iova, iova+size) to [pa, pa+size) in 4 KiB pages, then invalidate as needed."""
        changed = any(iova + off in domain.table.mappings for off in range(0, size, PAGE_SIZE))
        await domain.table.map(iova, pa, size, read=read, write=write)
        await self._invalidate(domain, iova, size, changed=changed)

    async def unmap(self, domain: D, iova: int, size: int) -> None:
        """Clear the leaf entries of [iova, iova+size), then invalidate that range."""
        await domain.table.unmap(iova, size)
        await self._invalidate(domain, iova, size, changed=True)
