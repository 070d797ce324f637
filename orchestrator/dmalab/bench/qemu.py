"""`dmalab bench qemu`: how long QEMU (both targets, one configure) takes to build from nothing,
and to find again when nothing changed.

The cold build runs in a private, empty cache: the Debian source is fetched and unpacked, the
meson venv made, QEMU configured and compiled, as on a new machine (the host's Debian packages
are whatever is installed). The no-change rebuild then asks for the same build again. The
user's own cache is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.bench import envelope, target_lines, upper_targets
from dmalab.bench.device import machine_info
from dmalab.bench.image import private_cache

SCHEMA = "dmalab.bench.qemu/1"
TARGETS = {"cold_s": 480.0, "unchanged_s": 5.0}


def run(
    *,
    repeats: int = 5,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda _m: None,
    command: str = "",
) -> dict[str, Any]:
    with private_cache("dmalab-bench-qemu-"):
        log("bench qemu: cold build of both targets in an empty cache")
        start = time.perf_counter()
        build = ensure_qemu(progress)
        cold = time.perf_counter() - start
        unchanged = []
        for i in range(repeats):
            log(f"bench qemu: no-change rebuild {i + 1}/{repeats}")
            start = time.perf_counter()
            ensure_qemu(progress)
            unchanged.append(time.perf_counter() - start)
    results = {
        "cold_s": round(cold, 1),
        "compile_s": build.manifest.get("build_seconds"),
        "unchanged_s": round(sorted(unchanged)[len(unchanged) // 2], 3),
    }
    targets = upper_targets(results, TARGETS)
    return envelope(
        SCHEMA, command, machine_info(), results, targets,
        binaries=sorted(build.binaries),
        configure_options=build.manifest.get("configure_options"),
    )  # fmt: skip


def render_table(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "| measure | seconds |",
        "|---|---|",
        f"| cold build of {', '.join(report['binaries'])} (empty cache, download included) "
        f"| {r['cold_s']:.1f} |",
        f"| of which the build proper (as the manifest records it) | {r['compile_s']} |",
        f"| no-change rebuild (median) | {r['unchanged_s']:.3f} |",
        "",
    ]
    lines += target_lines(report["targets"])
    return "\n".join(lines) + "\n"
