"""Kernel modules for the initramfs: found in a lib/modules/<release> tree, with their dependencies,
decompressed (busybox insmod/modprobe load only plain .ko files).

Dependencies come from each module's own .modinfo `depends=` field, so a tree that never saw
depmod (Debian's package ships none: its postinst runs depmod) works as well as an installed one.
"""

from __future__ import annotations

import gzip
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path

from dmalab.artifacts import elf
from dmalab.artifacts.bzimage import unzstd
from dmalab.errors import BadInput

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(filename: str) -> str:
    """The name the kernel knows a module file by: virtio-iommu.ko.xz -> virtio_iommu."""
    for suffix in _SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # under lib/modules/<release>, uncompressed name (kernel/.../virtio-iommu.ko)
    data: bytes  # the uncompressed module
    depends: tuple[str, ...]
    vermagic: str


@dataclass
class ModuleTree:
    """A lib/modules/<release> directory (Debian's unpacked package or a user's tree)."""

    root: Path
    _files: dict[str, Path] = field(default_factory=dict, init=False, repr=False)
    _builtin: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def release(self) -> str:
        return self.root.name

    def _index(self) -> None:
        if self._files:
            return
        if not self.root.is_dir():
            raise BadInput(f"modules {self.root}: not a directory")
        # os.walk does not follow the build/ and source/ symlinks into the kernel headers.
        for dirpath, _dirs, files in os.walk(self.root):
            for filename in files:
                if filename.endswith(_SUFFIXES):
                    self._files.setdefault(module_name(filename), Path(dirpath, filename))
        builtin = self.root / "modules.builtin"
        if builtin.is_file():
            self._builtin = {
                module_name(line.rsplit("/", 1)[-1]) for line in builtin.read_text().split()
            }
        if not self._files and not self._builtin:
            raise BadInput(f"modules {self.root}: no kernel modules and no modules.builtin in it")

    def is_builtin(self, name: str) -> bool:
        self._index()
        return name in self._builtin

    def load(self, name: str) -> Module | None:
        """The module called name, decompressed, or None if the tree has no such file."""
        self._index()
        path = self._files.get(name)
        if path is None:
            return None
        relpath = str(path.relative_to(self.root))
        for suffix in _SUFFIXES[1:]:
            relpath = relpath.removesuffix(suffix[3:])
        return module_from_bytes(relpath, _decompress(path), origin=path)

    def closure(self, names: list[str]) -> tuple[list[Module], list[str]]:
        """The modules named and everything they depend on, dependencies first; and the names
        found neither as files nor built in."""
        ordered: list[Module] = []
        missing: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            name = module_name(name)
            if name in seen:
                return
            seen.add(name)
            module = self.load(name)
            if module is None:
                if not self.is_builtin(name):
                    missing.append(name)
                return
            for dep in module.depends:
                visit(dep)
            ordered.append(module)

        for name in names:
            visit(name)
        return ordered, missing


def module_from_bytes(relpath: str, data: bytes, *, origin: Path | str) -> Module:
    """A plain .ko's Module, its dependencies and vermagic read from its .modinfo section."""
    try:
        info = elf.section(data, ".modinfo") or b""
    except (elf.NotElf, ValueError) as exc:
        raise BadInput(f"module {origin}: malformed ({exc})") from exc
    fields = dict(
        item.decode(errors="replace").partition("=")[::2]
        for item in info.split(b"\0")
        if b"=" in item
    )
    depends = tuple(d for d in fields.get("depends", "").split(",") if d)
    name = module_name(relpath.rsplit("/", 1)[-1])
    return Module(name, relpath, data, depends, fields.get("vermagic", ""))


def _decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(raw)
        if path.name.endswith(".gz"):
            return gzip.decompress(raw)
        if path.name.endswith(".zst"):
            return unzstd(raw)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise BadInput(f"module {path}: cannot decompress ({exc})") from exc
    return raw


def modules_dep(modules: list[Module]) -> str:
    """A modules.dep for (busybox) modprobe naming the plain .ko files the initramfs holds.

    modules must be in load order (as closure() returns them). As depmod writes it, each line
    lists every transitive dependency, the one to load last first."""
    by_name = {m.name: m for m in modules}
    order = {m.name: i for i, m in enumerate(modules)}
    lines = []
    for module in modules:
        needed: set[str] = set()
        stack = list(module.depends)
        while stack:
            dep = stack.pop()
            if dep in by_name and dep not in needed:
                needed.add(dep)
                stack += by_name[dep].depends
        deps = sorted(needed, key=order.__getitem__, reverse=True)
        line = " ".join([f"{module.relpath}:", *(by_name[d].relpath for d in deps)])
        lines.append(line + "\n")
    return "".join(lines)
