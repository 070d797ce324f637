"""A deterministic allocator of guest-physical memory for tests with no guest OS.

First fit over a sorted free list, so the same sequence of calls always gives the same addresses
(tests and their logs stay reproducible). Everything is page-granular.
"""

from __future__ import annotations

import bisect

PAGE_SIZE = 4096
MiB = 1 << 20


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class OutOfGuestMemory(MemoryError):
    """No free range is large enough."""


class PhysAllocator:
    """Hands out page-aligned ranges of [start, end) and takes them back.

    The default start (16 MiB) keeps clear of the low megabyte, firmware and anything a machine
    loads at fixed low addresses.
    """

    def __init__(self, end: int, start: int = 16 * MiB) -> None:
        if start % PAGE_SIZE or end % PAGE_SIZE or not 0 <= start < end:
            raise ValueError(f"bad window [{start:#x}, {end:#x})")
        self.start = start
        self.end = end
        self._free: list[tuple[int, int]] = [(start, end)]  # sorted, disjoint, coalesced
        self._used: dict[int, int] = {}  # address -> size

    def alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        """The lowest free address aligned to `align` with `size` bytes (rounded up to pages)."""
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        if align < PAGE_SIZE or align & (align - 1):
            raise ValueError(f"alignment must be a power of two >= {PAGE_SIZE}, not {align}")
        size = align_up(size, PAGE_SIZE)
        for i, (lo, hi) in enumerate(self._free):
            addr = align_up(lo, align)
            if addr + size <= hi:
                pieces = [(a, b) for a, b in ((lo, addr), (addr + size, hi)) if a < b]
                self._free[i : i + 1] = pieces
                self._used[addr] = size
                return addr
        raise OutOfGuestMemory(
            f"no {size:#x} bytes aligned to {align:#x} free in [{self.start:#x}, {self.end:#x})"
        )

    def free(self, addr: int) -> None:
        """Give back a range returned by alloc()."""
        try:
            size = self._used.pop(addr)
        except KeyError:
            raise ValueError(f"{addr:#x} was not allocated here") from None
        i = bisect.bisect(self._free, (addr, addr + size))
        lo, hi = addr, addr + size
        if i < len(self._free) and self._free[i][0] == hi:
            hi = self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][1] == lo:
            i -= 1
            lo = self._free.pop(i)[0]
        self._free.insert(i, (lo, hi))

    def size_of(self, addr: int) -> int:
        return self._used[addr]

    @property
    def free_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self._free)

    @property
    def allocations(self) -> dict[int, int]:
        """address -> size of what is allocated now."""
        return dict(self._used)
