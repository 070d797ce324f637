"""Scenarios: numbered, named steps run through the guest agent, checked from the host.

A scenario is an async function `body(run)` over a `Run`. Every step has a number, an actor
("driver A", "device B", "exporter") and an action, and goes through one of `Run`'s step methods:

    await run.cpu(1, "driver A", buf, write=(0, PAGE, 1))           # CPU pattern write
    await run.map(3, "driver A", att_a)                               # device A takes the buffer
    await run.dma(5, "device A", "dma0", [Desc.copy(a, a, PAGE, dst_off=PAGE)])
    await run.unmap(9, "driver A", att_a)
    await run.check_bytes(9, buf, PAGE, expected, "A's copy")         # host-side, shared RAM

After every step the host reads, without involving the guest: every device's counters (the
step's deltas are kept), the devices' new violations, and for DMA steps the transactions the
step's descriptors produced. Every descriptor a scenario submits carries a cookie naming its step
(`codec.step_cookie`); the driver's own maintenance descriptors carry `COOKIE_DRIVER | reason <<
32 | handle`, and a violation under one of those is attributed to the step that was running.
The ownership ledger (`ownership.Ledger`) follows maps, unmaps, CPU accesses and transfers and
flags CPU access while a device owns a buffer, with byte evidence.

Findings are lines naming the step: `step 12 (driver B unmap): CONFLICTING_WRITE at iova ...`.
A correct variant must end with none; a faulty variant must have findings at each of its
expected steps (`results.outcome`). What a scenario declares (`Scenario`, `Variant`, `Cell`) is
in `declarations`, what a run produced (`Result`) in `results`.

Steps normally run one after the other. With `run.concurrent = True` every step is issued on its
actor's own thread of control (A and B are independent drivers): the host issues the steps in
table order but does not wait for a step that blocks in the guest (an EXCLUSIVE map or CPU
access waiting for the owner; `scheduler.StepScheduler`); the ledger follows the order in which
steps really completed.

A run has a seed (`dmalab run --seed`): the pattern constants a scenario writes are tags that
`run.pattern_seed(tag)` and `run.fill_word(word)` turn into the bytes of this run (`codec`). A
matrix run also applies a policy (`POLICIES`): exporter flags added to every buffer the variant
creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dmalab.machine.agent import AgentError, Desc
from dmalab.machine.compare_bytes import compare
from dmalab.machine.cpucache import CacheEvent, CpuCacheModel
from dmalab.machine.guest_trace import GuestTrace
from dmalab.machine.ksyms import guest_symbols, process_symbols
from dmalab.scenarios.codec import (
    DEFAULT_SEED,
    cookie_step,
    describe_cookie,
    fill_bytes,
    salted,
    seed_salt,
    step_cookie,
)
from dmalab.scenarios.declarations import POLICIES, Variant
from dmalab.scenarios.ownership import Ledger
from dmalab.scenarios.results import CPU_CACHE, Finding, StepRecord
from dmalab.scenarios.scheduler import StepScheduler
from dmalab.spec import agent as spec

PAGE = 4096
#: Kernel trace lines kept per step (the counts cover them all).
KERNEL_LINES = 40
KEY_COUNTERS = (
    "desc_completed", "stale_reads", "lost_writes", "conflicting_writes",
    "writebacks_after_unmap", "iommu_map_events", "iommu_unmap_events", "translation_faults",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The run of one variant


@dataclass
class Buf:
    name: str
    id: int
    size: int
    pages: list[int]


@dataclass
class Att:
    id: int
    buf: Buf
    device: str  # topology id
    label: str  # "device A"


class Run:
    """One scenario variant on one booted machine (`vm`), devices named by topology id, under a
    matrix `policy` and the run's `seed`."""

    def __init__(
        self,
        vm: Any,
        devices: dict[str, int],
        topology: str,
        variant: Variant,
        *,
        shared: Any = None,
        policy: str = "base",
        seed: int = DEFAULT_SEED,
    ) -> None:
        self.vm = vm
        self.agent = vm.agent
        self.devices = devices  # topology id -> /dev/ncdmaN
        self.topology = topology
        self.variant = variant
        self.params = variant.params
        #: Topology facts scenarios ask about (e.g. the devices sharing an IOMMU domain).
        self.shared = shared
        self.policy = policy
        self.policy_flags = POLICIES[policy]
        self.seed = seed
        self.salt = seed_salt(seed)
        self.ledger = Ledger()
        self.findings: list[Finding] = []
        self.records: list[StepRecord] = []
        self.buffers: dict[str, Buf] = {}
        self._concurrent = False
        self.note = ""
        self.machine: dict[str, Any] = {}
        self._order = 0
        self._counters: dict[str, dict[str, int]] = {}
        self.trace = GuestTrace(vm.agent)
        #: The CPU cache model of a noncoherent machine (`present` False elsewhere; set when
        #: the variant starts).
        self.cpucache: CpuCacheModel | None = None
        #: Who counts IOMMU MAP events, per device: "device" (its vIOMMU sends MAP
        #: notifications) or "guest" (the kernel's iommu/map trace events).
        self.map_observer: dict[str, str] = {}
        self._seen_violations: dict[str, int] = {}
        #: Runs each actor's steps on its own in concurrent mode.
        self.scheduler = StepScheduler(probe=self._owner_waits)
        self._lock = asyncio.Lock()
        self._flags: list[tuple[Finding, Any]] = []
        self._unmapping: dict[tuple[str, str], asyncio.Event] = {}

    @property
    def concurrent(self) -> bool:
        """Whether each actor's steps run on their own. Always under the `exclusive` policy:
        there one driver's step waits for another's unmap, which a single sequence of steps
        would never reach."""
        return self._concurrent or "EXCLUSIVE" in self.policy_flags

    @concurrent.setter
    def concurrent(self, value: bool) -> None:
        self._concurrent = value

    # -----------------------------------------------------------------------------------------
    # The run's seed: pattern constants are tags

    def pattern_seed(self, tag: int) -> int:
        """The CPU pattern seed (`write=(offset, length, seed)`) for the scenario's `tag`."""
        return salted(tag, self.salt)

    def pattern(self, tag: int, n: int) -> bytes:
        """The bytes a CPU pattern write of `tag` puts there."""
        return spec.pattern(self.pattern_seed(tag), n)

    def fill_word(self, word: int) -> int:
        """The FILL word of this run for the scenario's constant `word`."""
        return salted(word, self.salt)

    def fill(self, word: int, n: int) -> bytes:
        """The bytes FILL with the scenario's constant `word` writes."""
        return fill_bytes(self.fill_word(word), n)

    # -----------------------------------------------------------------------------------------
    # Setup (not steps)

    def buffer_flags(self, flags: Sequence[str] = ()) -> list[str]:
        """The flags a buffer created with `flags` gets: the policy's are added."""
        return [*flags, *(f for f in self.policy_flags if f not in flags)]

    async def start(self) -> None:
        # Every device at once: their QMP and agent round trips overlap.
        await asyncio.gather(*(self._start_device(qid) for qid in self.devices))
        await self.trace.start()
        self.cpucache = CpuCacheModel(self.vm.qmp)
        if await self.cpucache.probe():
            await self.cpucache.take()  # what came before the variant is not its finding
            self._counters[CPU_CACHE] = await self.cpucache.counters()

    async def _start_device(self, qid: str) -> None:
        dev = self.vm.device(qid)
        await dev.reset_stats()
        await self.agent.stats(self.devices[qid], reset=True)
        self._counters[qid] = await dev.counters()
        self._seen_violations[qid] = 0
        iommu = await dev.iommu()
        counts = iommu.get("events") and not iommu.get("degraded")
        self.map_observer[qid] = "device" if counts else "guest"

    def map_events(self, step: int, device: str) -> int:
        """IOMMU MAP events at `step` for `device`, from its observer (`map_observer`): the
        device's count, or the guest kernel's iommu/map events in that step (the step is one
        device's map, so they are that device's)."""
        record = next(r for r in self.records if r.step == step)
        if self.map_observer.get(device, "device") == "device":
            return record.counters.get(device, {}).get("iommu_map_events", 0)
        return record.kernel_events.get("map", 0)

    async def buffer(
        self,
        name: str,
        size: int,
        *,
        exporter: str,
        flags: Sequence[str] = (),
        faults: Sequence[str] = (),
        kind: str = "NCDMA",
    ) -> Buf:
        """An export of device `exporter`, or of an upstream exporter (`kind` "UDMABUF": the
        agent's sealed memfd; exporter, flags and faults are ncdma's and not used then)."""
        ncdma = kind == "NCDMA"
        b = await self.agent.buf_create(
            kind, size, dev=self.devices[exporter] if ncdma else 0,
            flags=self.buffer_flags(flags) if ncdma else [], faults=list(faults) if ncdma else [],
        )  # fmt: skip
        buf = Buf(name, b.id, size, await self.agent.buf_pages(b.id, 0, (size + PAGE - 1) // PAGE))
        self.buffers[name] = buf
        self.ledger.add_buffer(name, size, self.host_bytes(buf))
        return buf

    async def attach(
        self,
        buf: Buf,
        device: str,
        label: str,
        *,
        flags: Sequence[str] = (),
        faults: Sequence[str] = (),
    ) -> Att:
        a = await self.agent.attach(
            buf.id, self.devices[device], flags=list(flags), faults=list(faults)
        )
        return Att(a.id, buf, device, label)

    async def refresh_pages(self, buf: Buf) -> list[int]:
        buf.pages = await self.agent.buf_pages(buf.id, 0, len(buf.pages))
        return buf.pages

    def host_bytes(self, buf: Buf, offset: int = 0, length: int | None = None) -> bytes:
        """The buffer's bytes in guest memory, through the shared mapping of its pages."""
        length = buf.size - offset if length is None else length
        out = bytearray()
        pos = offset
        while pos < offset + length:
            page, within = divmod(pos, PAGE)
            n = min(PAGE - within, offset + length - pos)
            out += self.vm.ram.view(buf.pages[page] + within, n)
            pos += n
        return bytes(out)

    # -----------------------------------------------------------------------------------------
    # Findings

    def find(self, step: int, kind: str, text: str) -> None:
        label = self._label(step)
        self.findings.append(Finding(step, kind, f"step {step} ({label}): {text}"))

    def _label(self, step: int) -> str:
        for r in self.records:
            if r.step == step:
                return f"{r.actor} {r.action}"
        return "host check"

    def check(self, step: int, ok: bool, text: str) -> bool:
        if not ok:
            self.find(step, "CHECK", text)
        return ok

    async def check_bytes(
        self, step: int, buf: Buf, offset: int, expected: bytes, what: str
    ) -> bool:
        """The buffer's bytes in guest memory (what cacheable CPU accesses see) against
        `expected`; a BYTES finding when they differ."""
        actual = self.host_bytes(buf, offset, len(expected))
        return self._compare_bytes(step, offset, expected, actual, what, "in memory", "memory")

    async def check_read(
        self, step: int, buf: Buf, offset: int, expected: bytes, what: str
    ) -> bool:
        """The bytes a CPU read through the agent's mapping of the buffer returns, against
        `expected`: what a user of a mapping that is not cacheable (vgem's write-combining one)
        sees on the noncoherent platform, where guest memory holds only the cacheable view."""
        actual = await self.agent.cpu_read(buf.id, offset, len(expected))
        return self._compare_bytes(step, offset, expected, actual, what, "as the CPU reads them",
                                   "read")  # fmt: skip

    def _compare_bytes(
        self, step: int, offset: int, expected: bytes, actual: bytes, what: str, where: str,
        seen: str,
    ) -> bool:  # fmt: skip
        diff = compare(expected, actual)
        if diff is None:
            return True
        self.find(
            step,
            "BYTES",
            f"{what}: {diff.differing} of {len(expected)} bytes differ {where} at offset "
            f"{offset + diff.first:#x} (expected {expected[diff.first]:#04x}, "
            f"{seen} {actual[diff.first]:#04x})",
        )
        return False

    # -----------------------------------------------------------------------------------------
    # Steps

    async def cpu(
        self,
        step: int,
        actor: str,
        buf: Buf,
        *,
        write: tuple[int, int, int] | None = None,  # (offset, length, pattern seed)
        read: tuple[int, int] | None = None,  # (offset, length)
        sync: bool = False,
        action: str = "CPU read/write",
    ) -> None:
        async def body() -> None:
            before = self.host_bytes(buf)
            bg = self.concurrent
            if sync:
                await self.agent.sync(buf.id, end=False, background=bg)
            data = None
            if read is not None:
                data = await self.agent.cpu_read(buf.id, *read, background=bg)
            if write is not None:
                off, n, seed = write
                await self.agent.cpu_write_pattern(buf.id, off, n, seed, background=bg)
            if sync:
                await self.agent.sync(buf.id, end=True, background=bg)
            self._replied(step)
            await self._released(buf)
            after = self.host_bytes(buf)
            async with self._lock:
                await self._after(step, record)
                flag = self.ledger.cpu_access(
                    step, buf.name, actor, before, after,
                    read=(read[0], data) if read is not None and data is not None else None,
                )  # fmt: skip
                if write is not None:
                    off, n, seed = write
                    self.ledger.cpu_write(step, buf.name, off, spec.pattern(seed, n))
                if flag:
                    self._flag(flag)
                record.owners[buf.name] = self.ledger.owners(buf.name)

        record = StepRecord(step, actor, action)
        await self._issue(actor, record, body)

    async def _released(self, buf: Buf, timeout: float = 5.0) -> None:
        """A CPU access that completed while an owner's unmap is still in flight: with two
        requests in flight the guest's replies may arrive in either order, and the access may
        only have been let through by that unmap. Wait for the unmap's reply, so the ledger sees
        the guest's order (with EXCLUSIVE the access cannot complete before the unmap)."""
        for owner in self.ledger.owners(buf.name):
            event = self._unmapping.get((buf.name, owner))
            if event is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)

    def _flag(self, flag: Any) -> None:
        # Rendered when the run ends: later steps add evidence ("device A read them at step 5").
        self.findings.append(Finding(flag.step, "OWNERSHIP", ""))
        self._flags.append((self.findings[-1], flag))

    def final_findings(self) -> list[Finding]:
        for finding, flag in self._flags:
            finding.line = f"step {flag.step} ({flag.what}): " + "; ".join(flag.evidence)
        return sorted(self.findings, key=lambda f: f.step)

    async def map(self, step: int, actor: str, att: Att, direction: str = "BIDIRECTIONAL") -> None:
        async def body() -> None:
            await self.agent.map(att.id, direction, background=self.concurrent)
            self._replied(step)
            async with self._lock:
                self.ledger.map(step, att.buf.name, att.label, self.host_bytes(att.buf))
                await self._after(step, record)
                record.owners[att.buf.name] = self.ledger.owners(att.buf.name)

        record = StepRecord(step, actor, f"map ({att.label}, {direction})")
        await self._issue(actor, record, body, releases=False)

    async def unmap(self, step: int, actor: str, att: Att) -> None:
        async def body() -> None:
            done = self._unmapping.setdefault((att.buf.name, att.label), asyncio.Event())
            try:
                await self.agent.unmap(att.id, background=self.concurrent)
                self._replied(step)
                async with self._lock:
                    await self._after(step, record)
                    self.ledger.unmap(step, att.buf.name, att.label, self.host_bytes(att.buf))
                    record.owners[att.buf.name] = self.ledger.owners(att.buf.name)
            finally:
                done.set()
                self._unmapping.pop((att.buf.name, att.label), None)

        record = StepRecord(step, actor, f"unmap ({att.label})")
        await self._issue(actor, record, body)

    async def dma(
        self,
        step: int,
        actor: str,
        device: str,
        descs: Sequence[Desc],
        *,
        action: str = "dma",
        expect_status: str = "OK",
        writes: Any = None,  # buffer -> offset -> bytes, or a function returning that
    ) -> None:
        """Run descriptors on `device`; `writes` is what they put in each buffer (for the
        ledger's model of a coherent machine)."""
        descs = [dataclasses.replace(d, cookie=step_cookie(step, i)) for i, d in enumerate(descs)]

        async def body() -> None:
            results = await self.agent.run(
                self.devices[device], list(descs), background=self.concurrent
            )
            self._replied(step)
            async with self._lock:
                await self._after(step, record)
                for i, r in enumerate(results):
                    if r.status != expect_status:
                        self.find(
                            step, "STATUS",
                            f"descriptor {i} ({descs[i].op}) ended {r.status} after {r.done} "
                            f"bytes, "
                            f"expected {expect_status}",
                        )  # fmt: skip
                effect = writes() if callable(writes) else writes
                await self._ledger_dma(step, device, actor, effect or {})
                for name in self.buffers:
                    record.owners[name] = self.ledger.owners(name)

        record = StepRecord(step, actor, action)
        await self._issue(actor, record, body, releases=False)

    async def action(
        self,
        step: int,
        actor: str,
        action: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        expect_error: str | None = None,
    ) -> Any:
        """Any other step (move, revoke, a cache operation); `expect_error` names the errno the
        step must fail with."""
        out: list[Any] = []

        async def body() -> None:
            error = None
            try:
                out.append(await fn())
            except AgentError as exc:
                error = exc.name
                record.error = f"{exc.name}: {exc.message}"
            self._replied(step)
            async with self._lock:
                await self._after(step, record)
                if error != expect_error:
                    self.find(
                        step, "CHECK",
                        f"expected {expect_error or 'success'}, got {record.error or 'success'}",
                    )  # fmt: skip

        record = StepRecord(step, actor, action)
        await self._issue(actor, record, body)
        return out[0] if out else None

    # -----------------------------------------------------------------------------------------
    # Issuing, and what the host reads after every step

    async def _issue(
        self,
        actor: str,
        record: StepRecord,
        body: Callable[[], Awaitable[None]],
        *,
        releases: bool = True,
    ) -> None:
        """Run the step now, or in concurrent mode on its actor's chain; `releases`: its
        completion may end an ownership (a map or a DMA step never does)."""
        self.records.append(record)
        if not self.concurrent:
            await body()
            return
        self.scheduler.issue(actor, record.step, body, releases=releases)
        await self.scheduler.settle()

    async def _owner_waits(self) -> int:
        """The driver's EXCLUSIVE ownership waits begun so far, over every device: how the
        scheduler learns that a step blocks in the guest."""
        total = 0
        for index in self.devices.values():
            total += (await self.agent.stats(index)).driver.get("owner_waits", 0)
        return total

    def _replied(self, step: int) -> None:
        """The guest answered the step: it is not blocked (the host's reads follow)."""
        self.scheduler.replied(step)

    async def settle(self) -> None:
        """Wait until every issued step has completed or has been blocked for a while."""
        await self.scheduler.settle()

    async def finish(self, timeout: float = 20.0) -> None:
        """Wait for every step (concurrent mode); steps still blocked after `timeout` seconds
        fail the variant with one line naming them."""
        await self.scheduler.finish(timeout, self._label)

    async def _after(self, step: int, record: StepRecord) -> None:
        self._order += 1
        record.order = self._order
        # The guest's trace (agent) and every device's counters (QMP) asked for at once.
        events, *counters = await asyncio.gather(
            self.trace.take(), *(self.vm.device(qid).counters() for qid in self.devices)
        )
        for event in events:
            record.kernel_events[event.name] = record.kernel_events.get(event.name, 0) + 1
            if len(record.kernel) < KERNEL_LINES:
                record.kernel.append(event.line)
        for qid, now in zip(self.devices, counters, strict=True):
            dev = self.vm.device(qid)
            before = self._counters[qid]
            delta = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
            if delta:
                record.counters[qid] = delta
            self._counters[qid] = now
            if now.get("violations_logged", 0) > self._seen_violations[qid]:
                violations = await dev.violations()
                self._violations(step, qid, violations[self._seen_violations[qid] :])
                self._seen_violations[qid] = len(violations)
        if self.cpucache is not None and self.cpucache.present:
            await self._cpu_cache(step, record)

    async def _cpu_cache(self, step: int, record: StepRecord) -> None:
        """The CPU cache model's counts in the step, and one finding per (kind, master)."""
        assert self.cpucache is not None
        now = await self.cpucache.counters()
        before = self._counters[CPU_CACHE]
        delta = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        if delta:
            record.counters[CPU_CACHE] = delta
        self._counters[CPU_CACHE] = now
        groups: dict[tuple[str, str], list[CacheEvent]] = {}
        for e in await self.cpucache.take():
            groups.setdefault((e.kind, e.master), []).append(e)
        syms = await guest_symbols(self.agent) if groups else None
        for (kind, master), es in groups.items():
            e = es[0]
            lines = f"{len(es)} lines, " if len(es) > 1 else ""
            iova = f"iova {e.iova:#x}, " if e.iova >= 0 else ""
            by = "no vCPU"
            if e.vcpu >= 0 and syms is not None:
                frames = list(e.frames) or [e.pc]
                await process_symbols(self.agent, syms, e.pid)
                task = f" ({syms.task(e.pid)})" if e.pid > 0 else ""
                by = f"vCPU {e.vcpu}{task} at {syms.trace(frames, e.pid)}"
            self.find(
                step,
                kind,
                f"{kind} ({master}): {lines}{sum(x.differing for x in es)} bytes, first at "
                f"{iova}{self._where(e.pa)}; {by}; expected {e.expected[:8].hex()} actual "
                f"{e.actual[:8].hex()}",
            )

    def _violations(self, step: int, qid: str, violations: Sequence[Any]) -> None:
        """One finding per (step, kind, cookie): how many lines and bytes, the first one."""
        groups: dict[tuple[int, str, str], list[Any]] = {}
        for v in violations:
            _, under, text = describe_cookie(v.cookie)
            at = under if under is not None else step
            groups.setdefault((at, v.kind, text), []).append(v)
        for (at, kind, text), vs in groups.items():
            v = vs[0]
            lines = f"{len(vs)} line{'s' if len(vs) > 1 else ''}, " if len(vs) > 1 else ""
            self.find(
                at,
                kind,
                f"{kind} on {qid}: {lines}{sum(x.differing for x in vs)} bytes, first at iova "
                f"{v.iova:#x} ({self._where(v.pa)}), under {text}; expected "
                f"{v.expected[:8].hex()} actual {v.actual[:8].hex()}",
            )

    def _where(self, pa: int) -> str:
        for buf in self.buffers.values():
            for i, page in enumerate(buf.pages):
                if page <= pa < page + PAGE:
                    return f"{buf.name} offset {i * PAGE + pa - page:#x}"
        return f"pa {pa:#x}"

    def offsets(self, buf: Buf, pa: int, length: int) -> list[tuple[int, int]]:
        """Offsets in `buf` of the physical range [pa, pa + length)."""
        out = []
        pos = pa
        while pos < pa + length:
            page = pos & ~(PAGE - 1)
            n = min(page + PAGE - pos, pa + length - pos)
            if page in buf.pages:
                out.append((buf.pages.index(page) * PAGE + pos - page, n))
            pos += n
        return out

    async def transactions(self, device: str, step: int) -> list[Any]:
        txs = await self.vm.device(device).transactions()
        return [t for t in txs if cookie_step(t.cookie) == step]

    async def _ledger_dma(
        self, step: int, device: str, actor: str, writes: dict[str, dict[int, bytes]]
    ) -> None:
        txs = await self.transactions(device, step)
        label = actor.replace("driver", "device")
        for name, buf in self.buffers.items():
            reads = []
            for t in txs:
                for s in t.segments:
                    if not s.write:
                        reads += self.offsets(buf, s.pa, s.len)
            flag = self.ledger.dma(step, name, label, reads=reads, writes=writes.get(name, {}))
            if flag:
                self._flag(flag)

    # -----------------------------------------------------------------------------------------

    def counters_total(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for r in self.records:
            for qid, delta in r.counters.items():
                for k in KEY_COUNTERS:
                    if delta.get(k):
                        total.setdefault(qid, {}).setdefault(k, 0)
                        total[qid][k] += delta[k]
        return total
