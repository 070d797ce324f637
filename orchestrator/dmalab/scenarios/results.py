"""What running a scenario variant produced: its steps, findings and outcome, as plain data.

A `Result` is JSON via `as_json` (results.json; docs/reports.md). Wall times are kept apart in
`timing`, and facts that differ from boot to boot in `machine`, so two runs can be compared.
The outcome is what happened ("pass", "detected", "FAIL", "unavailable"); the verdict, what that
means against the expectation, is `dmalab.scenarios.verdicts.verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: The CPU cache model's key in a step's counters, beside the devices' ids. Its counts follow
#: the kernel's maintenance of the whole machine, which depends on what this boot's memory held
#: before: they are shown, not compared between runs.
CPU_CACHE = "cpucache"


@dataclass
class StepRecord:
    step: int
    actor: str
    action: str
    order: int = 0  # completion order
    owners: dict[str, list[str]] = field(default_factory=dict)  # buffer -> owners after
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # device -> deltas
    error: str | None = None
    #: What the guest kernel did in the step (its trace events): name -> how many, and the
    #: first lines of them (`api.KERNEL_LINES`).
    kernel_events: dict[str, int] = field(default_factory=dict)
    kernel: list[str] = field(default_factory=list)


@dataclass
class Finding:
    step: int
    kind: str  # a violation kind, OWNERSHIP, BYTES, STATUS, CHECK
    line: str


@dataclass
class Result:
    scenario: str
    seed: str
    topology: str
    variant: str
    expectation: str
    outcome: str  # pass | detected | FAIL | unavailable
    expected_steps: list[int]
    detected_steps: list[int]
    evidence: list[str]
    counters: dict[str, dict[str, int]]
    steps: list[StepRecord]
    note: str = ""
    #: The matrix policy (`POLICIES`); None outside a matrix run (left out of the JSON).
    policy: str | None = None
    #: Physical addresses and other facts that differ from boot to boot.
    machine: dict[str, Any] = field(default_factory=dict)
    #: Wall times (seconds); left out when two runs are compared.
    timing: dict[str, float] = field(default_factory=dict)
    #: The guest architecture the topology is of (QEMU's name).
    arch: str = "x86_64"
    #: The kernel's label (`debian:6.1`, ...) in a run given kernels (`--kernel`); None
    #: otherwise (left out of the JSON), when the topology's image says which.
    kernel: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("pass", "detected", "unavailable")


def outcome(expect: str, expected_steps: Sequence[int], findings: Sequence[Finding]) -> str:
    """The outcome of a variant that ran to its end; "observe" records what happened."""
    detected = {f.step for f in findings}
    if expect == "observe":
        return "detected" if findings else "pass"
    if expect == "pass":
        return "pass" if not findings else "FAIL"
    return "detected" if findings and set(expected_steps) <= detected else "FAIL"


def suite_ok(results: Sequence[Result]) -> bool:
    return all(r.ok for r in results)


def as_json(results: Sequence[Result], *, timing: bool = True) -> list[dict[str, Any]]:
    """JSON-ready results; `timing=False` leaves out what differs from run to run (wall times,
    physical addresses, the guest kernel's trace lines), for comparing two runs. `policy` is
    there only in a matrix run, `kernel` only in a run given kernels."""
    out = []
    for r in results:
        d = asdict(r)
        for optional in ("policy", "kernel"):
            if d[optional] is None:
                d.pop(optional)
        out.append(d if timing else comparable(d))
    return out


def from_json(d: Mapping[str, Any]) -> Result:
    """A Result back from its JSON (`as_json`), e.g. to write junit.xml for merged shards; keys
    this version does not know are ignored."""
    known = {f.name for f in fields(Result)} - {"steps"}
    step_known = {f.name for f in fields(StepRecord)}
    steps = [StepRecord(**{k: v for k, v in s.items() if k in step_known})
             for s in d.get("steps") or ()]  # fmt: skip
    return Result(**{k: v for k, v in d.items() if k in known}, steps=steps)


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result's JSON without what differs from run to run: `timing`, `machine` and the guest
    kernel's trace lines of each step (times and addresses; their counts stay)."""
    out = {k: v for k, v in result.items() if k not in ("timing", "machine", "steps")}
    if "steps" in result:
        out["steps"] = [{k: v for k, v in s.items() if k != "kernel"} for s in result["steps"]]
    return out
