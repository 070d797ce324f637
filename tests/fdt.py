"""A minimal reader of flattened device trees (the DTB format, devicetree spec v0.4 ch. 5)."""

from __future__ import annotations

import struct

MAGIC = 0xD00DFEED
BEGIN_NODE, END_NODE, PROP, NOP, END = 1, 2, 3, 4, 9


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse(blob: bytes) -> dict[str, dict[str, bytes]]:
    """Every node by its full path ("/" for the root), each with its properties' raw values."""
    magic, _size, off_struct, off_strings = struct.unpack_from(">4I", blob)
    if magic != MAGIC:
        raise ValueError(f"not a DTB: magic {magic:#x}")

    def string(offset: int) -> str:
        end = blob.index(b"\0", off_strings + offset)
        return blob[off_strings + offset : end].decode()

    nodes: dict[str, dict[str, bytes]] = {}
    path: list[str] = []
    pos = off_struct
    while True:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == BEGIN_NODE:
            end = blob.index(b"\0", pos)
            path.append(blob[pos:end].decode())
            pos = _align(end + 1)
            full = "/" + "/".join(p for p in path if p)
            if full in nodes:
                raise ValueError(f"node {full} twice")
            nodes[full] = {}
        elif token == END_NODE:
            path.pop()
        elif token == PROP:
            length, nameoff = struct.unpack_from(">2I", blob, pos)
            pos += 8
            node = nodes["/" + "/".join(p for p in path if p)]
            node[string(nameoff)] = blob[pos : pos + length]
            pos = _align(pos + length)
        elif token == NOP:
            continue
        elif token == END:
            if path:
                raise ValueError("FDT_END inside a node")
            return nodes
        else:
            raise ValueError(f"bad token {token:#x} at {pos - 4:#x}")
