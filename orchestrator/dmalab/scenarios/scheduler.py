"""The step scheduler of a concurrent run: each actor's steps on a thread of control of its own.

With `run.concurrent` (docs/scenarios.md) the host issues the steps in table order but does not
wait for a step that blocks in the guest (an EXCLUSIVE map, or a CPU access waiting for the
owner). "driver A" and "device A" are one chain: a chain runs its steps one after the other,
chains run side by side. Before the next step is issued, every step in flight must have
completed or be blocked. The guest says when a step began to wait for an owner (the driver's
`owner_waits` count, read through `probe`); otherwise a step counts as blocked once it has
shown no activity for a while, so the scheduler keeps, for every step in flight, when it was
issued or last showed activity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dmalab.errors import CheckFailed

#: How long a step may stay pending before the host counts it as blocked in the guest.
BLOCKED_AFTER_S = 0.25
#: How often the guest is asked whether a running step has begun to wait: soon after the step
#: starts, then less and less often (each question costs the guest's one vCPU a little).
PROBE_FIRST_S = 0.005
PROBE_MAX_S = 0.04


#: The guest's count of ownership waits begun so far (any monotonic count will do).
Probe = Callable[[], Awaitable[int]]


class StepScheduler:
    """Chains of steps by actor; `settle()` after issuing, `finish()` or `cancel()` at the end.
    `wait_seconds` is the time spent in `settle()` and `finish()` while steps were in flight."""

    def __init__(self, probe: Probe | None = None) -> None:
        self._probe = probe
        self._chains: dict[str, asyncio.Task[Any]] = {}
        #: Every step issued: its chain's previous task and its own, until it is done.
        self._issued: dict[int, tuple[asyncio.Task[Any] | None, asyncio.Task[Any]]] = {}
        self._pending: dict[int, float] = {}  # step -> when issued (or last active)
        self._completed = 0  # steps completed
        self._released = 0  # steps completed that may have let a waiting step through
        #: Steps in flight the guest showed waiting, and each running step's count at its start.
        self._known: set[int] = set()
        self._started: dict[int, tuple[int, int]] = {}  # step -> (waits, completions) at start
        self._changed = asyncio.Event()  # a step started, replied or completed
        self.wait_seconds = 0.0

    def issue(
        self, actor: str, step: int, body: Callable[[], Awaitable[None]], *, releases: bool = True
    ) -> None:
        """Run `body` on `actor`'s chain, after the chain's previous step. `releases`: its
        completion may end an ownership (an unmap, a CPU access, another action), and so let a
        waiting step through; a map or a DMA step never does."""
        chain = actor.split()[-1]  # "driver A" and "device A" are one thread of control
        prev = self._chains.get(chain)

        async def run() -> None:
            if prev is not None:
                await prev
            self._pending[step] = time.monotonic()
            try:
                if self._probe is not None:
                    completed = self._completed
                    self._started[step] = (await self._probe(), completed)
                self._changed.set()
                await body()
            finally:
                self._pending.pop(step, None)
                self._started.pop(step, None)
                self._known.discard(step)
                self._issued.pop(step, None)
                self._completed += 1
                if releases:
                    self._released += 1
                self._changed.set()

        task = asyncio.ensure_future(run())
        self._issued[step] = (prev, task)
        self._chains[chain] = task

    def replied(self, step: int) -> None:
        """The guest answered the step: it is not blocked (the host's reads follow)."""
        if step in self._pending:
            self._pending[step] = time.monotonic()
            self._changed.set()

    def _starting(self) -> bool:
        """Whether a step is about to start: its chain's previous step is done (or it has none)
        and it is not in flight yet."""
        return any(
            step not in self._pending and (prev is None or prev.done()) and not task.done()
            for step, (prev, task) in self._issued.items()
        )

    def _unsure(self, now: float) -> list[float]:
        """The clocks of the steps in flight not known to wait that showed activity within
        BLOCKED_AFTER_S."""
        return [
            t
            for step, t in self._pending.items()
            if step not in self._known and now - t < BLOCKED_AFTER_S
        ]

    async def _learn(self) -> None:
        """Ask the guest whether the one running step not known to wait has begun waiting.

        Only then is the answer unambiguous: every other step in flight already waits and none
        completed since that step started, so nothing could have let a waiter through and made it
        wait again; a count above the one at its start is its own wait."""
        unknown = [s for s in self._pending if s not in self._known]
        if self._probe is None or len(unknown) != 1 or unknown[0] not in self._started:
            return
        step = unknown[0]
        waits, completed = self._started[step]
        if completed != self._completed:
            return
        waiting = await self._probe() > waits
        # The probe took a while: the answer holds only if nothing completed meanwhile.
        if waiting and step in self._pending and completed == self._completed:
            self._known.add(step)

    async def settle(self) -> None:
        """Wait until every issued step has completed or is blocked.

        A completion that may end an ownership may have let blocked steps through, and their
        replies take a while on a busy host (other machines running beside this one): so such
        a completion forgets what the guest said, restarts their clocks, and the next step is
        issued only once they stayed blocked that long again, or completed. Then the steps
        complete in the same order however loaded the host is."""
        start = time.monotonic()
        try:
            await self._settle()
        finally:
            self.wait_seconds += time.monotonic() - start

    async def _settle(self) -> None:
        seen = self._released
        every = PROBE_FIRST_S
        while True:
            self._changed.clear()  # before looking: a change from here on wakes the wait below
            if all(t.done() for t in self._chains.values()):
                return
            if self._released != seen:
                seen = self._released
                self._known.clear()
                now = time.monotonic()
                for step in self._pending:
                    self._pending[step] = now
            await self._learn()
            now = time.monotonic()
            unsure = self._unsure(now)
            starting = self._starting()
            if not unsure and not starting and self._released == seen:
                return
            # Wake on a change, when the oldest clock runs out, or to ask the guest again.
            timeout = min((t + BLOCKED_AFTER_S - now for t in unsure), default=PROBE_FIRST_S)
            if self._probe is not None and unsure:
                timeout = min(timeout, every)
            try:
                await asyncio.wait_for(self._changed.wait(), max(timeout, 0.001))
                every = PROBE_FIRST_S
            except TimeoutError:
                every = min(every * 2, PROBE_MAX_S)

    async def finish(self, timeout: float, label: Callable[[int], str]) -> None:
        """Wait for every step; steps still blocked after `timeout` seconds are cancelled and
        raise one `CheckFailed` naming them (`label(step)`). A step's exception is raised."""
        if not self._chains:
            return
        chains = list(self._chains.values())
        start = time.monotonic()
        _, pending = await asyncio.wait(chains, timeout=timeout)
        self.wait_seconds += time.monotonic() - start
        if pending:
            blocked = ", ".join(f"{s} ({label(s)})" for s in sorted(self._pending))
            for task in pending:
                task.cancel()
            raise CheckFailed(f"steps still blocked after {timeout:g} s: {blocked or '?'}")
        self._chains.clear()
        for task in chains:
            task.result()

    def cancel(self) -> None:
        """Give up on every step still in flight (the variant failed)."""
        for task in self._chains.values():
            task.cancel()
