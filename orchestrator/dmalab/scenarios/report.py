"""Scenario results as a terminal table (or a matrix), JSON and JUnit XML (stdlib only)."""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dmalab.artifacts.cache import write_atomic
from dmalab.scenarios.declarations import Scenario, Variant, cell_expectation
from dmalab.scenarios.results import Result, as_json
from dmalab.scenarios.verdicts import cell_text, verdict
from dmalab.scenarios.verdicts import key_counters as _key_counters


def verdict_text(r: Result) -> str:
    return verdict(r.expectation, r.outcome)


def key_counters(r: Result) -> str:
    return _key_counters(r.counters)


def _where(r: Result) -> str:
    where = f"{r.scenario}/{r.topology}/{r.variant}"
    where += f" [{r.policy}]" if r.policy is not None else ""
    return f"{where} @{r.kernel}" if r.kernel is not None else where


def _columns(rows: Sequence[Sequence[str]], header: int = 1) -> list[str]:
    """Rows as left-aligned columns, the last one unpadded, a rule under the `header` rows."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    lines.insert(header, "-" * max(len(line) for line in lines))
    return [line.rstrip() for line in lines]


def _failures(results: Sequence[Result]) -> list[str]:
    out = []
    for r in results:
        if not r.ok:
            out.append(f"  {_where(r)} (expected {r.expectation} "
                       f"at steps {r.expected_steps or '-'}):")  # fmt: skip
            out += [f"    {e}" for e in r.evidence] or ["    no finding"]
    return out


def render_table(results: Sequence[Result]) -> str:
    policy = any(r.policy is not None for r in results)
    kernel = any(r.kernel is not None for r in results)
    head = ("scenario", "topology", *(("kernel",) if kernel else ()), "variant",
            *(("policy",) if policy else ()), "expect", "verdict", "steps", "s",
            "key counters")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for r in results:
        steps = ",".join(map(str, r.detected_steps)) or "-"
        rows.append((r.scenario, r.topology, *((r.kernel or "",) if kernel else ()), r.variant,
                     *((r.policy or "",) if policy else ()), r.expectation, verdict_text(r),
                     steps, f"{r.timing.get('seconds', 0):.2f}", key_counters(r)))  # fmt: skip
    out = "\n".join(_columns(rows))
    notes = [f"  {_where(r)}: {r.note}" for r in results if r.note]
    failures = _failures(results)
    if notes:
        out += "\n\nnotes:\n" + "\n".join(notes)
    if failures:
        out += "\n\nfailures:\n" + "\n".join(failures)
    return out


def matrix_cell(r: Result) -> str:
    return cell_text(r.expectation, r.outcome, r.expected_steps, r.detected_steps)


def _expect_of(v: Variant) -> str:
    return "pass" if v.expect == "pass" else "det " + ",".join(map(str, v.steps))


def render_matrix(
    results: Sequence[Result], scenarios: Sequence[Scenario], coherent: Mapping[str, bool]
) -> str:
    """Rows scenario/variant, columns topology/policy (topology/kernel/policy when results name
    kernels; `coherent`: which topologies have only coherent devices), then why cells are n/a
    or declared, and the failures. Cells in parentheses are recorded, not enforced."""
    variants = {(sc.name, v.name): v for sc in scenarios for v in sc.variants}
    cols: list[tuple[str, str, str]] = []
    rows: dict[tuple[str, str], dict[tuple[str, str, str], Result]] = {}
    for r in results:
        col = (r.topology, r.kernel or "", r.policy or "base")
        if col not in cols:
            cols.append(col)
        rows.setdefault((r.scenario, r.variant), {})[col] = r
    topo_row = [c[0] if i == 0 or cols[i - 1][0] != c[0] else "" for i, c in enumerate(cols)]
    header: list[tuple[str, ...]] = [("", "", *topo_row)]
    if any(c[1] for c in cols):  # a row of kernels under the topologies
        header.append(("", "", *(c[1] if i == 0 or cols[i - 1][:2] != c[:2] else ""
                                 for i, c in enumerate(cols))))  # fmt: skip
    table: list[tuple[str, ...]] = [
        *header,
        ("scenario/variant", "expect", *(c[2] for c in cols)),
    ]
    for (sc, name), cells in rows.items():
        v = variants.get((sc, name))
        table.append((f"{sc}/{name}", _expect_of(v) if v else "?",
                      *(matrix_cell(cells[c]) if c in cells else "" for c in cols)))  # fmt: skip
    out = "\n".join(_columns(table, header=len(header) + 1))
    # One line per (row, reason), naming the policies and, unless it is all of them, the
    # topologies it applies to; in the order of the rows.
    topologies = list(dict.fromkeys(c[0] for c in cols))
    reasons: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
    for r in results:
        v = variants.get((r.scenario, r.variant))
        policy = r.policy or "base"
        expect, _, why = (
            cell_expectation(v, policy, coherent.get(r.topology, False)) if v else ("", (), "")
        )
        if r.outcome == "unavailable":
            text = f"n/a: {r.note}"
        elif why and expect == r.expectation:  # (a platform's own expectation has its note)
            steps = ",".join(map(str, r.expected_steps))
            text = f"{r.expectation}{' at ' + steps if steps else ''}: {why}"
        else:
            continue
        pols, topos = reasons.setdefault((r.scenario, r.variant, text), ([], []))
        for values, value in ((pols, policy), (topos, r.topology)):
            if value not in values:
                values.append(value)
    order = {key: i for i, key in enumerate(rows)}
    lines = []
    for (sc, name, text), (pols, topos) in sorted(
        reasons.items(), key=lambda kv: order[kv[0][0], kv[0][1]]
    ):
        on = "" if len(topos) == len(topologies) else f" on {', '.join(topos)}"
        lines.append(f"  {sc}/{name} [{', '.join(pols)}]{on}: {text}")
    if lines:
        out += "\n\nn/a and declared cells:\n" + "\n".join(lines)
    failures = _failures(results)
    if failures:
        out += "\n\nfailures:\n" + "\n".join(failures)
    return out


def write_json(
    results: Sequence[Result],
    path: Path,
    *,
    meta: Mapping[str, Any] | None = None,
    timing: Mapping[str, Any] | None = None,
) -> None:
    """results.json: `meta` (how the run was made), `results`, `timing` (whole-run wall times)."""
    doc: dict[str, Any] = {}
    if meta is not None:
        doc["meta"] = dict(meta)
    doc["results"] = as_json(results)
    if timing is not None:
        doc["timing"] = dict(timing)
    write_doc(doc, path)


def write_doc(doc: Mapping[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


#: Findings quoted in a JUnit failure message (all of them are in its text).
FINDINGS_QUOTED = 3


def failure_message(r: Result) -> str:
    """One line saying what was expected and what was found (detector, step, bytes)."""
    expected = r.expectation + (f" at steps {_steps(r.expected_steps)}" if r.expected_steps else "")
    got = r.outcome + (f" at steps {_steps(r.detected_steps)}" if r.detected_steps else "")
    found = [" ".join(e.split()) for e in r.evidence[:FINDINGS_QUOTED]]
    if len(r.evidence) > FINDINGS_QUOTED:
        found.append(f"and {len(r.evidence) - FINDINGS_QUOTED} more")
    return f"expected {expected}, got {got}: {'; '.join(found) or 'no finding'}"


def _steps(steps: Sequence[int]) -> str:
    return ",".join(map(str, steps))


def write_junit(results: Sequence[Result], path: Path) -> None:
    """junit.xml (`render_junit`)."""
    write_atomic(path, render_junit(results))


def render_junit(results: Sequence[Result]) -> bytes:
    """One `testsuite` per topology (per topology and policy in a matrix run, and per kernel
    in a run given kernels), one `testcase` per variant, classname `<topology
    name>[@<kernel>][.<policy>].<scenario>`, with properties `arch` (and `kernel`); `failure`
    whose message says what was found and whose text is the evidence, `skipped` for n/a."""
    suites = ET.Element("testsuites", name="dmalab")
    groups: dict[str, list[Result]] = {}
    for r in results:
        name = r.topology if r.kernel is None else f"{r.topology}@{r.kernel}"
        name = name if r.policy is None else f"{name}.{r.policy}"
        groups.setdefault(name, []).append(r)
    for group, rs in groups.items():
        suite = ET.SubElement(
            suites, "testsuite", name=f"dmalab.{group}", tests=str(len(rs)),
            failures=str(sum(not r.ok for r in rs)),
            skipped=str(sum(r.outcome == "unavailable" for r in rs)),
            time=f"{sum(r.timing.get('seconds', 0) for r in rs):.3f}",
        )  # fmt: skip
        for r in rs:
            case = ET.SubElement(
                suite, "testcase", classname=f"{group}.{r.scenario}", name=r.variant,
                time=f"{r.timing.get('seconds', 0):.3f}",
            )  # fmt: skip
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="arch", value=r.arch)
            if r.kernel is not None:
                ET.SubElement(props, "property", name="kernel", value=r.kernel)
            if r.outcome == "unavailable":
                ET.SubElement(case, "skipped", message=r.note)
            elif not r.ok:
                fail = ET.SubElement(case, "failure", message=failure_message(r))
                fail.text = "\n".join(r.evidence)
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([f"verdict: {verdict_text(r)}", *r.evidence, r.note])
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_results_dir(
    doc: dict[str, Any], results: Sequence[Result], directory: Path
) -> list[Path]:
    """results.json (`doc`), junit.xml and report.html in `directory`, each whole or absent;
    the files written. results.json says how long rendering the other two took
    (`timing.report_seconds`)."""
    start = time.perf_counter()
    junit = render_junit(results)
    try:
        from dmalab.scenarios.html import render_html
    except ModuleNotFoundError as exc:
        print(f"dmalab: report.html not written: {exc}", file=sys.stderr)
        html = None
    else:
        html = render_html(doc)
    doc.setdefault("timing", {})["report_seconds"] = round(time.perf_counter() - start, 3)
    directory.mkdir(parents=True, exist_ok=True)
    write_doc(doc, directory / "results.json")
    write_atomic(directory / "junit.xml", junit)
    written = [directory / "results.json", directory / "junit.xml"]
    if html is not None:
        write_atomic(directory / "report.html", html.encode())
        written.append(directory / "report.html")
    return written
