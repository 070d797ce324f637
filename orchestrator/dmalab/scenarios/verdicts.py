"""What a result's (expectation, outcome) pair means, and the counter names shown beside it.

One table for the terminal report, the HTML report and `dmalab report --compare`, so that the
three never disagree on what counts as a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FAIL = "FAIL"
#: (expectation, outcome) -> verdict; any other pair is FAIL.
VERDICTS = {
    ("pass", "pass"): "pass",
    ("detected", "detected"): "detected as expected",
    ("pass", "unavailable"): "n/a",
    ("detected", "unavailable"): "n/a",
    # Matrix cells where nothing is enforced: what happened is recorded, never a failure.
    ("observe", "pass"): "clean (observed)",
    ("observe", "detected"): "detected (observed)",
    ("observe", "unavailable"): "n/a",
}
#: Verdict -> CSS class in the HTML report.
VERDICT_CLASS = {
    "pass": "pass",
    "detected as expected": "detected",
    "clean (observed)": "observed",
    "detected (observed)": "observed",
    "n/a": "na",
    FAIL: "fail",
}
#: The devices' violation counters (docs/ncdma.md), plus the IOMMU's translation faults.
VIOLATIONS = (
    "stale_reads",
    "lost_writes",
    "conflicting_writes",
    "writebacks_after_unmap",
    "translation_faults",
)
VIOLATION_LABELS = {
    "stale_reads": "stale reads", "lost_writes": "lost writes",
    "conflicting_writes": "conflicting writes", "writebacks_after_unmap": "write-backs after unmap",
    "translation_faults": "translation faults",
}  # fmt: skip
#: Key counters as the tables abbreviate them, in display order.
SHORT = {
    "stale_reads": "stale", "lost_writes": "lost", "conflicting_writes": "conflict",
    "writebacks_after_unmap": "wb-unmapped", "iommu_map_events": "MAP",
    "iommu_unmap_events": "UNMAP", "translation_faults": "faults",
}  # fmt: skip


#: Observed matrix cells show this many detected steps, then "...".
MATRIX_STEPS = 3


def verdict(expectation: Any, outcome: Any) -> str:
    return VERDICTS.get((str(expectation), str(outcome)), FAIL)


def cell_text(expectation: Any, outcome: Any, expected: Any, detected: Any) -> str:
    """One matrix cell: `pass`, `det 4,11` (detected at its expected steps), `n/a`, `FAIL`, or
    in parentheses what a cell that enforces nothing showed: `(clean)`, `(det 4,11,12)`."""
    v = verdict(expectation, outcome)
    if v == "detected as expected":
        return "det " + ",".join(map(str, expected or ()))
    if v == "clean (observed)":
        return "(clean)"
    if v == "detected (observed)":
        steps = list(detected or ())
        more = ",..." if len(steps) > MATRIX_STEPS else ""
        return f"(det {','.join(map(str, steps[:MATRIX_STEPS]))}{more})"
    return v


def counter_totals(per_dev: Any) -> dict[str, int]:
    """Each counter summed over a result's devices ({device: {counter: value}})."""
    total: dict[str, int] = {}
    if not isinstance(per_dev, Mapping):
        return total
    for counters in per_dev.values():
        if isinstance(counters, Mapping):
            for k, v in counters.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
    return total


def key_counters(per_dev: Any) -> str:
    """The key counters that are not zero, e.g. "stale=4096 MAP=3"."""
    totals = counter_totals(per_dev)
    return " ".join(f"{SHORT[k]}={totals[k]}" for k in SHORT if totals.get(k))
