"""Naming guest code addresses (machine/ksyms.py) and a module's function symbols (elf.py)."""

from __future__ import annotations

import errno
import struct

import pytest

from dmalab.artifacts import elf
from dmalab.machine.agent import AgentError
from dmalab.machine.ksyms import GuestSymbols, _Module, _Process, _Table, process_symbols


def _symbols() -> GuestSymbols:
    syms = GuestSymbols()
    syms.kernel.add([(0xFFFF800080010000, "_stext"), (0xFFFF800080020000, "dcache_inval_poc")])
    table = _Table()
    table.add([(0xFFFF0000C0001000, "ncdma_ioctl"), (0xFFFF0000C0000000, "ncdma_probe")])
    syms.modules.append(_Module("ncdma", 0xFFFF0000C0000000, 0x4000, table))
    return syms


def test_names_kernel_and_module_addresses_and_falls_back_to_numbers() -> None:
    syms = _symbols()
    assert syms.name(0xFFFF800080020040) == "dcache_inval_poc+0x40"
    assert syms.name(0xFFFF0000C0001088) == "ncdma_ioctl+0x88 [ncdma]"
    assert syms.name(0xFFFF0000C0000010) == "ncdma_probe+0x10 [ncdma]"
    # past the module's end, below every kernel symbol, or too far past the last one
    assert syms.name(0xFFFF0000C0004000) == "0xffff0000c0004000"
    assert syms.name(0x1000) == "0x1000"
    assert syms.name(0xFFFF800080020000 + (1 << 21)) == hex(0xFFFF800080020000 + (1 << 21))


def test_backtrace_folds_repeats_innermost_first() -> None:
    syms = _symbols()
    frames = [0xFFFF800080020040, 0xFFFF800080020040, 0xFFFF0000C0001088]
    assert syms.trace(frames) == "dcache_inval_poc+0x40 <- ncdma_ioctl+0x88 [ncdma]"


def _module_elf(e_type: int = 1) -> bytes:
    """An ELF64 (relocatable unless `e_type` says otherwise) with .text, .symtab (two
    functions, one object) and string tables."""
    shstr = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    strtab = b"\0f_one\0f_two\0obj\0"
    syms = b"\0" * 24 + b"".join(
        struct.pack("<IBBHQQ", name, info, 0, 1, value, size)
        for name, info, value, size in ((1, 0x12, 0x10, 8), (7, 0x02, 0x40, 4), (13, 0x11, 0, 4))
    )
    text = b"\0" * 0x80
    body = text + syms + strtab + shstr
    offs = [
        64,
        64 + len(text),
        64 + len(text) + len(syms),
        64 + len(text) + len(syms) + len(strtab),
    ]
    shoff = 64 + len(body)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", header, 0x10, e_type)
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 5, 4)

    def sh(name: int, kind: int, off: int, size: int, link: int = 0) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, off, size, link, 0, 8, 0)

    sections = (
        sh(0, 0, 0, 0)
        + sh(1, 1, offs[0], len(text))
        + sh(7, 2, offs[1], len(syms), link=3)
        + sh(15, 3, offs[2], len(strtab))
        + sh(23, 3, offs[3], len(shstr))
    )
    return bytes(header) + body + sections


def test_function_symbols_of_a_module() -> None:
    assert elf.function_symbols(_module_elf()) == [
        ("f_one", ".text", 0x10, 8),
        ("f_two", ".text", 0x40, 4),
    ]


def test_user_addresses_are_named_against_the_tasks_program() -> None:
    syms = _symbols()
    table = _Table()
    table.add([(0x400000, "main"), (0x402000, "op_CPU_READ")])
    syms.processes[231] = _Process("dmalab-agent", table)
    assert syms.name(0x402040, 231) == "op_CPU_READ+0x40 [dmalab-agent]"
    assert syms.name(0x402040) == "0x402040"  # no task: the number
    assert syms.name(0x402040, 7) == "0x402040"  # a task not looked up
    assert syms.trace([0x402040, 0xFFFF800080020040], 231) == (
        "op_CPU_READ+0x40 [dmalab-agent] <- dcache_inval_poc+0x40"
    )


class _Guest:
    """An agent that answers READ_FILE from a dict, ENOENT for anything else."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def read_file(self, path: str, max_len: int = 65536) -> bytes:
        if path not in self.files:
            raise AgentError("READ_FILE", errno.ENOENT, path)
        return self.files[path][:max_len]


@pytest.mark.asyncio
async def test_process_symbols_reads_a_tasks_program_where_it_is_loaded() -> None:
    guest = _Guest({
        "/proc/231/comm": b"dmalab-agent\n", "/proc/231/exe": _module_elf(elf.ET_EXEC),
        "/proc/40/comm": b"pie\n", "/proc/40/exe": _module_elf(elf.ET_DYN),
        "/proc/40/maps": b"aaaa00000000-aaaa00001000 r-xp 00000000 00:02 9 /pie\n",
    })  # fmt: skip
    syms = GuestSymbols()
    for pid in (231, 40, 99):
        await process_symbols(guest, syms, pid)  # type: ignore[arg-type]
    # a program at fixed addresses: the symbols' values are addresses
    assert syms.name(0x12, 231) == "f_one+0x2 [dmalab-agent]"
    # position-independent: placed at its first mapping
    assert syms.name(0xAAAA00000044, 40) == "f_two+0x4 [pie]"
    # a task that has exited: its addresses stay numbers, and it is not asked for again
    assert syms.processes[99] is None and syms.name(0x12, 99) == "0x12"
    assert syms.task(231) == "dmalab-agent" and syms.task(99) == "pid 99"
