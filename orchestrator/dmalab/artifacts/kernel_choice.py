"""Which kernel a guest image is built around, as the command line names it.

`--kernel debian:6.1` (or `debian:6.12`, or `debian`: the default series) is the newest Debian
package of that series, fetched and built like the default image's; anything else is a kernel
file of the user's (with `--modules DIR`, its lib/modules/<release> tree). Each choice has a
label, which results name their kernel by: `debian:<series>`, or for a file the release its
modules tree is named after (else the file's name). A label never holds a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dmalab.artifacts.debian_kernel import DEFAULT_SERIES, SERIES
from dmalab.errors import BadInput

if TYPE_CHECKING:
    from dmalab.artifacts.guest_kernel import Progress
    from dmalab.artifacts.image import ImageBuild

DEBIAN = "debian"


@dataclass(frozen=True)
class KernelChoice:
    """A Debian series (`series`) or a user's kernel file (`file`, `modules`)."""

    label: str
    series: str | None = None
    file: Path | None = None
    modules: Path | None = None

    @property
    def arch(self) -> str | None:
        """The architecture a kernel file is for; None for a Debian series (it has both)."""
        if self.file is None:
            return None
        from dmalab.artifacts.guest_kernel import kernel_arch

        return kernel_arch(self.file)

    def with_modules(self, modules: Path | None) -> KernelChoice:
        """This kernel file with its modules tree (the label becomes the tree's release)."""
        if modules is None:
            return self
        if self.file is None:
            raise BadInput(f"--modules: {self.label} brings its own modules; give --modules "
                           "with a kernel file")  # fmt: skip
        return replace(self, modules=modules, label=modules.name)

    def image(self, arch: str, progress: Progress | None = None) -> ImageBuild:
        """The guest image for `arch` around this kernel (built unless cached)."""
        from dmalab.artifacts.image import ensure_image, stderr_progress

        return ensure_image(
            progress or stderr_progress, kernel=self.file, modules=self.modules, arch=arch,
            series=self.series,
        )  # fmt: skip


def parse_kernel(text: str) -> KernelChoice:
    """`debian`, `debian:SERIES` or a kernel file; BadInput naming what is wrong."""
    name, sep, series = text.partition(":")
    if name == DEBIAN:
        series = series if sep else DEFAULT_SERIES
        if series not in SERIES:
            raise BadInput(
                f"--kernel: {text!r}: Debian kernel series {series!r} is not one of "
                f"{', '.join(SERIES)}"
            )
        return KernelChoice(f"{DEBIAN}:{series}", series=series)
    path = Path(text).expanduser()
    if not path.is_file():
        why = "a directory" if path.is_dir() else "no such file"
        raise BadInput(
            f"--kernel: {text}: {why} (a kernel file, or debian:SERIES with SERIES one of "
            f"{', '.join(SERIES)})"
        )
    return KernelChoice(path.name, file=path)


def kernel_axis(kernels: Sequence[KernelChoice], modules: Path | None) -> list[KernelChoice]:
    """The kernels of a run (`--kernel` repeated, `--modules` going with the one kernel file),
    each once, in the order given; BadInput when two have one label."""
    files = [k for k in kernels if k.file is not None]
    if modules is not None:
        if not kernels:
            raise BadInput("--modules: give --kernel too (the kernel the modules belong to)")
        if len(files) != 1:
            raise BadInput(
                f"--modules: goes with one kernel file, and {len(files)} were given with --kernel"
            )
    chosen = [k.with_modules(modules) if k.file is not None else k for k in kernels]
    out: list[KernelChoice] = []
    for k in chosen:
        if k in out:
            continue
        if any(o.label == k.label for o in out):
            raise BadInput(f"--kernel: two kernels named {k.label!r} (results name kernels by it)")
        out.append(k)
    return out
