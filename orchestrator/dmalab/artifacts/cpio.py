"""A deterministic writer for the "newc" cpio format the kernel unpacks as an initramfs.

Our own writer, not cpio(1): no host uid/gid or mtime leaks in, entries are sorted, device nodes
can be made without root, and the same inputs always give the same bytes (so the same sha256).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    mode: int  # full st_mode: file type and permission bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class Archive:
    """Entries keyed by path (relative, no leading "/"); parents are created as needed."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(path, Entry(stat.S_IFDIR | mode))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, Entry(stat.S_IFREG | mode, data))

    def symlink(self, path: str, target: str) -> None:
        self._add(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def _add(self, path: str, entry: Entry) -> None:
        path = _norm(path)
        parent = path.rpartition("/")[0]
        if parent and parent not in self._entries:
            self.directory(parent)
        self._entries[path] = entry

    def write(self, out: BinaryIO) -> None:
        """Write the archive: sorted paths (a parent sorts before its children), inode numbers
        from 1, uid/gid 0 and mtime 0."""
        for ino, path in enumerate(sorted(self._entries), start=1):
            _write_entry(out, ino, path, self._entries[path])
        _write_entry(out, 0, _TRAILER, Entry(0))


def _norm(path: str) -> str:
    path = path.strip("/")
    if not path or ".." in path.split("/"):
        raise ValueError(f"bad archive path {path!r}")
    return path


def _write_entry(out: BinaryIO, ino: int, path: str, entry: Entry) -> None:
    name = path.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0,  # mtime
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # check (unused by newc)
    )
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    out.write(header + name + _pad4(len(header) + len(name)))
    out.write(entry.data + _pad4(len(entry.data)))
