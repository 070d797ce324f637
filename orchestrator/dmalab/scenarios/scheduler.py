"""The step scheduler of a concurrent run: each actor's steps on a thread of control of its own.

With `run.concurrent` (docs/scenarios.md) the host issues the steps in table order but does not
wait for a step that blocks in the guest (an EXCLUSIVE map, or a CPU access waiting for the
owner). "driver A" and "device A" are one chain: a chain runs its steps one after the other,
chains run side by side. Whether a step is blocked is only known by its taking long, so the
scheduler keeps, for every step in flight, when it was issued or last showed activity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dmalab.errors import CheckFailed

#: How long a step may stay pending before the host counts it as blocked in the guest.
BLOCKED_AFTER_S = 0.25


class StepScheduler:
    """Chains of steps by actor; `settle()` after issuing, `finish()` or `cancel()` at the end."""

    def __init__(self) -> None:
        self._chains: dict[str, asyncio.Task[Any]] = {}
        self._pending: dict[int, float] = {}  # step -> when issued (or last active)
        self._completed = 0  # steps completed

    def issue(self, actor: str, step: int, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` on `actor`'s chain, after the chain's previous step."""
        chain = actor.split()[-1]  # "driver A" and "device A" are one thread of control
        prev = self._chains.get(chain)

        async def run() -> None:
            if prev is not None:
                await prev
            self._pending[step] = time.monotonic()
            try:
                await body()
            finally:
                self._pending.pop(step, None)
                self._completed += 1

        self._chains[chain] = asyncio.ensure_future(run())

    def replied(self, step: int) -> None:
        """The guest answered the step: it is not blocked (the host's reads follow)."""
        if step in self._pending:
            self._pending[step] = time.monotonic()

    def _blocked(self, now: float) -> bool:
        """Whether every step in flight has shown no activity for BLOCKED_AFTER_S."""
        return not [t for t in self._pending.values() if now - t < BLOCKED_AFTER_S]

    async def settle(self) -> None:
        """Wait until every issued step has completed or has been blocked for a while.

        A completion may have let blocked steps through, and their replies take a while on a
        busy host (other machines running beside this one): so every completion restarts their
        clocks, and the next step is issued only once they stayed blocked that long again, or
        completed. Then the steps complete in the same order however loaded the host is."""
        await asyncio.sleep(0)
        seen = self._completed
        while True:
            if all(t.done() for t in self._chains.values()):
                return
            now = time.monotonic()
            if self._completed != seen:
                seen = self._completed
                for step in self._pending:
                    self._pending[step] = now
            if self._blocked(now):
                await asyncio.sleep(0.02)  # a chain may be starting its next step
                if self._blocked(time.monotonic()):
                    return
            await asyncio.sleep(0.01)

    async def finish(self, timeout: float, label: Callable[[int], str]) -> None:
        """Wait for every step; steps still blocked after `timeout` seconds are cancelled and
        raise one `CheckFailed` naming them (`label(step)`). A step's exception is raised."""
        if not self._chains:
            return
        chains = list(self._chains.values())
        _, pending = await asyncio.wait(chains, timeout=timeout)
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
