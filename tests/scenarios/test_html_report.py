"""report.html from a results.json: structure, self-containment, plot values, escaping."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dmalab.scenarios.html import map_events_per_cycle, render_html, violation_totals, write_html

FIXTURE = Path(__file__).parent / "data" / "results.json"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quoted"'
VOID = {"meta", "br", "hr", "img", "input", "link"}


@pytest.fixture
def doc() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


class Page(HTMLParser):
    """Tags, attributes, text, bars (per chart panel) and nesting errors of one page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.bars: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
        self.svg: tuple[str, str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "svg":
            self.svg = (a.get("data-chart") or "", a.get("aria-label") or "")
        if tag == "rect" and "data-value" in a and self.svg:
            panel = self.bars.setdefault(self.svg, {})
            panel[a["data-series"] or "", a["data-category"] or ""] = float(a["data-value"] or 0)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "svg":
            self.svg = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def names(self) -> list[str]:
        return [t for t, _ in self.tags]


def test_page_is_well_formed_and_self_contained(doc: dict[str, Any]) -> None:
    html = render_html(doc)
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    assert page.errors == [] and page.stack == []
    names = page.names()
    for forbidden in ("script", "link", "img", "iframe", "object", "embed"):
        assert forbidden not in names
    for tag, attrs in page.tags:
        assert "src" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert "http://" not in html and "https://" not in html
    assert names.count("details") == len(doc["results"])
    assert names.count("svg") == 3  # two MAP-event panels (one per topology) and the violations


def test_verdict_table_and_banner(doc: dict[str, Any]) -> None:
    page = Page(render_html(doc))
    text = " ".join(page.text)
    assert "Verdict: PASS (16 results)" in text
    assert "n/a" in text  # 004 shared-domain on virtio-iommu
    assert "Failures" not in text
    header = [t for t, _ in page.tags].index("thead")
    assert header > 0
    for h in ("expectation", "verdict", "detected steps", "key counters", "s"):
        assert f"<th>{h}</th>" in render_html(doc)
    assert "conflict=64 MAP=16 UNMAP=16" in text  # 000 table on default


def test_map_events_plot_has_the_cycles_values(doc: dict[str, Any]) -> None:
    page = Page(render_html(doc))
    for topology in ("default", "virtio-iommu"):
        bars = page.bars["map", topology]
        cycles = [f"cycle {c}" for c in range(1, 5)]
        assert [bars["cached", c] for c in cycles] == [2, 0, 0, 0]
        assert [bars["uncached", c] for c in cycles] == [2, 2, 2, 2]
    assert "IOMMU MAP events per map/unmap cycle, with and without sg_table caching" in " ".join(
        page.text
    )


def test_violations_plot_sums_by_topology_and_expectation(doc: dict[str, Any]) -> None:
    page = Page(render_html(doc))
    (bars,) = [b for (chart, _), b in page.bars.items() if chart == "violations"]
    for topology in ("default", "virtio-iommu"):
        detected, passing = f"{topology}, expect detected", f"{topology}, expect pass"
        # The fixture's faulty variants: 000 table (conflicting), 003 skip-clean-at-unmap
        # (lost), 002 revoke-without-clean (write-back after unmap, a translation fault).
        assert bars[detected, "stale reads"] == 0
        assert bars[detected, "lost writes"] == 256
        assert bars[detected, "conflicting writes"] == 64
        assert bars[detected, "write-backs after unmap"] == 64
        assert bars[detected, "translation faults"] == 1
        # Correct variants: none, except the fault the 002 revoke variant causes on purpose.
        assert bars[passing, "translation faults"] == 1
        assert [bars[passing, k] for k in ("stale reads", "lost writes", "conflicting writes")] == [
            0,
            0,
            0,
        ]
    assert violation_totals(doc["results"])["default", "detected"]["lost_writes"] == 256


def test_map_events_take_the_domain_not_the_sum_of_devices() -> None:
    # dma0 and dma1 in one IOMMU domain both count the one mapping's 4 events.
    r = {
        "steps": [
            {"action": "map (device A)", "counters": {"dma0": {"iommu_map_events": 4},
                                                      "dma1": {"iommu_map_events": 4}}},
            {"action": "dma (copy)", "counters": {"dma0": {"iommu_map_events": 9}}},
            {"action": "map (device B)", "counters": {"dma1": {"desc_completed": 1}}},
            {"action": "map (device B)"},
        ]
    }  # fmt: skip
    assert map_events_per_cycle(r) == [4, 0, 0]


def test_failures_come_first_with_their_evidence_and_everything_is_escaped(
    doc: dict[str, Any],
) -> None:
    bad = copy.deepcopy(doc)
    r = bad["results"][2]  # 003 cached on default
    r["outcome"] = "FAIL"
    r["evidence"] = [f"step 6 (driver A map (device A)): {HOSTILE}", f"unplaced {HOSTILE}"]
    r["note"] = HOSTILE
    r["steps"][0]["actor"] = HOSTILE
    bad["results"][0]["variant"] = HOSTILE
    bad["meta"] = {"seed": 7, "policy": HOSTILE}
    html = render_html(bad)
    page = Page(html)
    assert page.errors == [] and page.stack == []
    names = page.names()
    assert "script" not in names and "img" not in names
    assert "<script>" not in html
    text = "".join(page.text)
    assert HOSTILE in text  # shown literally, as text
    assert "Verdict: FAIL (1 of 16 results)" in text
    # The failures section precedes the table, with the evidence line in it.
    failures, table = html.index('id="failures"'), html.index('id="verdicts"')
    assert failures < table
    assert html.index("step 6 (driver A map", failures) < table
    assert 'class="fail-row"' in html
    opened = [a for t, a in page.tags if t == "details" and "open" in a]
    assert [a["id"] for a in opened] == ["r2"]


def test_reads_defensively(doc: dict[str, Any]) -> None:
    thin = {
        "meta": {"topologies": ["default"], "seed": 1},
        "results": [
            {"scenario": "x", "topology": "t", "variant": "v", "expectation": "pass",
             "outcome": "pass", "policy": "exclusive", "new_field": {"a": 1}},
            {"scenario": "003-sgt-cache", "topology": "t", "variant": "cached",
             "steps": [{"action": "map", "counters": None}, "junk"], "counters": {"d": "x"}},
            "not a result",
        ],
    }  # fmt: skip
    page = Page(render_html(thin))
    assert page.errors == []
    text = " ".join(page.text)
    assert "policy" in text and "exclusive" in text
    assert "topologies" in text
    assert Page(render_html({})).errors == []
    assert "No results" in render_html({"results": []})


def test_write_html(doc: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_html(doc, out)
    assert out.read_text(encoding="utf-8") == render_html(doc)


def test_matrix_grid_and_run_timing(doc: dict[str, Any]) -> None:
    """Results with a policy get a topology x policy grid; observed cells are not failures."""
    assert 'id="matrix"' not in render_html(doc)
    for r in doc["results"]:
        r["policy"] = "base"
    observed = copy.deepcopy(doc["results"][0])
    observed.update(policy="cache-sgt", expectation="observe", outcome="detected")
    doc["results"].append(observed)
    doc["timing"] = {"wall_seconds": 21.5, "machines": [{"boot_seconds": 7.25}, {}]}
    html = render_html(doc)
    page = Page(html)
    assert page.errors == []
    text = " ".join(page.text)
    assert "Verdict: PASS (17 results)" in text and "1 detected (observed)" in text
    assert 'id="matrix"' in html and "Failures" not in text
    grid = html[html.index('id="matrix"') : html.index('id="verdicts"')]
    assert grid.count("<tr>") == 1 + len({(r["scenario"], r["variant"]) for r in doc["results"]})
    assert "cache-sgt" in grid and "(det " in grid and "det 4,11" in grid
    assert "21.5 s wall, 2 machine(s) booted (7.2-7.2 s" in text
