"""`dmalab bench image`: how long each architecture's guest image takes to build from nothing
and when cached.

The cold builds run in a private, empty cache (downloads included, as on a new machine; the
arm64 one after the x86 one, as `dmalab build` does them); the warm builds repeat them with
everything cached. The user's own cache is never touched. `private_cache()` serves
`dmalab bench qemu` too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dmalab.artifacts.image import ensure_image
from dmalab.bench import envelope, target_lines
from dmalab.provenance import machine_info

SCHEMA = "dmalab.bench.image/2"
ARCHES = ("x86_64", "aarch64")
TARGETS = {"cold_s": 60.0, "warm_s": 2.0}


@contextmanager
def private_cache(prefix: str = "dmalab-bench-image-") -> Iterator[Path]:
    """A fresh empty $DMALAB_CACHE for the duration, removed afterwards."""
    saved = os.environ.get("DMALAB_CACHE")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DMALAB_CACHE"] = str(root)
    try:
        yield root
    finally:
        if saved is None:
            os.environ.pop("DMALAB_CACHE", None)
        else:
            os.environ["DMALAB_CACHE"] = saved
        shutil.rmtree(root, ignore_errors=True)


def run(
    *, warm_repeats: int = 5, log: Callable[[str], None] = lambda _m: None, command: str = ""
) -> dict[str, Any]:
    results: dict[str, dict[str, float]] = {}
    kernels = {}
    with private_cache():
        for arch in ARCHES:
            log(f"bench image: {arch} cold build in an empty cache")
            start = time.perf_counter()
            build = ensure_image(progress=log, arch=arch)
            cold = time.perf_counter() - start
            warm = []
            for i in range(warm_repeats):
                log(f"bench image: {arch} warm build {i + 1}/{warm_repeats}")
                start = time.perf_counter()
                ensure_image(progress=lambda _m: None, arch=arch)
                warm.append(time.perf_counter() - start)
            results[arch] = {
                "cold_s": round(cold, 2),
                "warm_s": round(sorted(warm)[len(warm) // 2], 3),
            }
            kernels[arch] = build.kernel_release
    targets = [
        {"name": f"{arch} {k}", "value": results[arch][k], "target": f"<= {v}",
         "pass": results[arch][k] <= v}
        for arch in ARCHES
        for k, v in TARGETS.items()
    ]  # fmt: skip
    return envelope(SCHEMA, command, machine_info(), results, targets, kernels=kernels)


def render_table(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "| arch | cold build (empty cache, downloads included), s | warm build (median), s |",
        "|---|---|---|",
        *(f"| {arch} | {r[arch]['cold_s']:.1f} | {r[arch]['warm_s']:.2f} |" for arch in r),
        "",
    ]
    lines += target_lines(report["targets"])
    return "\n".join(lines) + "\n"
