"""A topology's [kernel] table: the user's kernel file, its module tree and extra command-line
words, checked as the image builder and the guest's kernel would take them, so that a mistake is
refused when the topology is loaded rather than when an image is built or the guest boots."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from dmalab.errors import BadInput
from dmalab.spec.tables import Table, shown

#: Linux's command line holds 2048 bytes (COMMAND_LINE_SIZE on x86 and arm64); dmalab's own
#: words (console, vIOMMU, agent) take under half of it.
MAX_ARGS_BYTES = 1024
#: How the image builder tells a kernel file (artifacts/guest_kernel.py): an x86 bzImage (its
#: setup header at 0x202) or ELF vmlinux; an arm64 Image (magic at 0x38), or gzip'd.
_BZIMAGE = (0x202, b"HdrS")
_ARM64 = (0x38, b"ARM\x64")
_ELF = b"\x7fELF"
_GZIP = b"\x1f\x8b"
#: Files of a module tree the image builder takes modules from (artifacts/kmod.py).
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def kernel_files(k: Table, topology: Path, arch: str) -> tuple[Path | None, Path | None]:
    """kernel.kernel (a kernel of `arch` the image builder can boot) and kernel.modules (its
    module tree, named for its release), relative to the topology file; None when not given."""
    if k.has("modules") and not k.has("kernel"):
        k.fail("modules", "needs kernel.kernel too (a module tree goes with its kernel)")
    kernel, mode = _existing(k, "kernel", topology)
    if kernel is None:
        return None, None
    release = _kernel_file(k, kernel, mode, arch)
    modules, mode = _existing(k, "modules", topology)
    if modules is not None:
        _module_tree(k, modules, mode)
        if modules.name != release:
            k.fail("modules", f"{modules}: named for {modules.name}, but the kernel is {release}")
    return kernel, modules


def _existing(k: Table, key: str, topology: Path) -> tuple[Path | None, int]:
    """The path `key` names and its file mode; (None, 0) when not given."""
    value = k.get(key, str)
    if value is None:
        return None, 0
    if not value or "\0" in value:
        k.fail(key, f"{shown(value)} is not a path")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user
        k.fail(key, f"{shown(value)}: no such user's home directory")
    path = path if path.is_absolute() else topology.parent / path
    try:
        return path, path.stat().st_mode
    except OSError as exc:
        k.fail(key, f"{path}: {exc.strerror or exc}")


def _kernel_file(k: Table, path: Path, mode: int, arch: str) -> str:
    """The kernel's release, once it is known to be a kernel the image builder takes."""
    if not stat.S_ISREG(mode):
        k.fail("kernel", f"{path}: not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(0x240)
    except OSError as exc:
        k.fail("kernel", f"{path}: cannot read: {exc.strerror or exc}")
    if arch == "x86_64":
        at, magic = _BZIMAGE
        if not (head[at : at + len(magic)] == magic or head.startswith(_ELF)):
            k.fail("kernel", f"{path}: neither a bzImage nor an ELF vmlinux")
    else:
        at, magic = _ARM64
        if not (head[at : at + len(magic)] == magic or head.startswith(_GZIP)):
            k.fail("kernel", f"{path}: not an arm64 Image (gzip'd or plain)")
    try:
        st = path.stat()
        release = _release(path, arch, st.st_mtime_ns, st.st_size)
    except BadInput as exc:
        k.fail("kernel", str(exc).removeprefix("kernel "))
    except (OSError, EOFError, ValueError) as exc:
        k.fail("kernel", f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
    if not release:
        k.fail("kernel", f"{path}: no Linux version string in it")
    return release


@functools.lru_cache(maxsize=8)
def _release(path: Path, arch: str, mtime_ns: int, size: int) -> str | None:
    """What the image builder reads of a kernel file (artifacts/guest_kernel.py, user): its
    bootable form (x86: a vmlinux with a PVH entry) and its release. Cached by the file's time
    and size: a run loads its topologies more than once."""
    # Imported here: only a topology with a kernel of its own needs the image builder's code.
    from dmalab.artifacts import bzimage, guest_kernel

    bootable = guest_kernel.boot_kernel(arch, path)
    return bzimage.release(path.read_bytes() if arch == "x86_64" else bootable)


def _module_tree(k: Table, path: Path, mode: int) -> None:
    if not stat.S_ISDIR(mode):
        k.fail("modules", f"{path}: not a directory (expected lib/modules/<release>)")
    try:
        entries = os.listdir(path)
    except OSError as exc:
        k.fail("modules", f"{path}: cannot read: {exc.strerror or exc}")
    if "modules.builtin" in entries:
        return
    # os.walk does not follow the build/ and source/ links into the kernel headers.
    for _dir, _dirs, files in os.walk(path):
        if any(f.endswith(_MODULE_SUFFIXES) for f in files):
            return
    k.fail("modules", f"{path}: no kernel modules and no modules.builtin in it")


def kernel_args(k: Table) -> tuple[str, ...]:
    """kernel.args: words the guest kernel reads as they are (printable ASCII, no quote, which
    the kernel would read as the start of a quoted value), within its command line's size."""
    args = k.get("args", list, [])
    for n, word in enumerate(args):
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            k.src.fail(
                f"kernel.args[{n}]", f"must be one non-empty word without spaces, not {shown(word)}"
            )
        if not all("!" <= c <= "~" for c in word) or '"' in word:
            k.src.fail(f"kernel.args[{n}]", f"{shown(word)}: only printable ASCII, no '\"'")
    if len(" ".join(args)) > MAX_ARGS_BYTES:
        k.fail(
            "args",
            f"{len(' '.join(args))} bytes, more than the {MAX_ARGS_BYTES} left for them on "
            "Linux's command line",
        )
    return tuple(args)
