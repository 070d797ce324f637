"""Scenario results as a terminal table, JSON and JUnit XML (stdlib only)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from dmalab.scenarios.api import Result
from dmalab.scenarios.runner import as_json

VERDICTS = {
    ("pass", "pass"): "pass",
    ("detected", "detected"): "detected as expected",
    ("pass", "unavailable"): "n/a",
    ("detected", "unavailable"): "n/a",
}
SHORT = {
    "stale_reads": "stale", "lost_writes": "lost", "conflicting_writes": "conflict",
    "writebacks_after_unmap": "wb-unmapped", "iommu_map_events": "MAP",
    "iommu_unmap_events": "UNMAP", "translation_faults": "faults",
}  # fmt: skip


def verdict_text(r: Result) -> str:
    return VERDICTS.get((r.expectation, r.outcome), "FAIL")


def key_counters(r: Result) -> str:
    total: dict[str, int] = {}
    for per_dev in r.counters.values():
        for k, v in per_dev.items():
            if k in SHORT:
                total[SHORT[k]] = total.get(SHORT[k], 0) + v
    return " ".join(f"{k}={v}" for k, v in total.items())


def render_table(results: Sequence[Result]) -> str:
    rows = [("scenario", "topology", "variant", "expect", "verdict", "steps", "s", "key counters")]
    for r in results:
        steps = ",".join(map(str, r.detected_steps)) or "-"
        rows.append((r.scenario, r.topology, r.variant, r.expectation, verdict_text(r), steps,
                     f"{r.timing.get('seconds', 0):.2f}", key_counters(r)))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"  {r.scenario}/{r.topology}/{r.variant}: {r.note}" for r in results if r.note]
    failures = []
    for r in results:
        if not r.ok:
            failures.append(f"  {r.scenario}/{r.topology}/{r.variant} (expected {r.expectation} "
                            f"at steps {r.expected_steps or '-'}):")  # fmt: skip
            failures += [f"    {e}" for e in r.evidence] or ["    no finding"]
    out = "\n".join(lines)
    if notes:
        out += "\n\nnotes:\n" + "\n".join(notes)
    if failures:
        out += "\n\nfailures:\n" + "\n".join(failures)
    return out


def write_json(results: Sequence[Result], path: Path) -> None:
    path.write_text(json.dumps({"results": as_json(results)}, indent=2) + "\n")


def write_junit(results: Sequence[Result], path: Path) -> None:
    suites = ET.Element("testsuites", name="dmalab")
    by_topo: dict[str, list[Result]] = {}
    for r in results:
        by_topo.setdefault(r.topology, []).append(r)
    for topo, rs in by_topo.items():
        suite = ET.SubElement(
            suites, "testsuite", name=f"dmalab.{topo}", tests=str(len(rs)),
            failures=str(sum(not r.ok for r in rs)),
            skipped=str(sum(r.outcome == "unavailable" for r in rs)),
            time=f"{sum(r.timing.get('seconds', 0) for r in rs):.3f}",
        )  # fmt: skip
        for r in rs:
            case = ET.SubElement(
                suite, "testcase", classname=f"{topo}.{r.scenario}", name=r.variant,
                time=f"{r.timing.get('seconds', 0):.3f}",
            )  # fmt: skip
            if r.outcome == "unavailable":
                ET.SubElement(case, "skipped", message=r.note)
            elif not r.ok:
                fail = ET.SubElement(
                    case, "failure",
                    message=f"expected {r.expectation} at steps {r.expected_steps}, "
                    f"got {r.outcome} "
                    f"at steps {r.detected_steps}",
                )  # fmt: skip
                fail.text = "\n".join(r.evidence)
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([f"verdict: {verdict_text(r)}", *r.evidence, r.note])
    ET.indent(suites)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
