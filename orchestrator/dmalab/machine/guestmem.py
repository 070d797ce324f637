"""Guest RAM from the host, without copies.

`SharedRam` creates the machine's RAM as a memfd (`os.memfd_create`, sized with `ftruncate`) that
QEMU maps with `-object memory-backend-file,mem-path=/dev/fd/N,share=on` and we map here too:
both sides see the same pages, so a host read or write is a memory access, with no QMP round
trip and no copy (`view()` returns a `memoryview` into the mapping).

Guest-physical addresses go through the machine's RAM layout: virt's (`VirtLayout`, one range
from 1 GiB) on arm64, and on x86 q35's (`Q35Layout`, from QEMU 10.0 hw/i386/pc_q35.c): RAM below
4 GiB ends at 2.75 GiB when the machine has less than 2.75 GiB, else at 2 GiB; the rest starts
at 4 GiB and follows the low part in the backing file. The legacy VGA window and the
PAM-shadowed BIOS area (0xa0000-0xfffff) are RAM in the file but not what the CPU sees there;
nothing dmalab does uses them.

IOVAs: `iova_segments()` resolves an IOVA range through the device's transaction log (each
executed descriptor lists its IOVA -> PA segments), and `VtdWalker` walks intel-iommu's
second-level page tables in guest RAM (the root table address comes from the VT-d register,
read with the monitor's `xp`) for ranges the log does not cover (a ring, a buffer before the
first DMA).

`PmemsaveMemory` is the fallback when RAM is not shared: `pmemsave` over QMP into a file in the
run directory, then read back. It cannot write.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dmalab.errors import CheckFailed, DmalabError

GiB = 1 << 30
MiB = 1 << 20
FOUR_GIB = 4 * GiB
PAGE = 4096


class GuestMemoryError(DmalabError):
    """An address outside guest RAM, a range crossing the PCI hole, or an untranslated IOVA."""


@dataclass(frozen=True)
class Q35Layout:
    """Where q35 puts `ram_size` bytes of RAM in the guest-physical address space."""

    ram_size: int

    @property
    def below_4g(self) -> int:
        lowmem = 0x8000_0000 if self.ram_size >= 0xB000_0000 else 0xB000_0000
        return min(self.ram_size, lowmem)

    @property
    def above_4g(self) -> int:
        return self.ram_size - self.below_4g

    def ranges(self) -> list[tuple[int, int, int]]:
        """(guest-physical start, length, offset in the backing file) of each RAM range."""
        out = [(0, self.below_4g, 0)]
        if self.above_4g:
            out.append((FOUR_GIB, self.above_4g, self.below_4g))
        return out

    def offset(self, pa: int, length: int = 1) -> int:
        """The backing-file offset of [pa, pa + length), which must lie in one RAM range."""
        for start, size, offset in self.ranges():
            if start <= pa and pa + length <= start + size:
                return offset + (pa - start)
        raise GuestMemoryError(
            f"guest-physical range {pa:#x}+{length:#x} is not inside one RAM range "
            f"({', '.join(f'{s:#x}-{s + n:#x}' for s, n, _ in self.ranges())})"
        )


@dataclass(frozen=True)
class VirtLayout:
    """Where arm's virt machine puts `ram_size` bytes of RAM: one range from 1 GiB up
    (hw/arm/virt.c, VIRT_MEM)."""

    ram_size: int
    base: int = GiB

    def ranges(self) -> list[tuple[int, int, int]]:
        return [(self.base, self.ram_size, 0)]

    def offset(self, pa: int, length: int = 1) -> int:
        if self.base <= pa and pa + length <= self.base + self.ram_size:
            return pa - self.base
        raise GuestMemoryError(
            f"guest-physical range {pa:#x}+{length:#x} is not inside RAM "
            f"({self.base:#x}-{self.base + self.ram_size:#x})"
        )


RamLayout = Q35Layout | VirtLayout


def ram_layout(arch: str, ram_size: int) -> RamLayout:
    """The guest-physical RAM layout of the machine dmalab builds for `arch`."""
    return VirtLayout(ram_size) if arch == "aarch64" else Q35Layout(ram_size)


class GuestMemory(Protocol):
    async def read(self, pa: int, length: int) -> bytes: ...


class SharedRam:
    """The machine's RAM as a memfd mapped here and in QEMU. Close it after QEMU is gone."""

    def __init__(
        self, ram_size: int, *, name: str = "dmalab-ram", layout: RamLayout | None = None
    ) -> None:
        self.layout = layout or Q35Layout(ram_size)
        self.size = ram_size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, ram_size)
            self._map: mmap.mmap | None = mmap.mmap(self.fd, ram_size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        self._view: memoryview | None = memoryview(self._map)

    def qemu_args(self, backend_id: str = "ram") -> list[str]:
        """The backend object and `-machine memory-backend=` (QEMU inherits `fd`)."""
        return [
            "-object",
            f"memory-backend-file,id={backend_id},mem-path=/dev/fd/{self.fd},share=on,"
            f"size={self.size // MiB}M",
            "-machine",
            f"memory-backend={backend_id}",
        ]

    @property
    def mem_path(self) -> str:
        return f"/dev/fd/{self.fd}"

    def view(self, pa: int, length: int) -> memoryview:
        """The guest's bytes at [pa, pa + length), live (no copy): writes land in the guest."""
        if self._view is None:
            raise GuestMemoryError("guest RAM is closed")
        offset = self.layout.offset(pa, length)
        return self._view[offset : offset + length]

    def views(self, segments: Iterable[tuple[int, int]]) -> list[memoryview]:
        return [self.view(pa, length) for pa, length in segments]

    async def read(self, pa: int, length: int) -> bytes:
        return bytes(self.view(pa, length))

    def write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(pa, len(data))[:] = data

    def read_u64(self, pa: int) -> int:
        return struct.unpack_from("<Q", self.view(pa, 8))[0]

    def close(self) -> None:
        """Unmap and close the memfd. Views still held elsewhere keep the mapping alive until
        they are released; the memfd itself goes when the last mapping does."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view held elsewhere keeps the mapping
                self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SharedRam:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PmemsaveMemory:
    """Reads guest RAM with QMP `pmemsave` into a scratch file of the run directory."""

    def __init__(self, qmp: Any, run_dir: Path) -> None:
        self._qmp = qmp
        self._file = run_dir / "pmemsave.bin"

    async def read(self, pa: int, length: int) -> bytes:
        await self._qmp.execute(
            "pmemsave", {"val": pa, "size": length, "filename": str(self._file)}
        )
        try:
            return self._file.read_bytes()
        finally:
            self._file.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# IOVAs


def iova_segments(transactions: Sequence[Any], iova: int, length: int) -> list[tuple[int, int]]:
    """(pa, length) pieces of [iova, iova + length) from logged transaction segments (newest
    first wins); raises `GuestMemoryError` for any byte no logged segment covers."""
    known: list[tuple[int, int, int]] = []  # (iova, pa, len)
    for tx in reversed(list(transactions)):
        for seg in tx.segments:
            known.append((seg.iova, seg.pa, seg.len))
    out: list[tuple[int, int]] = []
    cursor, end = iova, iova + length
    while cursor < end:
        for seg_iova, seg_pa, seg_len in known:
            if seg_iova <= cursor < seg_iova + seg_len:
                take = min(end, seg_iova + seg_len) - cursor
                pa = seg_pa + (cursor - seg_iova)
                if out and out[-1][0] + out[-1][1] == pa:
                    out[-1] = (out[-1][0], out[-1][1] + take)
                else:
                    out.append((pa, take))
                cursor += take
                break
        else:
            raise GuestMemoryError(
                f"IOVA {cursor:#x} is in no logged transaction segment "
                f"(range {iova:#x}+{length:#x})"
            )
    return out


VTD_BASE = 0xFED9_0000
VTD_RTADDR = 0x20


class VtdWalker:
    """Translates IOVAs of one PCI function by walking intel-iommu's legacy-mode tables in RAM."""

    def __init__(self, ram: SharedRam, root_table: int) -> None:
        self.ram = ram
        self.root_table = root_table

    @classmethod
    async def from_qmp(cls, qmp: Any, ram: SharedRam) -> VtdWalker:
        rtaddr = await read_phys_u64(qmp, VTD_BASE + VTD_RTADDR)
        if rtaddr & (1 << 11):
            raise GuestMemoryError("intel-iommu is in scalable mode: only legacy mode is walked")
        return cls(ram, rtaddr & ~0xFFF)

    def translate(self, bus: int, devfn: int, iova: int) -> tuple[int, int]:
        """(pa, bytes left in that page or superpage) for one IOVA."""
        root_lo = self.ram.read_u64(self.root_table + bus * 16)
        if not root_lo & 1:
            raise GuestMemoryError(f"VT-d: no context table for bus {bus}")
        ctx = (root_lo & ~0xFFF) + devfn * 16
        lo, hi = self.ram.read_u64(ctx), self.ram.read_u64(ctx + 8)
        if not lo & 1:
            raise GuestMemoryError(
                f"VT-d: no context entry for {bus:02x}:{devfn >> 3:02x}.{devfn & 7}"
            )
        if (lo >> 2) & 3 == 2:
            return iova, PAGE - (iova & (PAGE - 1))  # pass-through
        levels = (hi & 7) + 2
        table = lo & 0x000F_FFFF_FFFF_F000
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            entry = self.ram.read_u64(table + ((iova >> shift) & 0x1FF) * 8)
            if not entry & 3:
                raise GuestMemoryError(f"VT-d: IOVA {iova:#x} is not mapped (level {level})")
            address = entry & 0x000F_FFFF_FFFF_F000
            if level == 1 or entry & 0x80:
                size = 1 << shift
                base = address & ~(size - 1)
                return base + (iova & (size - 1)), size - (iova & (size - 1))
            table = address
        raise AssertionError("unreachable")

    def segments(self, bus: int, devfn: int, iova: int, length: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        cursor, end = iova, iova + length
        while cursor < end:
            pa, left = self.translate(bus, devfn, cursor)
            take = min(left, end - cursor)
            if out and out[-1][0] + out[-1][1] == pa:
                out[-1] = (out[-1][0], out[-1][1] + take)
            else:
                out.append((pa, take))
            cursor += take
        return out


_XP_WORD = re.compile(r"0x([0-9a-fA-F]+)")


async def read_phys_u32s(qmp: Any, pa: int, count: int) -> list[int]:
    """`count` 32-bit words at a guest-physical address (RAM or MMIO) through the monitor's `xp`."""
    text = await qmp.execute("human-monitor-command", {"command-line": f"xp /{count}wx {pa:#x}"})
    words: list[int] = []
    for line in str(text).splitlines():
        if ":" not in line:
            continue
        words += [int(w, 16) for w in _XP_WORD.findall(line.split(":", 1)[1])]
    if len(words) != count:
        raise CheckFailed(f"xp {pa:#x}: expected {count} words, got {text!r}")
    return words


async def read_phys_u64(qmp: Any, pa: int) -> int:
    lo, hi = await read_phys_u32s(qmp, pa, 2)
    return lo | hi << 32
