"""What a scenario declares: its variants, what each is expected to do, and in which matrix
cells (a policy, on some topologies) it is known to behave otherwise.

A scenario is an async function `body(run)` over a `dmalab.scenarios.api.Run` and its variants;
docs/scenarios.md describes the seeds, docs/scenario-files.md the same declarations in TOML.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dmalab.scenarios.api import Run

#: Matrix policies: exporter flags added to every buffer a variant creates. `base` is the
#: variant as written.
POLICIES: dict[str, tuple[str, ...]] = {
    "base": (),
    "cache-sgt": ("CACHE_SGT",),
    "exclusive": ("EXCLUSIVE",),
}

#: Where a `Cell` declaration holds: topologies whose devices are all coherent, the others, or
#: both; or machines whose PCIe DMA is below modelled CPU caches (`[machine] coherency =
#: "noncoherent"`), where the kernel's own cache maintenance decides what the devices see.
NONCOHERENT_PLATFORM = "noncoherent-platform"
CELL_TOPOLOGIES = ("any", "coherent", "noncoherent", NONCOHERENT_PLATFORM)


@dataclass(frozen=True)
class Cell:
    """What a variant is known to do in matrix cells (a policy, on some topologies) other than
    its own expectation: "n/a" (not run, `why` says why), or "pass" / "detected" at `steps`."""

    policy: str
    expect: str  # "pass", "detected" or "n/a"
    why: str
    steps: tuple[int, ...] = ()
    on: str = "any"  # one of CELL_TOPOLOGIES

    def __post_init__(self) -> None:
        if self.policy not in POLICIES or self.on not in CELL_TOPOLOGIES:
            raise ValueError(f"cell {self.policy!r} on {self.on!r}: unknown policy or topology")
        if self.expect not in ("pass", "detected", "n/a") or (
            self.expect == "detected" and not self.steps
        ):
            raise ValueError(f"cell {self.policy!r}: expect {self.expect!r} at {self.steps}")
        if not self.why:
            raise ValueError(f"cell {self.policy!r}: say why")


@dataclass(frozen=True)
class Variant:
    name: str
    expect: str  # "pass" or "detected"
    steps: tuple[int, ...] = ()  # where a faulty variant must be detected
    about: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    #: Known outcomes in other matrix cells (`cell_expectation`).
    cells: tuple[Cell, ...] = ()

    def __post_init__(self) -> None:
        # A correct variant is correct everywhere: it may only be declared not applicable, or
        # detected on a noncoherent platform, where what it relies on in the kernel skips the
        # CPU cache maintenance (a finding about that kernel code, said in the cell's why).
        if self.expect == "pass" and any(
            c.expect != "n/a" and c.on != NONCOHERENT_PLATFORM for c in self.cells
        ):
            raise ValueError(f"variant {self.name}: a correct variant may only declare n/a cells")


def cell_expectation(
    v: Variant, policy: str, coherent: bool, platform: str = "coherent"
) -> tuple[str, tuple[int, ...], str]:
    """(expectation, steps, why) of variant `v` under `policy` on a topology whose devices are
    all `coherent` or not, on a `platform` whose PCIe DMA is "coherent" or "noncoherent". The
    expectation is "pass", "detected" (at least at `steps`), "observe" (run and record, nothing
    enforced) or "n/a" (not run).

    A correct variant must pass everywhere, except where a `Cell` on the noncoherent platform
    declares the finding its kernel code makes there; on that platform the policies other than
    `base` are observed unless a cell declares them. A faulty one must be detected under
    `base` on a noncoherent topology; elsewhere its outcome is observed, unless a `Cell`
    declares it."""
    where = "coherent" if coherent else "noncoherent"
    if platform == "noncoherent":
        for c in v.cells:
            if c.policy == policy and c.on == NONCOHERENT_PLATFORM:
                return c.expect, c.steps, c.why
        if policy != "base":
            # The policies' cells are declared for device caches, not for CPU caches the
            # kernel maintains: there they are recorded, not enforced (n/a stays n/a).
            for c in v.cells:
                if c.policy == policy and c.expect == "n/a" and c.on in ("any", where):
                    return c.expect, c.steps, c.why
            return "observe", (), ""
    for c in v.cells:
        if c.policy == policy and c.on in ("any", where):
            return c.expect, c.steps, c.why
    if v.expect == "pass" or (policy == "base" and not coherent):
        return v.expect, v.steps, ""
    return "observe", (), ""


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: str
    title: str
    body: Callable[[Run], Awaitable[None]]
    variants: tuple[Variant, ...]
    #: Returns why the variant cannot run on this machine (None: it can), or a coroutine that
    #: does, when the guest must be asked.
    unavailable: Callable[[Run], str | Awaitable[str | None] | None] | None = None
