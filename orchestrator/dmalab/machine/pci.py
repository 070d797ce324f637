"""PCI from the host side over qtest: config space, enumeration, BAR assignment, MSI and MSI-X.

With no firmware and no guest, nothing has numbered the buses or placed the BARs: `PciTree.scan`
does what firmware would. It walks bus 0 through configuration cycles (ports 0xcf8/0xcfc on q35,
the ECAM window on arm virt), gives every bridge (e.g. pcie-root-port) secondary/subordinate bus
numbers, sizes every memory BAR and places it in a window of the machine's PCI MMIO space,
programs each bridge's windows to cover what is behind it, and turns on memory decoding and bus
mastering.

Trick for interrupts without a guest: point an MSI or MSI-X vector at guest RAM. The device's
interrupt is then a plain DMA write of `data` to `address` (through the IOMMU, if one translates
the device, so map that page), and a test reads it back to see the interrupt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from dmalab.errors import DmalabError
from dmalab.machine.physmem import MiB, align_up
from dmalab.machine.qtest import Q35_MMIO32, Q35_MMIO64, QtestClient

log = logging.getLogger(__name__)

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC

# Type 0 and 1 header
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
CLASS_REVISION = 0x08
HEADER_TYPE = 0x0E
BAR0 = 0x10
CAPABILITY_LIST = 0x34
COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_INTX_DISABLE = 1 << 10
STATUS_CAP_LIST = 1 << 4
HEADER_TYPE_MULTI_FUNCTION = 0x80

# Type 1 (bridge) header
PRIMARY_BUS = 0x18
SECONDARY_BUS = 0x19
SUBORDINATE_BUS = 0x1A
IO_BASE = 0x1C
IO_LIMIT = 0x1D
MEMORY_BASE = 0x20
MEMORY_LIMIT = 0x22
PREF_MEMORY_BASE = 0x24
PREF_MEMORY_LIMIT = 0x26
PREF_BASE_UPPER32 = 0x28
PREF_LIMIT_UPPER32 = 0x2C
PREF_RANGE_TYPE_64 = 0x1

BAR_IO = 1 << 0
BAR_MEM_TYPE_64 = 0b10 << 1
BAR_MEM_PREFETCH = 1 << 3

# Capabilities
CAP_ID_MSI = 0x05
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11

MSI_FLAGS = 0x02
MSI_FLAGS_ENABLE = 1 << 0
MSI_FLAGS_QSIZE_SHIFT = 4
MSI_FLAGS_64BIT = 1 << 7
MSI_ADDRESS_LO = 0x04

MSIX_FLAGS = 0x02
MSIX_FLAGS_QSIZE = 0x7FF
MSIX_FLAGS_MASKALL = 1 << 14
MSIX_FLAGS_ENABLE = 1 << 15
MSIX_TABLE = 0x04
MSIX_PBA = 0x08
MSIX_BIR = 0x7
MSIX_ENTRY_SIZE = 16
MSIX_ENTRY_VECTOR_CTRL = 12
MSIX_ENTRY_CTRL_MASKBIT = 1

BRIDGE_WINDOW_ALIGN = 1 * MiB

#: Default BAR windows: q35's.
MMIO32_WINDOW = Q35_MMIO32
MMIO64_WINDOW = Q35_MMIO64


class PciError(DmalabError):
    """Enumeration or BAR assignment cannot proceed (no space, unknown device...)."""


@dataclass(frozen=True, order=True)
class Bdf:
    """Bus/device/function; `sid` is the 16-bit requester (source) id an IOMMU sees."""

    bus: int
    dev: int
    fn: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.bus < 256 and 0 <= self.dev < 32 and 0 <= self.fn < 8):
            raise ValueError(f"bad BDF {self.bus}:{self.dev}.{self.fn}")

    @property
    def devfn(self) -> int:
        return self.dev << 3 | self.fn

    @property
    def sid(self) -> int:
        return self.bus << 8 | self.devfn

    @classmethod
    def from_sid(cls, sid: int) -> Bdf:
        return cls(sid >> 8, (sid >> 3) & 0x1F, sid & 7)

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """ "01:00.0" (hex bus and device, as lspci prints them)."""
        bus, rest = text.split(":")
        dev, fn = rest.split(".")
        return cls(int(bus, 16), int(dev, 16), int(fn))

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn}"


@dataclass(frozen=True)
class Bar:
    """One memory BAR as assigned (I/O BARs are not assigned: nothing here needs them)."""

    index: int
    address: int
    size: int
    is_64bit: bool
    prefetchable: bool

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class MsixLayout:
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int
    vectors: int


class ConfigSpace:
    """Type 1 configuration cycles through ports 0xcf8/0xcfc (the first 256 bytes)."""

    def __init__(self, qtest: QtestClient) -> None:
        self.qtest = qtest

    @staticmethod
    def _address(bdf: Bdf, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < 256:
            raise ValueError(f"config access of {size} bytes at {offset:#x}")
        return 0x8000_0000 | bdf.bus << 16 | bdf.devfn << 8 | (offset & 0xFC)

    async def read(self, bdf: Bdf, offset: int, size: int = 4) -> int:
        # Both commands are queued before either reply is awaited, so no other coroutine's
        # config cycle can slip between the address and the data port.
        select = self.qtest.submit(
            f"outl {CONFIG_ADDRESS:#x} {self._address(bdf, offset, size):#x}"
        )
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        data = self.qtest.submit(f"{op} {CONFIG_DATA + (offset & 3):#x}")
        _, value = await asyncio.gather(select, data)
        return int(value, 0)

    async def write(self, bdf: Bdf, offset: int, value: int, size: int = 4) -> None:
        select = self.qtest.submit(
            f"outl {CONFIG_ADDRESS:#x} {self._address(bdf, offset, size):#x}"
        )
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        mask = (1 << (8 * size)) - 1
        data = self.qtest.submit(f"{op} {CONFIG_DATA + (offset & 3):#x} {value & mask:#x}")
        await asyncio.gather(select, data)


class EcamConfigSpace(ConfigSpace):
    """PCIe enhanced configuration access: memory-mapped, 4 KiB per function from `base`, for
    `buses` buses (beyond them lies other memory, e.g. RAM on virt)."""

    def __init__(self, qtest: QtestClient, base: int, buses: int) -> None:
        super().__init__(qtest)
        self.base = base
        self.buses = buses

    def _ecam(self, bdf: Bdf, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < 4096:
            raise ValueError(f"config access of {size} bytes at {offset:#x}")
        if bdf.bus >= self.buses:
            raise PciError(f"bus {bdf.bus} is beyond the {self.buses} buses of the ECAM window")
        return self.base + (bdf.bus << 20 | bdf.devfn << 12 | offset)

    async def read(self, bdf: Bdf, offset: int, size: int = 4) -> int:
        op = {1: "readb", 2: "readw", 4: "readl"}[size]
        return int(await self.qtest.command(f"{op} {self._ecam(bdf, offset, size):#x}"), 0)

    async def write(self, bdf: Bdf, offset: int, value: int, size: int = 4) -> None:
        op = {1: "writeb", 2: "writew", 4: "writel"}[size]
        mask = (1 << (8 * size)) - 1
        await self.qtest.command(f"{op} {self._ecam(bdf, offset, size):#x} {value & mask:#x}")


@dataclass(eq=False)
class PciDevice:
    """One function found by `PciTree.scan`, with its BARs as assigned."""

    config: ConfigSpace
    bdf: Bdf
    vendor_id: int
    device_id: int
    class_code: int  # base class, subclass, programming interface
    header_type: int
    parent: PciDevice | None = None  # the bridge in front of it, if any
    bars: dict[int, Bar] = field(default_factory=dict)
    secondary_bus: int | None = None  # bridges only
    children: list[PciDevice] = field(default_factory=list)  # bridges only

    @property
    def is_bridge(self) -> bool:
        return self.header_type & 0x7F == 1

    @property
    def qtest(self) -> QtestClient:
        return self.config.qtest

    def bar(self, index: int) -> Bar:
        try:
            return self.bars[index]
        except KeyError:
            raise PciError(f"{self} has no memory BAR {index}") from None

    def __str__(self) -> str:
        return f"{self.bdf} [{self.vendor_id:04x}:{self.device_id:04x}]"

    async def cfg_read(self, offset: int, size: int = 4) -> int:
        return await self.config.read(self.bdf, offset, size)

    async def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        await self.config.write(self.bdf, offset, value, size)

    async def enable(self, *, memory: bool = True, bus_master: bool = True) -> None:
        """Set (never clear) COMMAND.MEMORY and COMMAND.MASTER."""
        command = await self.cfg_read(COMMAND, 2)
        command |= (COMMAND_MEMORY if memory else 0) | (COMMAND_MASTER if bus_master else 0)
        await self.cfg_write(COMMAND, command, 2)

    async def set_bus_master(self, on: bool) -> None:
        command = await self.cfg_read(COMMAND, 2)
        command = command | COMMAND_MASTER if on else command & ~COMMAND_MASTER
        await self.cfg_write(COMMAND, command, 2)

    # ------------------------------------------------------------------------------------------
    # Capabilities

    async def capabilities(self) -> list[tuple[int, int]]:
        """(capability id, config offset) of the standard capability list, in list order."""
        if not await self.cfg_read(STATUS, 2) & STATUS_CAP_LIST:
            return []
        found: list[tuple[int, int]] = []
        offset = await self.cfg_read(CAPABILITY_LIST, 1) & 0xFC
        while offset and len(found) < 48:  # 48 caps fill the space: a longer list loops
            header = await self.cfg_read(offset, 2)
            found.append((header & 0xFF, offset))
            offset = (header >> 8) & 0xFC
        return found

    async def find_capability(self, cap_id: int) -> int | None:
        for found_id, offset in await self.capabilities():
            if found_id == cap_id:
                return offset
        return None

    async def _require_capability(self, cap_id: int, name: str) -> int:
        offset = await self.find_capability(cap_id)
        if offset is None:
            raise PciError(f"{self} has no {name} capability")
        return offset

    # ------------------------------------------------------------------------------------------
    # MSI

    async def msi_enable(self, address: int, data: int) -> None:
        """Program the MSI message (one vector) and enable MSI."""
        cap = await self._require_capability(CAP_ID_MSI, "MSI")
        flags = await self.cfg_read(cap + MSI_FLAGS, 2)
        is_64 = bool(flags & MSI_FLAGS_64BIT)
        if address >> 32 and not is_64:
            raise PciError(f"{self}: 32-bit MSI cannot reach {address:#x}")
        await self.cfg_write(cap + MSI_ADDRESS_LO, address & 0xFFFF_FFFF)
        if is_64:
            await self.cfg_write(cap + MSI_ADDRESS_LO + 4, address >> 32)
        await self.cfg_write(cap + (0x0C if is_64 else 0x08), data & 0xFFFF, 2)
        flags &= ~(0x7 << MSI_FLAGS_QSIZE_SHIFT)  # one vector
        await self.cfg_write(cap + MSI_FLAGS, flags | MSI_FLAGS_ENABLE, 2)

    async def msi_disable(self) -> None:
        cap = await self._require_capability(CAP_ID_MSI, "MSI")
        flags = await self.cfg_read(cap + MSI_FLAGS, 2)
        await self.cfg_write(cap + MSI_FLAGS, flags & ~MSI_FLAGS_ENABLE, 2)

    # ------------------------------------------------------------------------------------------
    # MSI-X

    async def msix_layout(self) -> MsixLayout:
        cap = await self._require_capability(CAP_ID_MSIX, "MSI-X")
        flags = await self.cfg_read(cap + MSIX_FLAGS, 2)
        table = await self.cfg_read(cap + MSIX_TABLE)
        pba = await self.cfg_read(cap + MSIX_PBA)
        return MsixLayout(
            table_bar=table & MSIX_BIR,
            table_offset=table & ~MSIX_BIR,
            pba_bar=pba & MSIX_BIR,
            pba_offset=pba & ~MSIX_BIR,
            vectors=(flags & MSIX_FLAGS_QSIZE) + 1,
        )

    async def msix_vector(self, n: int, address: int, data: int, *, masked: bool = False) -> None:
        """Write MSI-X table entry `n` (address, data) and set its mask bit as asked."""
        layout = await self.msix_layout()
        if not 0 <= n < layout.vectors:
            raise PciError(f"{self}: MSI-X vector {n} out of {layout.vectors}")
        entry = self.bar(layout.table_bar).address + layout.table_offset + n * MSIX_ENTRY_SIZE
        await self.qtest.writel(entry, address & 0xFFFF_FFFF)
        await self.qtest.writel(entry + 4, address >> 32)
        await self.qtest.writel(entry + 8, data & 0xFFFF_FFFF)
        await self.qtest.writel(entry + MSIX_ENTRY_VECTOR_CTRL, int(masked))

    async def msix_read_vector(self, n: int) -> tuple[int, int, bool]:
        """(address, data, masked) of MSI-X table entry `n`."""
        layout = await self.msix_layout()
        entry = self.bar(layout.table_bar).address + layout.table_offset + n * MSIX_ENTRY_SIZE
        lo, hi, data, ctrl = await asyncio.gather(
            *(self.qtest.readl(entry + 4 * i) for i in range(4))
        )
        return hi << 32 | lo, data, bool(ctrl & MSIX_ENTRY_CTRL_MASKBIT)

    async def msix_enable(self, *, enabled: bool = True) -> None:
        """Enable (or disable) MSI-X and clear the function mask."""
        cap = await self._require_capability(CAP_ID_MSIX, "MSI-X")
        flags = await self.cfg_read(cap + MSIX_FLAGS, 2) & ~MSIX_FLAGS_MASKALL
        flags = flags | MSIX_FLAGS_ENABLE if enabled else flags & ~MSIX_FLAGS_ENABLE
        await self.cfg_write(cap + MSIX_FLAGS, flags, 2)


@dataclass
class _Window:
    """A bump allocator over [next, end)."""

    next: int
    end: int
    name: str

    def take(self, size: int, align: int) -> int:
        addr = align_up(self.next, align)
        if addr + size > self.end:
            raise PciError(
                f"no room for {size:#x} bytes in the {self.name} window (ends {self.end:#x})"
            )
        self.next = addr + size
        return addr

    def align(self, alignment: int) -> int:
        self.next = min(align_up(self.next, alignment), self.end)
        return self.next


@dataclass
class _SizedBar:
    index: int
    size: int
    is_64bit: bool
    prefetchable: bool


class PciTree:
    """Every function below the host bridge after `scan`, BARs assigned, decoding enabled."""

    def __init__(self, config: ConfigSpace, devices: list[PciDevice]) -> None:
        self.config = config
        self.devices = devices

    def __iter__(self) -> Iterator[PciDevice]:
        return iter(self.devices)

    def find_all(self, vendor_id: int, device_id: int) -> list[PciDevice]:
        return [d for d in self.devices if (d.vendor_id, d.device_id) == (vendor_id, device_id)]

    def find(self, vendor_id: int, device_id: int, index: int = 0) -> PciDevice:
        """The `index`-th function with this vendor:device, in BDF order."""
        found = self.find_all(vendor_id, device_id)
        if index >= len(found):
            raise PciError(
                f"no PCI function {vendor_id:04x}:{device_id:04x} #{index} "
                f"(found: {', '.join(str(d) for d in self.devices) or 'none'})"
            )
        return found[index]

    def get(self, bdf: Bdf) -> PciDevice:
        for device in self.devices:
            if device.bdf == bdf:
                return device
        raise PciError(f"no PCI function at {bdf}")

    @classmethod
    async def scan(
        cls,
        qtest: QtestClient,
        *,
        mmio32: tuple[int, int] = MMIO32_WINDOW,
        mmio64: tuple[int, int] | None = MMIO64_WINDOW,
        enable: bool = True,
        ecam: tuple[int, int] | None = None,
    ) -> Self:
        """Number the buses, assign memory BARs and bridge windows, enable decoding.

        64-bit prefetchable BARs go to `mmio64` (None: everything goes to `mmio32`), the rest to
        `mmio32`. With `enable`, every function gets COMMAND.MEMORY and COMMAND.MASTER.
        Configuration space is reached through ports 0xcf8/0xcfc, or the ECAM window `ecam`
        (base, number of buses).
        """
        config = ConfigSpace(qtest) if ecam is None else EcamConfigSpace(qtest, *ecam)
        roots: list[PciDevice] = []
        next_bus = [1]
        await cls._scan_bus(config, 0, None, roots, next_bus)
        devices = sorted(cls._walk(roots), key=lambda d: d.bdf)
        win32 = _Window(*mmio32, name="32-bit MMIO")
        win64 = _Window(*mmio64, name="64-bit MMIO") if mmio64 is not None else win32
        await cls._assign_bus(config, roots, win32, win64)
        if enable:
            for device in devices:
                await device.enable()
        for device in devices:
            log.debug(
                "%s: %s",
                device,
                ", ".join(f"BAR{b.index} {b.address:#x}+{b.size:#x}" for b in device.bars.values()),
            )
        return cls(config, devices)

    @staticmethod
    def _walk(level: list[PciDevice]) -> Iterator[PciDevice]:
        for device in level:
            yield device
            yield from PciTree._walk(device.children)

    @classmethod
    async def _scan_bus(
        cls,
        config: ConfigSpace,
        bus: int,
        parent: PciDevice | None,
        out: list[PciDevice],
        next_bus: list[int],
    ) -> None:
        for dev in range(32):
            functions = 1
            for fn in range(8):
                if fn >= functions:
                    break
                bdf = Bdf(bus, dev, fn)
                ids = await config.read(bdf, VENDOR_ID)
                if ids & 0xFFFF == 0xFFFF:
                    continue
                header = await config.read(bdf, HEADER_TYPE, 1)
                if fn == 0 and header & HEADER_TYPE_MULTI_FUNCTION:
                    functions = 8
                device = PciDevice(
                    config, bdf, ids & 0xFFFF, ids >> 16,
                    await config.read(bdf, CLASS_REVISION) >> 8, header, parent,
                )  # fmt: skip
                out.append(device)
                if device.is_bridge:
                    await cls._number_bridge(config, device, next_bus)

    @classmethod
    async def _number_bridge(
        cls, config: ConfigSpace, bridge: PciDevice, next_bus: list[int]
    ) -> None:
        if next_bus[0] > 255:
            raise PciError("out of bus numbers")
        secondary = next_bus[0]
        next_bus[0] += 1
        bridge.secondary_bus = secondary
        # Open the whole range below while scanning it, then close it to what was found.
        await config.write(bridge.bdf, PRIMARY_BUS, bridge.bdf.bus, 1)
        await config.write(bridge.bdf, SECONDARY_BUS, secondary, 1)
        await config.write(bridge.bdf, SUBORDINATE_BUS, 0xFF, 1)
        await cls._scan_bus(config, secondary, bridge, bridge.children, next_bus)
        await config.write(bridge.bdf, SUBORDINATE_BUS, next_bus[0] - 1, 1)

    @staticmethod
    async def _size_bars(config: ConfigSpace, device: PciDevice) -> list[_SizedBar]:
        """Probe the memory BARs with all-ones writes, decoding off meanwhile."""
        command = await config.read(device.bdf, COMMAND, 2)
        await config.write(device.bdf, COMMAND, command & ~(COMMAND_MEMORY | COMMAND_IO), 2)
        try:
            return await PciTree._probe_bars(config, device)
        finally:
            await config.write(device.bdf, COMMAND, command, 2)

    @staticmethod
    async def _probe_bars(config: ConfigSpace, device: PciDevice) -> list[_SizedBar]:
        sized: list[_SizedBar] = []
        index = 0
        count = 2 if device.is_bridge else 6
        while index < count:
            offset = BAR0 + 4 * index
            original = await config.read(device.bdf, offset)
            await config.write(device.bdf, offset, 0xFFFF_FFFF)
            probe = await config.read(device.bdf, offset)
            await config.write(device.bdf, offset, original)
            if probe & BAR_IO or probe == 0:
                index += 1  # I/O BAR or none
                continue
            is_64 = probe & 0b110 == BAR_MEM_TYPE_64
            mask = probe & ~0xF
            if is_64:
                original_hi = await config.read(device.bdf, offset + 4)
                await config.write(device.bdf, offset + 4, 0xFFFF_FFFF)
                mask |= await config.read(device.bdf, offset + 4) << 32
                await config.write(device.bdf, offset + 4, original_hi)
                size = (~mask & 0xFFFF_FFFF_FFFF_FFFF) + 1
            else:
                size = (~mask & 0xFFFF_FFFF) + 1
            sized.append(_SizedBar(index, size, is_64, bool(probe & BAR_MEM_PREFETCH)))
            index += 2 if is_64 else 1
        return sized

    @classmethod
    async def _assign_bus(
        cls, config: ConfigSpace, level: list[PciDevice], win32: _Window, win64: _Window
    ) -> None:
        # Largest first, so natural alignment wastes little.
        wanted = [(device, bar) for device in level for bar in await cls._size_bars(config, device)]
        wanted.sort(key=lambda item: -item[1].size)
        for device, bar in wanted:
            window = win64 if bar.is_64bit and bar.prefetchable else win32
            addr = window.take(bar.size, max(bar.size, 16))
            offset = BAR0 + 4 * bar.index
            low_bits = await config.read(device.bdf, offset) & 0xF
            await config.write(device.bdf, offset, (addr & 0xFFFF_FFF0) | low_bits)
            if bar.is_64bit:
                await config.write(device.bdf, offset + 4, addr >> 32)
            elif addr >> 32:
                raise PciError(f"{device}: 32-bit BAR{bar.index} cannot go at {addr:#x}")
            device.bars[bar.index] = Bar(bar.index, addr, bar.size, bar.is_64bit, bar.prefetchable)
        for bridge in (d for d in level if d.is_bridge):
            start32 = win32.align(BRIDGE_WINDOW_ALIGN)
            start64 = win64.align(BRIDGE_WINDOW_ALIGN)
            await cls._assign_bus(config, bridge.children, win32, win64)
            end32 = win32.align(BRIDGE_WINDOW_ALIGN)
            end64 = win64.align(BRIDGE_WINDOW_ALIGN)
            await cls._program_windows(
                config, bridge, (start32, end32), (start64, end64), win32 is win64
            )

    @staticmethod
    async def _program_windows(
        config: ConfigSpace,
        bridge: PciDevice,
        mem: tuple[int, int],
        pref: tuple[int, int],
        shared: bool,
    ) -> None:
        """Bridge windows in 1 MiB units; an empty window is programmed as base > limit."""
        bdf = bridge.bdf
        await config.write(bdf, IO_BASE, 0xF0, 1)  # no I/O window
        await config.write(bdf, IO_LIMIT, 0x00, 1)
        start, end = mem
        if end > start:
            await config.write(bdf, MEMORY_BASE, (start >> 16) & 0xFFF0, 2)
            await config.write(bdf, MEMORY_LIMIT, ((end - 1) >> 16) & 0xFFF0, 2)
        else:
            await config.write(bdf, MEMORY_BASE, 0xFFF0, 2)
            await config.write(bdf, MEMORY_LIMIT, 0x0000, 2)
        start, end = pref
        if shared or end <= start:
            await config.write(bdf, PREF_MEMORY_BASE, 0xFFF0, 2)
            await config.write(bdf, PREF_MEMORY_LIMIT, 0x0000, 2)
            await config.write(bdf, PREF_BASE_UPPER32, 0)
            await config.write(bdf, PREF_LIMIT_UPPER32, 0)
            return
        if not await config.read(bdf, PREF_MEMORY_BASE, 2) & PREF_RANGE_TYPE_64 and end > 1 << 32:
            raise PciError(f"bridge {bridge} has no 64-bit prefetchable window; use mmio64=None")
        await config.write(bdf, PREF_MEMORY_BASE, (start >> 16) & 0xFFF0, 2)
        await config.write(bdf, PREF_MEMORY_LIMIT, ((end - 1) >> 16) & 0xFFF0, 2)
        await config.write(bdf, PREF_BASE_UPPER32, start >> 32)
        await config.write(bdf, PREF_LIMIT_UPPER32, (end - 1) >> 32)
