"""`dmalab bench image`: how long the guest image takes to build from nothing and when cached.

The cold build runs in a private, empty cache (downloads included, as on a new machine); the warm
build repeats it with everything cached. The user's own cache is never touched.
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
from dmalab.provenance import machine_info

SCHEMA = "dmalab.bench.image/1"
TARGETS = {"cold_s": 60.0, "warm_s": 2.0}


@contextmanager
def _private_cache() -> Iterator[Path]:
    saved = os.environ.get("DMALAB_CACHE")
    root = Path(tempfile.mkdtemp(prefix="dmalab-bench-image-"))
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
    with _private_cache():
        log("bench image: cold build in an empty cache")
        start = time.perf_counter()
        build = ensure_image(progress=log)
        cold = time.perf_counter() - start
        warm = []
        for i in range(warm_repeats):
            log(f"bench image: warm build {i + 1}/{warm_repeats}")
            start = time.perf_counter()
            ensure_image(progress=lambda _m: None)
            warm.append(time.perf_counter() - start)
    results = {"cold_s": round(cold, 2), "warm_s": round(sorted(warm)[len(warm) // 2], 3)}
    targets = [
        {"name": k, "value": results[k], "target": f"<= {v}", "pass": results[k] <= v}
        for k, v in TARGETS.items()
    ]
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": machine_info(),
        "kernel": build.kernel_release,
        "parts": build.parts,
        "results": results,
        "targets": targets,
        "all_targets_pass": all(t["pass"] for t in targets),
    }


def render_table(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "| measure | seconds |",
        "|---|---|",
        f"| cold build (empty cache, downloads included) | {r['cold_s']:.1f} |",
        f"| warm build (median) | {r['warm_s']:.2f} |",
        "",
    ]
    for t in report["targets"]:
        lines.append(
            f"target {t['name']} {t['target']}: {t['value']} {'pass' if t['pass'] else 'MISSED'}"
        )
    return "\n".join(lines) + "\n"
