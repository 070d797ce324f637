"""Where builds are cached (outside the checkout) and how concurrent builds are serialised."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from dmalab.errors import EnvironmentProblem


def cache_root() -> Path:
    """`$DMALAB_CACHE`, else `$XDG_CACHE_HOME/dmalab`, else `~/.cache/dmalab`, created if
    needed; EnvironmentProblem naming the variable (or the default path) when it is not a
    writable directory."""
    root = os.environ.get("DMALAB_CACHE")
    if root:
        path = Path(root)
    else:
        # The XDG base directory spec: unset, empty or relative means the default.
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        path = base / "dmalab"
    what = f"DMALAB_CACHE={root}" if root else str(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EnvironmentProblem(f"{what}: not a directory (set DMALAB_CACHE to one)") from None
    except OSError as exc:
        raise EnvironmentProblem(f"{what}: cannot create it: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EnvironmentProblem(f"{what}: not writable (set DMALAB_CACHE to a directory you own)")
    return path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the whole new one, never a part,
    even when the writer is killed or the disk fills up half way."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, most likely: say which file could not be written
        raise EnvironmentProblem(f"{path}: cannot write: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


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
