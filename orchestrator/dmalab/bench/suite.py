"""`dmalab bench suite`: wall time of the built-in suite, `dmalab run -j 1` and `-j 2`, and where
it goes.

Each is a `dmalab run --results DIR` process as a user starts it (interpreter start, artifact
checks, boots, snapshots, every variant, the reports), timed from start to exit; all run in the
same bench run, one after the other, so their ratios compare like with like. With a baseline (a
dmalab checkout given as `--baseline DIR`, whose `orchestrator/` then serves its runs), each run
of the baseline goes right before the same run of this checkout, and the report gives each
ratio. The results files of all runs are compared (they must agree but for `timing` and
`machine`). Each run's results.json says where its time went: boots, snapshot saves, restores,
steps, waits for blocked steps, the reports, and what the `exclusive` variants cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmalab.bench import ratio, target_lines
from dmalab.provenance import machine_info
from dmalab.scenarios.results import comparable

SCHEMA = "dmalab.bench.suite/2"
JOBS = (1, 2)
#: Wall-time targets per `--arch` and -j: the whole suite within a minute; the x86 suite, the
#: one a user runs most, within 15 s on one machine at a time and 10 s on two.
TARGETS_S = {
    "all": {1: 60.0, 2: 60.0},
    "x86_64": {1: 15.0, 2: 10.0},
    "aarch64": {1: 60.0, 2: 60.0},
}
#: A run that takes longer than this is stopped (and fails its target).
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunSpec:
    """One `dmalab run` of the bench: -j, --arch, --accel, and the checkout that runs it (None:
    this one)."""

    jobs: int
    arch: str = "all"
    accel: str | None = None
    checkout: Path | None = None

    @property
    def label(self) -> str:
        return ("baseline " if self.checkout else "") + f"dmalab run -j {self.jobs}"

    def argv(self, out: Path) -> list[str]:
        argv = [sys.executable, "-m", "dmalab", "run", "-j", str(self.jobs), "--results", str(out)]
        argv += ["--arch", self.arch] if self.arch != "all" else []
        return argv + (["--accel", self.accel] if self.accel else [])

    def env(self) -> dict[str, str] | None:
        if self.checkout is None:
            return None
        # The baseline's own package first on the path: its dmalab answers `-m dmalab`.
        old = os.environ.get("PYTHONPATH")
        path = str(self.checkout.resolve() / "orchestrator") + (f":{old}" if old else "")
        return {**os.environ, "PYTHONPATH": path}


def _comparable(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The results without what may differ from run to run (docs/scenarios.md)."""
    return [comparable(r) for r in doc.get("results", [])]


def _is_exclusive(result: dict[str, Any]) -> bool:
    return result.get("variant") == "exclusive" or result.get("policy") == "exclusive"


def breakdown(doc: dict[str, Any], wall: float) -> dict[str, Any]:
    """Where a run's time went, from its results.json. Machine-seconds: summed over machines,
    so with -j 2 they add up to more than the wall time. `other_s` is the process's time
    outside the suite and the reports (interpreter start, imports, artifact checks)."""
    timing = doc.get("timing", {})
    machines = timing.get("machines", [])
    results = [r.get("timing", {}) for r in doc.get("results", [])]
    variants = sum(t.get("seconds", 0.0) for t in results)
    waits = sum(t.get("wait_seconds", 0.0) for t in results)
    suite = timing.get("wall_seconds")
    report = timing.get("report_seconds")
    out = {
        "boot_s": sum(m.get("boot_seconds", 0.0) for m in machines),
        "snapshot_save_s": sum(m.get("snapshot_seconds", 0.0) for m in machines),
        "restore_s": sum(t.get("restore_seconds", 0.0) for t in results),
        "steps_s": variants - waits,
        "waits_s": waits if any("wait_seconds" in t for t in results) else None,
        "report_s": report,
        "other_s": wall - suite - (report or 0.0) if suite is not None else None,
    }
    return {k: round(v, 2) if v is not None else None for k, v in out.items()}


def exclusive_cost(doc: dict[str, Any]) -> dict[str, Any]:
    """What the `exclusive` variants (and a matrix's `exclusive` cells) cost: their count, their
    seconds (restores included), and their share of all variants' seconds."""
    results = doc.get("results", [])
    mine = [r.get("timing", {}) for r in results if _is_exclusive(r)]
    every = sum(r.get("timing", {}).get("seconds", 0.0) for r in results)
    seconds = sum(t.get("seconds", 0.0) + t.get("restore_seconds", 0.0) for t in mine)
    waits = sum(t.get("wait_seconds", 0.0) for t in mine)
    return {
        "variants": len(mine),
        "seconds": round(seconds, 2),
        "wait_seconds": round(waits, 2),
        "share_of_variants": round(sum(t.get("seconds", 0.0) for t in mine) / every, 3)
        if every
        else None,
    }


def _one(spec: RunSpec, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"bench suite: {spec.label}")
    start = time.perf_counter()
    # Its own process group: a Ctrl-C at the terminal reaches it only as the one SIGTERM sent
    # here (a second signal would cut its clean-up short), and it stops as it does on Ctrl-C.
    with subprocess.Popen(
        spec.argv(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        process_group=0, env=spec.env(),
    ) as proc:  # fmt: skip
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
        "jobs": spec.jobs,
        "baseline": spec.checkout is not None,
        "wall_s": round(wall, 2),
        "suite_wall_s": timing.get("wall_seconds"),
        "exit_code": code,
        "last_stderr_line": tail if code else "",
        "results": len(doc.get("results", [])),
        "machines": timing.get("machines", []),
        "breakdown": breakdown(doc, wall),
        "exclusive": exclusive_cost(doc),
        "_doc": doc,
    }


def plan(
    arch: str, accel: str | None, baseline: Path | None, jobs: Sequence[int] = JOBS
) -> list[RunSpec]:
    """The runs, in order: for each -j, the baseline's (if any) right before this checkout's."""
    specs = []
    for j in jobs:
        if baseline is not None:
            specs.append(RunSpec(j, arch, accel, baseline))
        specs.append(RunSpec(j, arch, accel))
    return specs


def run(
    *,
    arch: str = "all",
    accel: str | None = None,
    baseline: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    command: str = "",
) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="dmalab-bench-suite-") as tmp:
        for n, spec in enumerate(plan(arch, accel, baseline)):
            runs.append(_one(spec, Path(tmp) / f"run{n}", log))
    docs = [r.pop("_doc") for r in runs]
    same = all(d and _comparable(d) == _comparable(docs[0]) for d in docs)
    mine = [r for r in runs if not r["baseline"]]
    first, last = mine[0]["wall_s"], mine[-1]["wall_s"]
    limits = TARGETS_S[arch]
    targets = [
        {"name": f"wall_j{r['jobs']}_s", "value": r["wall_s"],
         "target": f"<= {limits[r['jobs']]:g}",
         "pass": r["exit_code"] == 0 and r["wall_s"] <= limits[r["jobs"]]}
        for r in mine
    ]  # fmt: skip
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": machine_info(),
        "arch": arch,
        "baseline": str(baseline) if baseline is not None else None,
        "runs": runs,
        "speedup": round(first / last, 2) if last else None,
        "vs_baseline": _vs_baseline(runs),
        "same_results": same,
        "targets": targets,
        "all_targets_pass": all(t["pass"] for t in targets),
    }


def _vs_baseline(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per -j: this checkout's wall time / the baseline's, from the same bench run."""
    base = {r["jobs"]: r["wall_s"] for r in runs if r["baseline"]}
    out = {}
    for r in runs:
        if not r["baseline"] and r["jobs"] in base:
            value = ratio(r["wall_s"], base[r["jobs"]])
            out[f"j{r['jobs']}"] = round(value, 3) if value is not None else None
    return out


_PARTS = ("boot_s", "snapshot_save_s", "restore_s", "steps_s", "waits_s", "report_s", "other_s")


def render_table(report: dict[str, Any]) -> str:
    head = "| run | wall s | suite s | " + " | ".join(p[:-2] for p in _PARTS)
    lines = [head + " | exclusive s (n) | exit |", "|---" * (len(_PARTS) + 5) + "|"]
    for r in report["runs"]:
        suite = f"{r['suite_wall_s']:.1f}" if r["suite_wall_s"] is not None else "-"
        parts = " | ".join(_cell(r["breakdown"].get(p)) for p in _PARTS)
        excl = r["exclusive"]
        lines.append(f"| {'baseline ' if r['baseline'] else ''}dmalab run -j {r['jobs']} | "
                     f"{r['wall_s']:.1f} | {suite} | {parts} | {excl['seconds']:.2f} "
                     f"({excl['variants']}) | {r['exit_code']} |")  # fmt: skip
    lines.append("")
    lines.append("boot .. steps are machine-seconds (summed over machines); other: outside the "
                 "suite and the reports")  # fmt: skip
    lines.append(f"speed-up -j {JOBS[0]} / -j {JOBS[-1]}: {report['speedup']}x; "
                 f"same results: {'yes' if report['same_results'] else 'NO'}")  # fmt: skip
    for jobs, value in report.get("vs_baseline", {}).items():
        lines.append(f"-{jobs[0]} {jobs[1:]}: {value}x the baseline's wall time")
    lines += target_lines(report["targets"])
    for r in report["runs"]:
        if r["exit_code"]:
            lines.append(f"dmalab run -j {r['jobs']} failed: {r['last_stderr_line']}")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
