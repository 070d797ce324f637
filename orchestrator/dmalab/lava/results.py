"""A dmalab run as LAVA results.

One test set per topology, one test case per result, named `<scenario>.<variant>[.<policy>]`,
passing when its verdict is not FAIL (a faulty variant detected as expected passes), and a
`dmalab-verdict` case for the whole run. Where a number matters it rides along as a
measurement: the IOMMU MAP events a variant caused (scenario 003's point: 2 cached, 8 uncached).

Inside a LAVA test shell the cases are recorded with `lava-test-set` and `lava-test-case`;
elsewhere they are written as the YAML LAVA exports a job's results in (a list of test cases with
LAVA's export fields), so the same reader handles both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from dmalab.errors import EnvironmentProblem
from dmalab.scenarios.verdicts import FAIL, verdict

#: The case that says whether the whole run passed.
VERDICT_CASE = "dmalab-verdict"
#: Units are one word: LAVA's test shell signal splits its parameters on spaces.
MAP_UNITS = "map_events"
FAILED_UNITS = "failed"
#: LAVA's export fields (lava_results_app.utils.testcase_export_fields), in its order.
EXPORT_FIELDS = (
    "job", "suite", "result", "measurement", "unit", "duration", "timeout", "logged", "level",
    "metadata", "url", "name", "id", "log_start_line", "log_end_line",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One LAVA test case; `test_set` None for cases outside any set."""

    name: str
    result: str  # pass | fail | skip
    test_set: str | None = None
    measurement: int | None = None
    units: str | None = None
    verdict: str = ""


def case_name(*parts: str) -> str:
    """A name LAVA accepts as one shell word: anything but letters, digits, `-`, `_` and `.`
    becomes `_`."""
    return ".".join(re.sub(r"[^A-Za-z0-9_-]", "_", p) for p in parts if p)


def map_events(result: Mapping[str, Any]) -> int | None:
    """The IOMMU MAP events of a result: per step the largest delta over its devices (devices of
    one IOMMU domain each count the domain's events, so a sum would count a mapping twice),
    summed over the steps; None when no step counted any."""
    total, seen = 0, False
    for step in result.get("steps") or ():
        per_dev = step.get("counters") if isinstance(step, Mapping) else None
        values = [
            c["iommu_map_events"]
            for c in (per_dev or {}).values()
            if isinstance(c, Mapping) and isinstance(c.get("iommu_map_events"), int)
        ]
        if values:
            total, seen = total + max(values), True
    return total if seen else None


def cases(results: Sequence[Mapping[str, Any]]) -> list[Case]:
    """The test cases of a run's results, grouped in test sets by topology (first-seen order),
    then the verdict case."""
    sets: dict[str, list[Case]] = {}
    failed = 0
    for r in results:
        v = verdict(r.get("expectation"), r.get("outcome"))
        failed += v == FAIL
        result = "fail" if v == FAIL else "skip" if v == "n/a" else "pass"
        topology = str(r["topology"])
        name = case_name(str(r["scenario"]), str(r["variant"]), str(r.get("policy") or ""))
        maps = map_events(r)
        sets.setdefault(topology, []).append(
            Case(
                name, result, case_name(topology), maps, MAP_UNITS if maps is not None else None, v
            )
        )
    out = [c for group in sets.values() for c in group]
    overall = "fail" if failed or not results else "pass"
    out.append(Case(VERDICT_CASE, overall, None, failed, FAILED_UNITS, overall.upper()))
    return out


def as_yaml(all_cases: Iterable[Case], *, suite: str, job: str = "") -> str:
    """The cases as LAVA's results YAML: a list of test cases with its export fields (values it
    would fill from its database left empty); the test set goes into `metadata.set`, as LAVA
    records it."""
    rows = []
    for c in all_cases:
        metadata: dict[str, Any] = {"case": c.name, "definition": suite, "result": c.result}
        if c.test_set is not None:
            metadata["set"] = c.test_set
        if c.measurement is not None:
            metadata["measurement"] = c.measurement
            metadata["units"] = c.units
        if c.verdict:
            metadata["extra"] = [{"verdict": c.verdict}]
        row = dict.fromkeys(EXPORT_FIELDS, "")
        row.update(
            job=job, suite=suite, result=c.result, name=c.name, metadata=metadata,
            measurement="" if c.measurement is None else str(c.measurement),
            unit=c.units or "",
        )  # fmt: skip
        rows.append(row)
    return yaml.safe_dump(rows, sort_keys=False, default_flow_style=False)


def lava_tools() -> tuple[str, str] | None:
    """`lava-test-case` and `lava-test-set` when they are on PATH (inside a LAVA test shell)."""
    case, test_set = shutil.which("lava-test-case"), shutil.which("lava-test-set")
    return (case, test_set) if case and test_set else None


def record(all_cases: Sequence[Case], tools: tuple[str, str]) -> None:
    """Record the cases with LAVA's helpers, each set between `lava-test-set start` and `stop`."""
    case_tool, set_tool = tools
    current: str | None = None
    for c in all_cases:
        if c.test_set != current:
            if current is not None:
                _call(set_tool, "stop", current)
            if c.test_set is not None:
                _call(set_tool, "start", c.test_set)
            current = c.test_set
        args = [c.name, "--result", c.result]
        if c.measurement is not None:
            args += ["--measurement", str(c.measurement), "--units", c.units or ""]
        _call(case_tool, *args)
    if current is not None:
        _call(set_tool, "stop", current)


def _call(tool: str, *args: str) -> None:
    # LAVA's helpers signal on stdout (the test shell's console): it must reach LAVA.
    try:
        proc = subprocess.run([tool, *args], stderr=subprocess.PIPE, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentProblem(f"{tool} {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise EnvironmentProblem(f"{tool} {' '.join(args)} failed: {detail}")
