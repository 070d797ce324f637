"""Just enough of ELF64 (little-endian) to check a vmlinux, a module and a static program, and
to name a module's functions."""

from __future__ import annotations

import struct
from collections.abc import Iterator

ET_EXEC = 2
ET_DYN = 3
PT_INTERP = 3
PT_NOTE = 4
SHT_SYMTAB = 2
STT_FUNC = 2
SYM_SIZE = 24
ELF_MAGIC = b"\x7fELF"


class NotElf(ValueError):
    """The bytes are not a little-endian ELF64 object."""


def _check(data: bytes) -> None:
    if len(data) < 64 or data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        raise NotElf("not a little-endian 64-bit ELF file")


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def file_type(data: bytes) -> int:
    """e_type: ET_EXEC for a program at fixed addresses, ET_DYN for a position-independent one."""
    _check(data)
    (e_type,) = struct.unpack_from("<H", data, 0x10)
    return int(e_type)


def program_headers(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, file offset, file size) of every program header."""
    _check(data)
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        (p_type,) = struct.unpack_from("<I", data, base)
        (p_offset,) = struct.unpack_from("<Q", data, base + 0x08)
        (p_filesz,) = struct.unpack_from("<Q", data, base + 0x20)
        yield p_type, p_offset, p_filesz


def notes(data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """(owner name, type, descriptor) of every note in the PT_NOTE segments."""
    for p_type, offset, size in program_headers(data):
        if p_type != PT_NOTE:
            continue
        pos, end = offset, offset + size
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", data, pos)
            pos += 12
            name = data[pos : pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            yield name, n_type, desc


def has_interpreter(data: bytes) -> bool:
    """True for a dynamically linked program (it names a loader such as ld-linux)."""
    return any(p_type == PT_INTERP for p_type, _, _ in program_headers(data))


def section(data: bytes, wanted: str) -> bytes | None:
    """The contents of the section called wanted, or None."""
    _check(data)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shstrndx >= shnum:
        return None

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_offset, str_size = header(shstrndx)
    names = data[str_offset : str_offset + str_size]
    for index in range(shnum):
        name, offset, size = header(index)
        if names[name : names.index(b"\0", name)].decode(errors="replace") == wanted:
            return data[offset : offset + size]
    return None


def function_symbols(data: bytes) -> list[tuple[str, str, int, int]]:
    """(name, section, value, size) of every function symbol (a module's, relocatable: the
    value is the offset in its section; a program's: its address, or its offset from the load
    address when position-independent)."""
    _check(data)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shstrndx >= shnum:
        return []
    heads = []
    for index in range(shnum):
        base = shoff + index * shentsize
        name, sh_type = struct.unpack_from("<II", data, base)
        offset, size, link = struct.unpack_from("<QQI", data, base + 0x18)
        heads.append((name, sh_type, offset, size, link))
    _, _, str_offset, str_size, _ = heads[shstrndx]
    names = data[str_offset : str_offset + str_size]

    def text(table: bytes, at: int) -> str:
        return table[at : table.index(b"\0", at)].decode(errors="replace")

    out = []
    for _, sh_type, offset, size, link in heads:
        if sh_type != SHT_SYMTAB or link >= shnum:
            continue
        strtab = data[heads[link][2] : heads[link][2] + heads[link][3]]
        for at in range(offset, offset + size - SYM_SIZE + 1, SYM_SIZE):
            st_name, st_info, _, st_shndx, value, st_size = struct.unpack_from("<IBBHQQ", data, at)
            if st_info & 0xF == STT_FUNC and 0 < st_shndx < shnum:
                out.append((text(strtab, st_name), text(names, heads[st_shndx][0]), value, st_size))
    return out
