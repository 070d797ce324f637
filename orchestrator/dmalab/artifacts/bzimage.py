"""The kernel a guest boots: an uncompressed vmlinux, taken out of a bzImage when given one.

QEMU boots a vmlinux directly through its PVH entry point (no firmware decompression step, which is
slow under TCG), so the vmlinux must carry the PVH note (CONFIG_PVH=y).
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
from pathlib import Path

from dmalab.artifacts import elf
from dmalab.errors import BadInput, EnvironmentProblem

XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU looks for
_SETUP_MAGIC = b"HdrS"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_RELEASE = re.compile(rb"Linux version (\S+) \(")


def is_bzimage(data: bytes) -> bool:
    return len(data) > 0x250 and data[0x202:0x206] == _SETUP_MAGIC


def release(data: bytes) -> str | None:
    """The kernel release (`uname -r`) a bzImage or vmlinux reports, if it can be found."""
    if is_bzimage(data):
        (offset,) = struct.unpack_from("<H", data, 0x20E)
        text = data[offset + 0x200 : offset + 0x200 + 256]
        word = text.split(b"\0")[0].split(b" ")[0]
        return word.decode(errors="replace") or None
    match = _RELEASE.search(data)
    return match.group(1).decode(errors="replace") if match else None


def vmlinux_from(path: Path) -> bytes:
    """The bytes of a PVH-bootable vmlinux for the kernel at path (a bzImage or a vmlinux)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"kernel {path}: {exc.strerror or exc}") from exc
    if is_bzimage(data):
        data = _decompress_payload(data, path)
    elif not elf.is_elf(data):
        raise BadInput(f"kernel {path}: neither a bzImage nor an ELF vmlinux")
    _check_pvh(data, path)
    return data


def _decompress_payload(data: bytes, path: Path) -> bytes:
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    if len(payload) != payload_length or payload_length < 8:
        raise BadInput(f"kernel {path}: truncated bzImage (payload runs past the end of the file)")
    try:
        if payload.startswith(_ZSTD_MAGIC):
            # The build appends the 4-byte uncompressed size after the zstd frame: drop it.
            return unzstd(payload[:-4])
        if payload.startswith(_XZ_MAGIC):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(_GZIP_MAGIC):
            return gzip.decompress(payload)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise BadInput(f"kernel {path}: corrupt compressed payload ({exc})") from exc
    raise BadInput(
        f"kernel {path}: bzImage compressed with an unsupported method "
        f"(zstd, xz and gzip are supported): pass its vmlinux instead"
    )


def unzstd(frame: bytes) -> bytes:
    tool = shutil.which("zstd")
    if tool is None:
        raise EnvironmentProblem("zstd is needed to unpack the kernel: apt-get install zstd")
    proc = subprocess.run([tool, "-dcq"], input=frame, capture_output=True, check=False)
    if proc.returncode != 0:
        raise OSError(proc.stderr.decode(errors="replace").strip() or "zstd failed")
    return proc.stdout


def _check_pvh(vmlinux: bytes, path: Path) -> None:
    try:
        has_entry = any(
            name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY
            for name, n_type, _ in elf.notes(vmlinux)
        )
    except (elf.NotElf, struct.error) as exc:
        raise BadInput(f"kernel {path}: malformed ELF ({exc})") from exc
    if not has_entry:
        raise BadInput(f"kernel {path}: no PVH entry point; build the kernel with CONFIG_PVH=y")
