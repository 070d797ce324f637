"""results.json as one self-contained HTML page: verdicts, failures, two plots, per-step detail.

Works on the parsed JSON (not on `Result` objects) so that an old results.json can be rendered
again without the runner, and reads every field defensively: files from other versions may
lack fields or carry new ones. Everything is inline (CSS, SVG drawn here); nothing is fetched.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from dmalab.artifacts.cache import write_atomic
from dmalab.scenarios.compare_results import result_key, results_of, verdict_of
from dmalab.scenarios.verdicts import (
    FAIL,
    VERDICT_CLASS,
    VIOLATION_LABELS,
    VIOLATIONS,
    cell_text,
    counter_totals,
    key_counters,
)

#: (dark, light) per topology: the dark one for `detected` variants, the light one for `pass`.
PALETTE = (
    ("#1f5fa8", "#9cc3ea"),
    ("#c4540f", "#f6b88a"),
    ("#2b8a3e", "#a6dcae"),
    ("#6b3fa0", "#c9b3e6"),
    ("#8a6d1f", "#e3d19a"),
)
SERIES_2 = ("#1f5fa8", "#f0a04b")  # cached, uncached
FONT = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
CHAR_W = 6.6  # rough width of one character at the charts' 11-12 px, for layout
_STEP_LINE = re.compile(r"step (\d+)\b")


def write_html(doc: dict[str, Any], path: Path) -> None:
    """Write `render_html(doc)` to `path` (UTF-8; whole or not at all)."""
    write_atomic(path, render_html(doc).encode())


def render_html(doc: dict[str, Any]) -> str:
    """The report for a parsed results.json (`{"results": [...]}`, optionally `"meta"`)."""
    results = results_of(doc)
    failures = [(i, r) for i, r in enumerate(results) if verdict_of(r) == FAIL]
    parts = [
        _head(results, failures),
        _verdict_banner(results, failures),
        _meta(doc.get("meta")),
        _run_timing(doc.get("timing")),
        _nav(bool(failures), any("policy" in r for r in results)),
    ]
    if failures:
        parts.append(_failures(failures))
    parts += [
        _matrix_grid(results),
        _verdict_table(results),
        '<section id="plots"><h2>Plots</h2>',
        _map_events_plot(results),
        _violations_plot(results),
        "</section>",
        _details(results),
        "<footer>Rendered from results.json by <code>dmalab report</code>.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------------------------
# Page frame

CSS = """
:root { --fg: #1b1f24; --muted: #5b6570; --line: #d5dae0; --stripe: #f5f7f9;
  --pass: #1d7a35; --detected: #1f5fa8; --na: #6b7280; --fail: #b42318; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
code, .mono, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
.muted { color: var(--muted); }
.banner { font-size: 17px; font-weight: 600; padding: 10px 14px; border-radius: 6px;
  border: 1px solid var(--line); border-left: 6px solid var(--pass); background: #f1f8f3; }
.banner.fail { border-left-color: var(--fail); background: #fdf1f0; }
.banner.empty { border-left-color: var(--na); background: var(--stripe); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
nav { margin: 10px 0; color: var(--muted); }
nav a { color: var(--detected); margin-right: 14px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px;
  border-bottom: 1px solid var(--line); }
th { background: var(--stripe); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail-row { background: #fdf1f0 !important; }
tr.finding td { background: #fff8e6; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px;
  font-weight: 600; color: #fff; white-space: nowrap; }
.badge.pass { background: var(--pass); } .badge.detected { background: var(--detected); }
.badge.na { background: var(--na); } .badge.fail { background: var(--fail); }
.badge.observed { background: #fff; color: var(--muted); border: 1px solid var(--line); }
table.grid td { text-align: center; } table.grid td:first-child { text-align: left; }
.failure { border: 1px solid #f0c5c0; border-left: 5px solid var(--fail); border-radius: 4px;
  padding: 6px 12px; margin: 10px 0; }
.failure h3 { margin-top: 4px; }
ul.evidence { margin: 4px 0; padding-left: 20px; }
ul.evidence li { margin: 2px 0; }
figure { margin: 14px 0 22px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
.panels { display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: flex-start; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: var(--fg); }
details { border: 1px solid var(--line); border-radius: 4px; margin: 6px 0; padding: 0 10px; }
details[open] { padding-bottom: 8px; }
summary { cursor: pointer; padding: 6px 0; font-weight: 600; }
summary .badge { margin-left: 8px; }
footer { margin-top: 30px; color: var(--muted); font-size: 12px; }
@media print {
  @page { margin: 12mm; }
  body { font-size: 11px; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr, figure, .failure { break-inside: avoid; }
  details { break-inside: auto; }
  details::details-content { content-visibility: visible; display: block; }
}
"""


def _head(results: Sequence[dict[str, Any]], failures: Sequence[Any]) -> str:
    state = "no results" if not results else "FAIL" if failures else "PASS"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dmalab report: {state}</title><style>{CSS}</style></head>"
        "<body><main><h1>dmalab scenario report</h1>"
    )


def _verdict_banner(results: Sequence[dict[str, Any]], failures: Sequence[Any]) -> str:
    if not results:
        return '<p class="banner empty">No results in this file.</p>'
    counts: dict[str, int] = {}
    for r in results:
        counts[verdict_of(r)] = counts.get(verdict_of(r), 0) + 1
    order = (FAIL, "pass", "detected as expected", "clean (observed)", "detected (observed)", "n/a")
    summary = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
    if failures:
        head = f"Verdict: FAIL ({len(failures)} of {len(results)} results)"
        return f'<p class="banner fail">{escape(head)}. {escape(summary)}.</p>'
    head = f"Verdict: PASS ({len(results)} results)"
    return f'<p class="banner">{escape(head)}: {escape(summary)}.</p>'


def _meta(meta: Any) -> str:
    if not isinstance(meta, dict) or not meta:
        return ""
    rows = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(_plain(v))}</dd>" for k, v in meta.items()
    )
    return f'<dl class="meta">{rows}</dl>'


def _run_timing(timing: Any) -> str:
    """One line on the whole run: its wall time and the machines it booted."""
    if not isinstance(timing, dict) or not isinstance(timing.get("wall_seconds"), int | float):
        return ""
    machines = [m for m in timing.get("machines") or [] if isinstance(m, dict)]
    boots = [m["boot_seconds"] for m in machines if isinstance(m.get("boot_seconds"), int | float)]
    text = f"{timing['wall_seconds']:.1f} s wall, {len(machines)} machine(s) booted"
    if boots:
        text += f" ({min(boots):.1f}-{max(boots):.1f} s to boot and snapshot each)"
    return f'<p class="muted">{escape(text)}</p>'


def _nav(failures: bool, grid: bool = False) -> str:
    links = [("failures", "Failures")] if failures else []
    links += [("matrix", "Matrix")] if grid else []
    links += [("verdicts", "Verdict table"), ("plots", "Plots"), ("details", "Per-step detail")]
    return "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"


# ---------------------------------------------------------------------------------------------
# Failures and the verdict table


def _label(r: dict[str, Any]) -> str:
    return str(result_key(r))


def _badge(verdict: str) -> str:
    return f'<span class="badge {VERDICT_CLASS.get(verdict, "fail")}">{escape(verdict)}</span>'


def _steps(steps: Any) -> str:
    if not isinstance(steps, list) or not steps:
        return "-"
    return ", ".join(str(s) for s in steps)


def _evidence_list(lines: Iterable[Any]) -> str:
    items = "".join(f"<li><code>{escape(str(e))}</code></li>" for e in lines)
    return f'<ul class="evidence">{items}</ul>' if items else ""


def _failures(failures: Sequence[tuple[int, dict[str, Any]]]) -> str:
    out = [f'<section id="failures"><h2>Failures ({len(failures)})</h2>']
    for i, r in failures:
        expectation = str(r.get("expectation", "?"))
        if expectation == "pass":
            wanted = "pass (no finding)"
        else:
            wanted = f"{expectation} at steps {_steps(r.get('expected_steps'))}"
        detected = _steps(r.get("detected_steps"))
        got = f"findings at steps {detected}" if detected != "-" else "no finding"
        out.append(
            f'<div class="failure"><h3><a href="#r{i}">{escape(_label(r))}</a></h3>'
            f"<p>expected <b>{escape(wanted)}</b>; got <b>{escape(got)}</b></p>"
        )
        evidence = r.get("evidence") or []
        out.append(_evidence_list(evidence) or '<p class="muted">no evidence lines</p>')
        if r.get("note"):
            out.append(f'<p class="muted">note: {escape(str(r["note"]))}</p>')
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _key_counters(r: dict[str, Any]) -> str:
    return key_counters(r.get("counters"))


def _seconds(r: dict[str, Any]) -> str:
    timing = r.get("timing")
    seconds = timing.get("seconds") if isinstance(timing, dict) else None
    return f"{seconds:.2f}" if isinstance(seconds, int | float) else ""


def _cell_text(r: dict[str, Any]) -> str:
    return cell_text(
        r.get("expectation"), r.get("outcome"), r.get("expected_steps"), r.get("detected_steps")
    )


def _matrix_grid(results: Sequence[dict[str, Any]]) -> str:
    """Scenario/variant rows against topology x policy columns (topology x kernel x policy
    when results name kernels); only for --matrix runs."""
    if not any("policy" in r for r in results):
        return ""
    cols: list[tuple[str, str]] = []
    rows: list[tuple[str, str]] = []
    cells: dict[tuple[tuple[str, str], tuple[str, str]], tuple[int, dict[str, Any]]] = {}
    for i, r in enumerate(results):
        where = str(r.get("topology", "?"))
        where += f" {_plain(r['kernel'])}" if r.get("kernel") is not None else ""
        col = (where, _plain(r.get("policy") or "-"))
        row = (str(r.get("scenario", "?")), str(r.get("variant", "?")))
        cols += [col] if col not in cols else []
        rows += [row] if row not in rows else []
        cells[row, col] = (i, r)
    head = "<th>scenario / variant</th>" + "".join(
        f"<th>{escape(t)}<br><span class='muted'>{escape(p)}</span></th>" for t, p in cols
    )
    body = []
    for row in rows:
        tds = [f"<td>{escape(row[0])} / {escape(row[1])}</td>"]
        for col in cols:
            if (row, col) not in cells:
                tds.append("<td></td>")
                continue
            i, r = cells[row, col]
            cls = VERDICT_CLASS.get(verdict_of(r), "fail")
            tds.append(
                f'<td><a href="#r{i}"><span class="badge {cls}">'
                f"{escape(_cell_text(r))}</span></a></td>"
            )
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (
        '<section id="matrix"><h2>Matrix</h2><p class="muted">det N: detected at the expected '
        "steps; in parentheses: a cell that enforces nothing, showing what happened.</p>"
        f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
        "</tbody></table></section>"
    )


def _verdict_table(results: Sequence[dict[str, Any]]) -> str:
    policy = any("policy" in r for r in results)
    kernel = any("kernel" in r for r in results)
    head = ["scenario", "topology", *(["kernel"] if kernel else []), "variant"]
    head += ["policy"] if policy else []
    head += ["expectation", "verdict", "expected steps", "detected steps", "key counters", "s"]
    head += ["note"]
    rows = []
    for i, r in enumerate(results):
        verdict = verdict_of(r)
        cells = [
            escape(str(r.get("scenario", "?"))),
            escape(str(r.get("topology", "?"))),
            *([escape(_plain(r.get("kernel") or ""))] if kernel else []),
            f'<a href="#r{i}">{escape(str(r.get("variant", "?")))}</a>',
            *([escape(_plain(r.get("policy") or ""))] if policy else []),
            escape(str(r.get("expectation", "?"))),
            _badge(verdict),
            escape(_steps(r.get("expected_steps"))),
            escape(_steps(r.get("detected_steps"))),
            f'<span class="mono">{escape(_key_counters(r))}</span>',
        ]
        row = "".join(f"<td>{c}</td>" for c in cells)
        row += f'<td class="num">{_seconds(r)}</td><td class="muted">{escape(_note(r))}</td>'
        cls = ' class="fail-row"' if verdict == FAIL else ""
        rows.append(f"<tr{cls}>{row}</tr>")
    th = "".join(f"<th>{h}</th>" for h in head)
    return (
        '<section id="verdicts"><h2>Verdict table</h2>'
        '<p class="muted">pass: no finding; detected as expected: findings at least at every '
        "expected step; observed: a matrix cell that enforces nothing, recorded as it came; "
        "n/a: the topology lacks the mechanism; FAIL: anything else.</p>"
        f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _note(r: dict[str, Any]) -> str:
    return str(r.get("note") or "")


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Plots


def map_events_per_cycle(r: dict[str, Any]) -> list[int]:
    """IOMMU MAP events at each map step, in step order.

    Devices in one IOMMU domain each count the domain's MAP events, so the maximum over devices
    is the number of events the map made; a sum would count a shared mapping once per device.
    """
    events = []
    for s in r.get("steps") or []:
        if not isinstance(s, dict) or not str(s.get("action", "")).startswith("map"):
            continue
        per_dev = s.get("counters") if isinstance(s.get("counters"), dict) else {}
        events.append(
            max(
                (_int(c.get("iommu_map_events")) for c in per_dev.values() if isinstance(c, dict)),
                default=0,
            )
        )
    return events


def _map_events_plot(results: Sequence[dict[str, Any]]) -> str:
    title = "IOMMU MAP events per map/unmap cycle, with and without sg_table caching"
    panels: dict[str, dict[str, list[int]]] = {}
    for r in results:
        seed = str(r.get("seed", ""))
        scenario = str(r.get("scenario", ""))
        if not (seed == "003" or scenario.startswith("003-")):
            continue
        variant = r.get("variant")
        if variant not in ("cached", "uncached"):
            continue
        panel = str(r.get("topology", "?"))
        if r.get("kernel") is not None:
            panel += f" {_plain(r['kernel'])}"
        if "policy" in r:
            panel += f" (policy {_plain(r['policy'])})"
        panels.setdefault(panel, {})[str(variant)] = map_events_per_cycle(r)
    out = [f'<figure id="plot-map-events"><figcaption>{escape(title)}</figcaption>']
    if not panels:
        out.append('<p class="muted">No sg_table caching results (scenario 003) here.</p>')
        return "".join(out) + "</figure>"
    top = max((v for p in panels.values() for vs in p.values() for v in vs), default=0)
    out.append('<div class="panels">')
    for panel, by_variant in panels.items():
        cycles = max((len(v) for v in by_variant.values()), default=0)
        series = [
            (name, [float(x) for x in by_variant[name]], color)
            for name, color in zip(("cached", "uncached"), SERIES_2, strict=True)
            if name in by_variant
        ]
        out.append(
            bar_chart(
                [f"cycle {c + 1}" for c in range(cycles)],
                series,
                title=panel,
                y_label="IOMMU MAP events",
                x_label="map/unmap cycle",
                y_max=top,
                chart_id="map",
            )
        )
    out.append("</div>")
    out.append(
        '<p class="muted">Counted at each cycle\'s map step. With caching the first map builds '
        "the mapping and the later ones reuse it (no events); without it every map builds a "
        "new one.</p></figure>"
    )
    return "".join(out)


def violation_totals(
    results: Sequence[dict[str, Any]],
) -> dict[tuple[str, str], dict[str, int]]:
    """(topology [kernel], expectation) -> violation kind -> the devices' counters summed over
    results."""
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for r in results:
        where = str(r.get("topology", "?"))
        where += f" {_plain(r['kernel'])}" if r.get("kernel") is not None else ""
        group = (where, str(r.get("expectation", "?")))
        per_kind = totals.setdefault(group, dict.fromkeys(VIOLATIONS, 0))
        counters = counter_totals(r.get("counters"))
        for kind in VIOLATIONS:
            per_kind[kind] += counters.get(kind, 0)
    return totals


def _violations_plot(results: Sequence[dict[str, Any]]) -> str:
    title = "Violations by kind"
    out = [f'<figure id="plot-violations"><figcaption>{escape(title)}</figcaption>']
    totals = violation_totals(results)
    if not totals:
        out.append('<p class="muted">No results.</p>')
        return "".join(out) + "</figure>"
    topologies = list(dict.fromkeys(t for t, _ in totals))
    expectations = sorted({e for _, e in totals}, key=lambda e: (e != "pass", e))
    series = []
    for ti, topo in enumerate(topologies):
        dark, light = PALETTE[ti % len(PALETTE)]
        for e in expectations:
            if (topo, e) in totals:
                values = [float(totals[topo, e][k]) for k in VIOLATIONS]
                series.append((f"{topo}, expect {e}", values, light if e == "pass" else dark))
    out.append(
        bar_chart(
            [VIOLATION_LABELS[k] for k in VIOLATIONS],
            series,
            title="",
            y_label="count (device counters, summed)",
            x_label="violation kind",
            chart_id="violations",
        )
    )
    out.append(
        '<p class="muted">Summed over every result of the topology, split by what the variant '
        "expects: faulty variants (expect detected) should show their kind; correct ones "
        "(expect pass) should show none, except the translation faults that revoke and stale "
        "addresses are meant to cause. Each bar is labelled with its value.</p></figure>"
    )
    return "".join(out)


def _nice_step(top: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about five ticks up to `top`."""
    if top <= 0:
        return 1.0
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return max(m * power, 1.0)
    return 10 * power


def bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    title: str,
    y_label: str,
    x_label: str,
    chart_id: str,
    y_max: float | None = None,
) -> str:
    """A grouped bar chart as inline SVG: one group per category, one bar per series.

    Each bar carries data-series, data-category and data-value (and a tooltip), so the values
    can be read back from the page as well as seen.
    """
    bar_w, group_gap, plot_h, left, right = 18, 30, 200, 58, 16
    n_cat = max(len(categories), 1)
    labels = [_wrap(c) for c in categories]
    longest = max((len(line) for lines in labels for line in lines), default=0)
    group_w = max(len(series) * bar_w + group_gap, longest * CHAR_W + 10)
    plot_w = max(n_cat * group_w, 200)
    group_w = plot_w / n_cat
    width = left + plot_w + right
    legend, ly = _legend(series, left, width, 22 if title else 4)
    top_m = ly + 18 + 20  # room for the value printed above the tallest bar
    label_lines = max((len(lines) for lines in labels), default=1)
    base = top_m + plot_h
    height = base + 14 * label_lines + 34
    top = max([y_max or 0.0, *(v for _, vs, _ in series for v in vs)])
    step = _nice_step(top)
    axis_top = max(step * math.ceil(top / step), step)

    def y(v: float) -> float:
        return base - v / axis_top * plot_h

    name = title or y_label
    o = [
        f'<svg class="chart" role="img" aria-label="{escape(name)}" width="{width:.0f}" '
        f'height="{height}" viewBox="0 0 {width:.0f} {height}" font-family="{FONT}" '
        f'data-chart="{escape(chart_id)}"><title>{escape(name)}</title>'
    ]
    if title:
        o.append(f'<text x="{left}" y="14" font-size="13" font-weight="600">{escape(title)}</text>')
    o += legend
    tick = 0.0
    while tick <= axis_top + 1e-9:  # horizontal grid lines with their values
        ty = y(tick)
        o.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="#e3e7eb"/><text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_fmt(tick)}</text>'
        )
        tick += step
    for ci, cat in enumerate(categories):
        x0 = left + ci * group_w + (group_w - len(series) * bar_w) / 2
        for si, (label, values, color) in enumerate(series):
            v = values[ci] if ci < len(values) else 0.0
            # A nonzero value next to a much larger one still shows as a sliver.
            bh = max(plot_h * v / axis_top, 1.5 if v else 0.0)
            o.append(_bar(x0 + si * bar_w, base, bar_w, bh, v, label, cat, color))
        cx = left + ci * group_w + group_w / 2
        for li, line in enumerate(labels[ci]):
            o.append(
                f'<text x="{cx:.1f}" y="{base + 16 + 14 * li}" font-size="11" '
                f'text-anchor="middle">{escape(line)}</text>'
            )
    o.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}" stroke="#444"/>'
        f'<line x1="{left}" x2="{left}" y1="{top_m - 10}" y2="{base}" stroke="#444"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" font-size="12" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text transform="translate(16 {top_m + plot_h / 2:.1f}) rotate(-90)" font-size="12" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    o.append("</svg>")
    return "".join(o)


def _legend(
    series: Sequence[tuple[str, Sequence[float], str]], left: int, width: float, top: int
) -> tuple[list[str], int]:
    """The legend, flowing left to right from (left, top) and wrapping at the chart's width;
    and the y of its last row."""
    legend, lx, ly = [], left, top
    for label, _, color in series:
        item_w = 18 + len(label) * CHAR_W + 18
        if lx > left and lx + item_w > width:
            lx, ly = left, ly + 18
        legend.append(
            f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{color}"/>'
            f'<text x="{lx + 17}" y="{ly + 10}" font-size="12">{escape(label)}</text>'
        )
        lx += item_w
    return legend, ly


def _bar(
    bx: float, base: float, bar_w: int, bh: float, v: float, label: str, cat: str, color: str
) -> str:
    """One bar of height `bh` at x `bx` with its value above it and its data attributes."""
    tip = f"{label}, {cat}: {_fmt(v)}"
    return (
        f'<rect class="bar" x="{bx + 1:.1f}" y="{base - bh:.1f}" '
        f'width="{bar_w - 2}" height="{bh:.1f}" fill="{color}" '
        f'data-series="{escape(label)}" data-category="{escape(cat)}" '
        f'data-value="{_fmt(v)}"><title>{escape(tip)}</title></rect>'
        f'<text x="{bx + bar_w / 2:.1f}" y="{base - bh - 3:.1f}" '
        f'font-size="10" text-anchor="middle">{_fmt(v)}</text>'
    )


def _wrap(text: str, width: int = 14) -> list[str]:
    """A category label on lines of about `width` characters, broken at spaces."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


# ---------------------------------------------------------------------------------------------
# Per-result detail


def _counter_text(per_dev: Any) -> str:
    if not isinstance(per_dev, dict):
        return ""
    lines = []
    for dev, counters in per_dev.items():
        if isinstance(counters, dict) and counters:
            kv = " ".join(f"{k}={v}" for k, v in counters.items())
            lines.append(f"{dev}: {kv}")
    return "\n".join(lines)


def _owners_text(owners: Any) -> str:
    if not isinstance(owners, dict):
        return ""
    return "\n".join(
        f"{buf}: {', '.join(map(str, who)) if isinstance(who, list) else who}"
        for buf, who in owners.items()
    )


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>" if text else ""


def _details(results: Sequence[dict[str, Any]]) -> str:
    out = ['<section id="details"><h2>Per-step detail</h2>']
    for i, r in enumerate(results):
        verdict = verdict_of(r)
        is_open = " open" if verdict == FAIL else ""
        out.append(
            f'<details id="r{i}"{is_open}><summary>{escape(_label(r))}{_badge(verdict)}</summary>'
        )
        facts = [
            ("seed", r.get("seed")),
            ("expectation", r.get("expectation")),
            ("outcome", r.get("outcome")),
            ("expected steps", _steps(r.get("expected_steps"))),
            ("detected steps", _steps(r.get("detected_steps"))),
            ("seconds", _seconds(r)),
            ("note", r.get("note")),
        ]
        out.append(
            '<dl class="meta">'
            + "".join(
                f"<dt>{k}</dt><dd>{escape(_plain(v))}</dd>" for k, v in facts if v not in (None, "")
            )
            + "</dl>"
        )
        evidence = [str(e) for e in r.get("evidence") or []]
        by_step: dict[int, list[str]] = {}
        loose = []
        step_numbers = {s.get("step") for s in r.get("steps") or [] if isinstance(s, dict)}
        for line in evidence:
            m = _STEP_LINE.match(line)
            if m and int(m.group(1)) in step_numbers:
                by_step.setdefault(int(m.group(1)), []).append(line)
            else:
                loose.append(line)
        if loose:
            out.append("<h3>Evidence</h3>" + _evidence_list(loose))
        totals = _counter_text(r.get("counters"))
        if totals:
            out.append(f"<h3>Counters (whole run)</h3><pre>{escape(totals)}</pre>")
        out.append(_step_table(r.get("steps") or [], by_step))
        machine = r.get("machine")
        if isinstance(machine, dict) and machine:
            out.append(
                "<h3>Machine facts</h3><pre>"
                + escape(json.dumps(machine, indent=1, sort_keys=True))
                + "</pre>"
            )
        out.append("</details>")
    out.append("</section>")
    return "".join(out)


STEP_COLUMNS = (
    "step", "order", "actor", "action", "owners after", "counter deltas", "guest kernel",
    "evidence",
)  # fmt: skip


def _kernel_cell(step: dict[str, Any]) -> str:
    """What the guest kernel traced in the step: event counts, its lines folded away."""
    counts = step.get("kernel_events")
    if not isinstance(counts, dict) or not counts:
        return ""
    summary = escape(" ".join(f"{name}={n}" for name, n in sorted(counts.items())))
    lines = step.get("kernel")
    if not isinstance(lines, list) or not lines:
        return summary
    body = escape("\n".join(str(line) for line in lines))
    return f"<details><summary>{summary}</summary><pre>{body}</pre></details>"


def _step_table(steps: Sequence[Any], by_step: dict[int, list[str]]) -> str:
    rows = []
    for s in steps:
        if not isinstance(s, dict):
            continue
        lines = by_step.pop(s.get("step"), []) if isinstance(s.get("step"), int) else []
        error = s.get("error")
        cls = ' class="finding"' if lines or error else ""
        rows.append(
            f"<tr{cls}>"
            f'<td class="num">{escape(str(s.get("step", "")))}</td>'
            f'<td class="num">{escape(str(s.get("order", "")))}</td>'
            f"<td>{escape(str(s.get('actor', '')))}</td>"
            f"<td>{escape(str(s.get('action', '')))}</td>"
            f"<td>{_pre(_owners_text(s.get('owners')))}</td>"
            f"<td>{_pre(_counter_text(s.get('counters')))}</td>"
            f"<td>{_kernel_cell(s)}</td>"
            f"<td>{escape(str(error)) if error else ''}{_evidence_list(lines)}</td>"
            "</tr>"
        )
    if not rows:
        return '<p class="muted">No step records.</p>'
    head = "".join(f"<th>{h}</th>" for h in STEP_COLUMNS)
    return (
        f"<h3>Steps</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
