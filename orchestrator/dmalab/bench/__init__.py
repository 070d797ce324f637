"""Benchmarks: `dmalab bench ...`. Each module measures one thing and returns a JSON-ready report.

Throughput is reported in MB/s (10^6 bytes per second) as the median of repeated runs; every ratio
compares figures measured in the same run, so a noisy or shared machine shifts both sides alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True)
class Stat:
    """Throughput samples of one measurement, in MB/s."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def to_json(self) -> dict[str, object]:
        return {
            "median_mbps": round(self.median, 1),
            "min_mbps": round(self.min, 1),
            "max_mbps": round(self.max, 1),
            "samples_mbps": [round(s, 1) for s in self.samples],
        }


def upper_targets(results: dict[str, float], limits: dict[str, float]) -> list[dict[str, object]]:
    """One target entry per `limits` key: the result must be at most the limit."""
    return [
        {"name": k, "value": results[k], "target": f"<= {v}", "pass": results[k] <= v}
        for k, v in limits.items()
    ]


def envelope(
    schema: str, command: str, machine: dict[str, Any], results: dict[str, Any],
    targets: Sequence[dict[str, Any]], **facts: Any,
) -> dict[str, Any]:  # fmt: skip
    """A benchmark report: what ran where, its facts, results and targets."""
    return {
        "schema": schema,
        "command": command,
        "machine": machine,
        **facts,
        "results": results,
        "targets": list(targets),
        "all_targets_pass": all(t["pass"] for t in targets),
    }


def target_lines(targets: Sequence[dict[str, object]]) -> list[str]:
    """`target NAME <= LIMIT: VALUE pass|MISSED`, one line per target."""
    return [
        f"target {t['name']} {t['target']}: {t['value']} {'pass' if t['pass'] else 'MISSED'}"
        for t in targets
    ]


def mbps(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second)."""
    if seconds <= 0:
        raise ValueError(f"non-positive duration {seconds}")
    return nbytes / seconds / 1e6


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or not reference:
        return None
    return value / reference


def size_label(size: int) -> str:
    """4096 -> "4 KiB", 16 MiB -> "16 MiB"."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def parse_size(text: str) -> int:
    """ "4K", "64KiB", "1M", "16MiB" or a plain number of bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if value and value[-1] in "KMG":
        scale = {"K": KiB, "M": MiB, "G": 1 << 30}[value[-1]]
        value = value[:-1]
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if number <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return number * scale
