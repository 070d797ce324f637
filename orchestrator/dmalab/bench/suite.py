"""`dmalab bench suite`: wall time of the whole built-in suite, `dmalab run -j 1` and `-j 2`.

Each is a `dmalab run --results DIR` process as a user starts it (interpreter start, artifact
checks, boots, snapshots, every variant), timed from start to exit; both run in the same bench
run, one after the other, so their ratio compares like with like. The target: each finishes
within 60 s. The results files of the two runs are compared too (they must agree but for
`timing` and `machine`), and the suite's own per-machine boot and snapshot times are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmalab.bench import target_lines
from dmalab.provenance import machine_info
from dmalab.scenarios.results import comparable

SCHEMA = "dmalab.bench.suite/1"
JOBS = (1, 2)
TARGET_S = 60.0
#: A run that takes longer than this is stopped (and fails its target).
RUN_TIMEOUT_S = 600.0


def _comparable(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The results without what may differ from run to run (docs/scenarios.md)."""
    return [comparable(r) for r in doc.get("results", [])]


def _one(jobs: int, accel: str | None, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "dmalab", "run", "-j", str(jobs), "--results", str(out)]
    argv += ["--accel", accel] if accel else []
    log(f"bench suite: dmalab run -j {jobs}")
    start = time.perf_counter()
    # Its own process group: a Ctrl-C at the terminal reaches it only as the one SIGTERM sent
    # here (a second signal would cut its clean-up short), and it stops as it does on Ctrl-C.
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0
    ) as proc:
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            code: int | None = proc.returncode
            tail = (err.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.communicate()
            code, tail = None, f"stopped after {RUN_TIMEOUT_S:g} s"
        except BaseException:
            proc.terminate()
            proc.communicate()
            raise
    wall = time.perf_counter() - start
    file = out / "results.json"
    doc = json.loads(file.read_text()) if code is not None and file.is_file() else {}
    timing = doc.get("timing", {})
    return {
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "suite_wall_s": timing.get("wall_seconds"),
        "exit_code": code,
        "last_stderr_line": tail if code else "",
        "results": len(doc.get("results", [])),
        "machines": timing.get("machines", []),
        "_doc": doc,
    }


def run(
    *, accel: str | None = None, log: Callable[[str], None] = lambda _m: None, command: str = ""
) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="dmalab-bench-suite-") as tmp:
        for jobs in JOBS:
            runs.append(_one(jobs, accel, Path(tmp) / f"j{jobs}", log))
    docs = [r.pop("_doc") for r in runs]
    same = all(d and _comparable(d) == _comparable(docs[0]) for d in docs)
    first, last = runs[0]["wall_s"], runs[-1]["wall_s"]
    targets = [
        {"name": f"wall_j{r['jobs']}_s", "value": r["wall_s"], "target": f"<= {TARGET_S:g}",
         "pass": r["exit_code"] == 0 and r["wall_s"] <= TARGET_S}
        for r in runs
    ]  # fmt: skip
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": machine_info(),
        "runs": runs,
        "speedup": round(first / last, 2) if last else None,
        "same_results": same,
        "targets": targets,
        "all_targets_pass": all(t["pass"] for t in targets),
    }


def render_table(report: dict[str, Any]) -> str:
    lines = ["| run | wall s | suite s | machines (boot s) | exit |", "|---|---|---|---|---|"]
    for r in report["runs"]:
        boots = ", ".join(f"{m['topology']} {m.get('boot_seconds', '?')}" for m in r["machines"])
        suite = f"{r['suite_wall_s']:.1f}" if r["suite_wall_s"] is not None else "-"
        lines.append(f"| dmalab run -j {r['jobs']} | {r['wall_s']:.1f} | {suite} | {boots} | "
                     f"{r['exit_code']} |")  # fmt: skip
    lines.append("")
    lines.append(f"speed-up -j {JOBS[0]} / -j {JOBS[-1]}: {report['speedup']}x; "
                 f"same results: {'yes' if report['same_results'] else 'NO'}")  # fmt: skip
    lines += target_lines(report["targets"])
    for r in report["runs"]:
        if r["exit_code"]:
            lines.append(f"dmalab run -j {r['jobs']} failed: {r['last_stderr_line']}")
    return "\n".join(lines) + "\n"
