"""The host memcpy ceiling: libc `memmove` (through ctypes) between two preallocated buffers.

Each repetition copies the same number of bytes as the device batch of that size (K copies of
`size` bytes into the same destination), so both sides are timed the same way. At small sizes the
Python call overhead (a fraction of a microsecond per copy) is part of the figure, which makes the
ceiling lower than the hardware's there (`call_overhead_ns` measures it); at 64 KiB and above it
is negligible.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

from dmalab.bench import Stat, mbps


def batch_count(size: int, batch_bytes: int, limit: int | None = None) -> int:
    """Copies of `size` bytes in one batch: enough to move `batch_bytes`, at most `limit`."""
    if size <= 0 or batch_bytes <= 0:
        raise ValueError("size and batch_bytes must be positive")
    count = max(1, -(-batch_bytes // size))
    return min(count, limit) if limit is not None else count


def _memmove() -> Callable[[int, int, int], None]:
    """libc memmove with declared argument types: the cheapest call ctypes offers."""
    try:
        fn = ctypes.CDLL(None).memmove
    except (OSError, AttributeError):
        return ctypes.memmove
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = None
    return fn


def measure(size: int, count: int, repeats: int) -> Stat:
    """Throughput of `count` memmoves of `size` bytes, `repeats` times (after one warm-up)."""
    src_buf = ctypes.create_string_buffer(size)
    dst_buf = ctypes.create_string_buffer(size)
    src, dst = ctypes.addressof(src_buf), ctypes.addressof(dst_buf)
    memmove = _memmove()
    ctypes.memset(src, 0x5A, size)  # touch every page before timing
    memmove(dst, src, size)
    samples = []
    for rep in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(count):
            memmove(dst, src, size)
        elapsed = time.perf_counter() - start
        if rep:  # the first round warms caches and the allocator
            samples.append(mbps(size * count, elapsed))
    return Stat.of(samples)


def call_overhead_ns(count: int = 100_000) -> float:
    """Median cost of one zero-byte memmove call from Python, in nanoseconds."""
    buf = ctypes.create_string_buffer(64)
    addr = ctypes.addressof(buf)
    memmove = _memmove()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            memmove(addr, addr + 32, 0)
        samples.append((time.perf_counter() - start) / count * 1e9)
    return sorted(samples)[2]
