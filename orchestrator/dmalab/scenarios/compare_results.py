"""Two results.json files compared result by result: what got worse, what changed.

Results are matched by (scenario, topology, variant) plus "policy" and "kernel" when a result
has them.
`timing`, `machine` and the guest kernel's trace lines are never compared: wall times and
physical addresses differ from run to run while everything else is deterministic (the kernel's
event counts included). Per-result keys this module does not know are
ignored, so files from newer versions still compare.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmalab.errors import BadInput
from dmalab.scenarios.results import CPU_CACHE
from dmalab.scenarios.verdicts import FAIL, verdict

REQUIRED = ("scenario", "topology", "variant", "expectation", "outcome")
#: Per-result fields compared as plain values (verdict, steps, counters, evidence have their own).
FIELDS = ("seed", "expectation", "expected_steps", "note")
STEP_FIELDS = ("actor", "action", "order", "owners", "error", "kernel_events")


# ---------------------------------------------------------------------------------------------
# Reading results.json (shared with html.py and the CLI)


def load(path: Path) -> tuple[dict[str, Any], Path]:
    """The parsed results file at `path` (a results.json, or a directory holding one) and the
    file's path; BadInput naming the file when it is missing or not a dmalab results file."""
    file = path / "results.json" if path.is_dir() else path
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if not file.is_file():
        raise BadInput(f"{file}: no such file (run `dmalab run --results DIR` first)")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{file}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{file}: invalid JSON: {exc}") from exc
    validate(doc, file)
    return doc, file


def validate(doc: Any, file: Path | str) -> None:
    """BadInput unless `doc` looks like `dmalab run --results` output."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise BadInput(f'{file}: not a dmalab results file (no "results" list)')
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict):
            raise BadInput(f"{file}: not a dmalab results file (results[{i}] is not an object)")
        missing = [k for k in REQUIRED if not isinstance(r.get(k), str)]
        if missing:
            raise BadInput(
                f"{file}: not a dmalab results file (results[{i}] lacks {', '.join(missing)})"
            )


def results_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    results = doc.get("results") if isinstance(doc, dict) else None
    return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []


def qemu_build(doc: dict[str, Any]) -> str | None:
    """The key of the QEMU build a run used (`meta.qemu.build_key`), if its file records one."""
    meta = doc.get("meta") if isinstance(doc, dict) else None
    qemu = meta.get("qemu") if isinstance(meta, dict) else None
    key = qemu.get("build_key") if isinstance(qemu, dict) else None
    return key if isinstance(key, str) else None


def check_same_qemu(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> None:
    """BadInput when both runs record their QEMU build and the builds differ: a device change
    between them would read as a regression (or hide one)."""
    a, b = qemu_build(old), qemu_build(new)
    if a is not None and b is not None and a != b:
        raise BadInput(
            f"{old_name} ran on QEMU build {a}, {new_name} on {b}: pass --any-qemu to compare "
            "runs of different QEMU builds"
        )


def verdict_of(r: dict[str, Any]) -> str:
    return verdict(r.get("expectation"), r.get("outcome"))


@dataclass(frozen=True)
class Key:
    scenario: str
    topology: str
    variant: str
    policy: str | None = None
    kernel: str | None = None

    def __str__(self) -> str:
        text = f"{self.scenario}/{self.topology}/{self.variant}"
        text += f" [policy {self.policy}]" if self.policy is not None else ""
        return f"{text} [kernel {self.kernel}]" if self.kernel is not None else text

    def as_json(self) -> dict[str, str]:
        out = {"scenario": self.scenario, "topology": self.topology, "variant": self.variant}
        out |= {"policy": self.policy} if self.policy is not None else {}
        return out | ({"kernel": self.kernel} if self.kernel is not None else {})


def _optional(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    return value


def result_key(r: dict[str, Any]) -> Key:
    return Key(
        str(r.get("scenario", "?")), str(r.get("topology", "?")), str(r.get("variant", "?")),
        _optional(r.get("policy")), _optional(r.get("kernel")),
    )  # fmt: skip


def _by_key(doc: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for r in results_of(doc):
        key = result_key(r)
        n = 2
        while key in out:  # the same variant twice in one file: keep both, numbered
            variant = f"{result_key(r).variant}#{n}"
            key = Key(key.scenario, key.topology, variant, key.policy, key.kernel)
            n += 1
        out[key] = r
    return out


# ---------------------------------------------------------------------------------------------
# The comparison


@dataclass(frozen=True)
class CounterChange:
    device: str
    counter: str
    old: int
    new: int


@dataclass(frozen=True)
class FieldChange:
    field: str  # a result field, or "step N: <field>" for a step record
    old: Any
    new: Any


@dataclass
class ResultChange:
    key: Key
    old_verdict: str
    new_verdict: str
    detected_steps: tuple[list[int], list[int]] | None = None
    counters: list[CounterChange] = field(default_factory=list)
    evidence_removed: list[str] = field(default_factory=list)
    evidence_added: list[str] = field(default_factory=list)
    fields: list[FieldChange] = field(default_factory=list)
    steps: list[FieldChange] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.old_verdict != FAIL and self.new_verdict == FAIL

    @property
    def improvement(self) -> bool:
        return self.old_verdict == FAIL and self.new_verdict != FAIL

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key.as_json(),
            "old_verdict": self.old_verdict,
            "new_verdict": self.new_verdict,
            "regression": self.regression,
        }
        if self.detected_steps is not None:
            out["detected_steps"] = {"old": self.detected_steps[0], "new": self.detected_steps[1]}
        if self.counters:
            out["counters"] = [c.__dict__ for c in self.counters]
        if self.evidence_removed or self.evidence_added:
            out["evidence"] = {"removed": self.evidence_removed, "added": self.evidence_added}
        for name in ("fields", "steps"):
            changes = getattr(self, name)
            if changes:
                out[name] = [c.__dict__ for c in changes]
        return out


@dataclass(frozen=True)
class Entry:
    """A result only one of the two files has."""

    key: Key
    verdict: str

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key.as_json(), "verdict": self.verdict}


@dataclass
class Comparison:
    old: str  # where each side came from, for the text
    new: str
    old_count: int
    new_count: int
    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)
    changed: list[ResultChange] = field(default_factory=list)
    unchanged: int = 0

    @property
    def regressions(self) -> list[str]:
        """One line per result that got worse: ok -> FAIL, disappeared, or new and failing."""
        out = [f"{c.key}: {c.old_verdict} -> {c.new_verdict}" for c in self.changed if c.regression]
        out += [f"{e.key}: removed (was {e.verdict})" for e in self.removed]
        out += [f"{e.key}: new, FAIL" for e in self.added if e.verdict == FAIL]
        return out

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    def as_json(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "old_results": self.old_count,
            "new_results": self.new_count,
            "regressed": self.regressed,
            "regressions": self.regressions,
            "added": [e.as_json() for e in self.added],
            "removed": [e.as_json() for e in self.removed],
            "changed": [c.as_json() for c in self.changed],
            "unchanged": self.unchanged,
        }


def compare(old: dict[str, Any], new: dict[str, Any], *, old_name: str = "old",
            new_name: str = "new") -> Comparison:  # fmt: skip
    """What changed from `old` to `new` (two parsed results.json documents)."""
    before, after = _by_key(old), _by_key(new)
    cmp = Comparison(old_name, new_name, len(before), len(after))
    for key, r in after.items():
        if key not in before:
            cmp.added.append(Entry(key, verdict_of(r)))
            continue
        change = _compare_result(key, before[key], r)
        if change is None:
            cmp.unchanged += 1
        else:
            cmp.changed.append(change)
    cmp.removed = [Entry(k, verdict_of(r)) for k, r in before.items() if k not in after]
    return cmp


def _compare_result(key: Key, a: dict[str, Any], b: dict[str, Any]) -> ResultChange | None:
    c = ResultChange(key, verdict_of(a), verdict_of(b))
    da, db = _int_list(a.get("detected_steps")), _int_list(b.get("detected_steps"))
    if da != db:
        c.detected_steps = (da, db)
    c.counters = _counter_changes(a.get("counters"), b.get("counters"))
    ea, eb = [str(e) for e in a.get("evidence") or []], [str(e) for e in b.get("evidence") or []]
    c.evidence_removed = _minus(ea, eb)
    c.evidence_added = _minus(eb, ea)
    c.fields = [FieldChange(f, a.get(f), b.get(f)) for f in FIELDS if a.get(f) != b.get(f)]
    c.steps = _step_changes(a.get("steps"), b.get("steps"))
    if (
        c.old_verdict == c.new_verdict
        and c.detected_steps is None
        and not (c.counters or c.evidence_removed or c.evidence_added or c.fields or c.steps)
    ):
        return None
    return c


def _int_list(v: Any) -> list[int]:
    return [x for x in v if isinstance(x, int)] if isinstance(v, list) else []


def _minus(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """The lines of `a` not in `b`, as a multiset difference that keeps `a`'s order."""
    left = list(b)
    out = []
    for line in a:
        if line in left:
            left.remove(line)
        else:
            out.append(line)
    return out


def _flat_counters(per_dev: Any) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    if isinstance(per_dev, dict):
        for dev, counters in per_dev.items():
            if isinstance(counters, dict):
                for k, v in counters.items():
                    if isinstance(v, int):
                        out[str(dev), str(k)] = v
    return out


def _counter_changes(a: Any, b: Any) -> list[CounterChange]:
    # Counters that stayed zero are not recorded, so a missing one is 0. The CPU cache model's
    # depend on the boot's memory history, not on the run.
    fa, fb = _flat_counters(a), _flat_counters(b)
    for flat in (fa, fb):
        for key in [k for k in flat if k[0] == CPU_CACHE]:
            del flat[key]
    return [
        CounterChange(dev, k, fa.get((dev, k), 0), fb.get((dev, k), 0))
        for dev, k in sorted(fa.keys() | fb.keys())
        if fa.get((dev, k), 0) != fb.get((dev, k), 0)
    ]


def _step_changes(a: Any, b: Any) -> list[FieldChange]:
    def by_step(steps: Any) -> dict[Any, dict[str, Any]]:
        out: dict[Any, dict[str, Any]] = {}
        for s in steps if isinstance(steps, list) else []:
            if isinstance(s, dict):
                out.setdefault(s.get("step"), s)
        return out

    sa, sb = by_step(a), by_step(b)
    out = []
    # Step numbers are ints; anything else sorts after them rather than breaking the sort.
    for n in sorted(
        sa.keys() | sb.keys(), key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, str(k))
    ):
        if n not in sb:
            out.append(FieldChange(f"step {n}", "present", "missing"))
            continue
        if n not in sa:
            out.append(FieldChange(f"step {n}", "missing", "present"))
            continue
        x, y = sa[n], sb[n]
        out += [
            FieldChange(f"step {n}: {f}", x.get(f), y.get(f))
            for f in STEP_FIELDS
            if x.get(f) != y.get(f)
        ]
        out += [
            FieldChange(f"step {n}: {cc.device}.{cc.counter}", cc.old, cc.new)
            for cc in _counter_changes(x.get("counters"), y.get("counters"))
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Text


def render_text(cmp: Comparison) -> str:
    """The comparison for a terminal: regressions first, then every other change."""
    lines = [
        f"old: {cmp.old} ({cmp.old_count} results)",
        f"new: {cmp.new} ({cmp.new_count} results)",
    ]
    regressions = [c for c in cmp.changed if c.regression]
    failing_new = [e for e in cmp.added if e.verdict == FAIL]
    if cmp.regressed:
        lines += ["", f"REGRESSIONS ({len(cmp.regressions)}):"]
        for c in regressions:
            lines.append(f"  {c.key}: {c.old_verdict} -> {c.new_verdict}")
            lines += _detail(c)
        lines += [f"  {e.key}: removed (was {e.verdict})" for e in cmp.removed]
        lines += [f"  {e.key}: new, FAIL" for e in failing_new]
    improvements = [c for c in cmp.changed if c.improvement]
    if improvements:
        lines += ["", f"fixed ({len(improvements)}):"]
        for c in improvements:
            lines.append(f"  {c.key}: {c.old_verdict} -> {c.new_verdict}")
            lines += _detail(c)
    others = [c for c in cmp.changed if not c.regression and not c.improvement]
    if others:
        lines += ["", f"changed ({len(others)}):"]
        for c in others:
            verdict = (
                f"{c.old_verdict} -> {c.new_verdict}"
                if c.old_verdict != c.new_verdict
                else c.new_verdict
            )
            lines.append(f"  {c.key} ({verdict})")
            lines += _detail(c)
    added_ok = [e for e in cmp.added if e.verdict != FAIL]
    if added_ok:
        lines += ["", f"added ({len(added_ok)}):"] + [f"  {e.key}: {e.verdict}" for e in added_ok]
    lines += ["", f"unchanged: {cmp.unchanged}"]
    if cmp.regressed:
        lines.append(f"verdict: REGRESSED ({len(cmp.regressions)})")
    else:
        lines.append("verdict: no regression")
    return "\n".join(lines)


def _detail(c: ResultChange) -> list[str]:
    out = []
    if c.detected_steps is not None:
        old, new = (",".join(map(str, s)) or "-" for s in c.detected_steps)
        out.append(f"detected steps: {old} -> {new}")
    out += [f"{x.device}.{x.counter}: {x.old} -> {x.new}" for x in c.counters]
    out += [f"evidence gone: {e}" for e in c.evidence_removed]
    out += [f"evidence new:  {e}" for e in c.evidence_added]
    out += [f"{f.field}: {_short(f.old)} -> {_short(f.new)}" for f in c.fields + c.steps]
    return [f"      {line}" for line in out]


def _short(v: Any, limit: int = 120) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
