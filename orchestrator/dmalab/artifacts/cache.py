"""Where builds are cached (outside the checkout) and how concurrent builds are serialised."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """`$DMALAB_CACHE`, else `$XDG_CACHE_HOME/dmalab`, else `~/.cache/dmalab`."""
    root = os.environ.get("DMALAB_CACHE")
    if root:
        path = Path(root)
    else:
        # The XDG base directory spec: unset, empty or relative means the default.
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        path = base / "dmalab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    """The checkout this package runs from (it holds qemu-devices/ and images/)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "qemu-devices").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise RuntimeError(f"{here} is not inside a dmalab checkout")


def tree_hash(root: Path, *, exclude_suffixes: tuple[str, ...] = ()) -> str:
    """Content hash of the files under root (names and bytes), stable across checkouts."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix in exclude_suffixes or "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
