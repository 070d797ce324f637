"""Kernel files for topology tests: as small as the image builder's checks allow."""

from __future__ import annotations

import struct

RELEASE = "6.1.0-test"


def vmlinux(release: str = RELEASE) -> bytes:
    """An x86 ELF vmlinux with a PVH entry note and a version string, nothing else."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x1000000)
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"  # ELF64, little-endian, version 1
    struct.pack_into("<Q", header, 0x20, 64)  # program headers right after
    struct.pack_into("<HH", header, 0x36, 56, 1)  # one of 56 bytes
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)  # PT_NOTE
    return bytes(header) + phdr + note + f"Linux version {release} (test) #1\n".encode()


def arm64_image(release: str = RELEASE) -> bytes:
    """An arm64 Image: its magic at 0x38 and a version string."""
    image = bytearray(0x100)
    image[0x38:0x3C] = b"ARM\x64"
    return bytes(image) + f"Linux version {release} (test) #1\n".encode()
