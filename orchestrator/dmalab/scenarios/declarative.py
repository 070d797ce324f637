"""Scenario files: a scenario written as a TOML table of steps instead of Python
(docs/scenario-files.md).

A file declares buffers, actors (actor "A" is "driver A", the CPU side, and "device A", its
ncdma), numbered steps (cpu, map, unmap, dma-copy, dma-fill, check) and variants that leave
steps out or change flags. `load_file` checks everything before a machine is involved; each
mistake is one `BadInput` line naming the file, the field and the problem. The `Scenario` it
returns runs its steps through `Run` like a Python scenario, so verdicts, evidence, counters and
the ownership ledger are the same. What a DMA step puts in the buffer (the ledger's model of a
coherent machine) is derived from the step, never written by hand.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmalab.errors import BadInput, CheckFailed
from dmalab.machine.agent import Desc
from dmalab.scenarios.api import PAGE, Att, Buf, Run
from dmalab.scenarios.declarations import CELL_TOPOLOGIES, POLICIES, Cell, Scenario, Variant
from dmalab.spec import agent as spec
from dmalab.spec import ncdma as hw
from dmalab.spec.tables import NAME, Source, Table, id_problem, kind_label, shown

ACTIONS = ("cpu", "map", "unmap", "dma-copy", "dma-fill", "check")
DRIVER_ACTIONS = ("cpu", "map", "unmap")
DEVICE_ACTIONS = ("dma-copy", "dma-fill")
#: What a check compares the bytes with.
EQUALS = ("coherent", "cpu-pattern", "fill", "zero")
EXPECTATIONS = ("pass", "detected")
#: Step numbers travel in 16 bits of every descriptor's cookie (`api.step_cookie`).
MAX_STEP = 0xFFFF
#: CPU reads come back in one agent reply (at most 4 MiB of payload).
MAX_BUFFER = 4 << 20

BUF_FLAGS = tuple(spec.BufFlags.flags)
ATT_FLAGS = tuple(spec.AttFlags.flags)
FAULTS = tuple(spec.Faults.flags)
DIRECTIONS = tuple(str(k) for k in spec.Direction.encmapping)
STATUSES = tuple(str(k) for k in hw.Status.encmapping if str(k) != "PENDING")

TOP_KEYS = ("name", "seed", "title", "concurrent", "buffers", "actors", "step", "variant")
COMMON_STEP_KEYS = ("n", "action", "actor", "buffer", "only-in", "skip-in")
STEP_KEYS = {
    "cpu": ("read", "write", "pattern", "sync", "label"),
    "map": ("direction",),
    "unmap": (),
    "dma-copy": ("from", "to", "to-buffer", "status", "label"),
    "dma-fill": ("to", "pattern", "status", "label"),
    "check": ("range", "equals", "pattern", "label"),
}
VARIANT_KEYS = ("name", "expect", "steps", "about", "concurrent", "buffers", "actors", "cell")
CELL_KEYS = ("policy", "expect", "why", "steps", "on")
BUFFER_KEYS = ("pages", "bytes", "exporter", "flags", "faults")
ACTOR_KEYS = ("device", "buffers", "flags", "faults")
OVERRIDE_KEYS = ("flags", "faults")
SPAN_KEYS = ("offset", "length")
CELL_EXPECTATIONS = ("pass", "detected", "n/a")
_TOML_ERROR = re.compile(r"(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)")


# ---------------------------------------------------------------------------------------------
# What a file declares


@dataclass(frozen=True)
class Span:
    """A byte range of a buffer, with the words the file used for it."""

    offset: int
    length: int
    text: str  # "page 0", "pages 1-2", "bytes 0x100+0x40", "the whole buffer"

    def overlaps(self, other: Span) -> bool:
        return (
            self.offset < other.offset + other.length and other.offset < self.offset + self.length
        )


@dataclass(frozen=True)
class BufferDecl:
    name: str
    size: int
    exporter: str
    flags: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActorDecl:
    """Actor A: "driver A" (CPU accesses, map, unmap) and "device A" (DMA) on `device`,
    attached to `buffers` in this order."""

    name: str
    device: str
    buffers: tuple[str, ...]
    flags: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepDecl:
    index: int  # position among the file's [[step]] tables
    n: int
    action: str
    actor: str  # an actor's name ("A"); "" for a check (the host)
    buffer: str
    label: str
    only_in: frozenset[str] | None = None
    skip_in: frozenset[str] = frozenset()
    read: Span | None = None
    write: Span | None = None
    sync: bool = False
    pattern: int = 0
    direction: str = ""
    src: Span | None = None
    dst: Span | None = None
    to_buffer: str = ""
    status: str = "OK"
    checked: Span | None = None
    equals: str = "coherent"

    def runs_in(self, variant: str) -> bool:
        if self.only_in is not None:
            return variant in self.only_in
        return variant not in self.skip_in

    @property
    def who(self) -> str:
        if self.action == "check":
            return "host"
        return f"{'device' if self.action in DEVICE_ACTIONS else 'driver'} {self.actor}"


@dataclass(frozen=True)
class ScenarioFile:
    """A parsed, checked scenario file."""

    label: str  # the file, as errors name it
    name: str
    seed: str
    title: str
    concurrent: bool
    buffers: Mapping[str, BufferDecl]
    actors: Mapping[str, ActorDecl]
    steps: tuple[StepDecl, ...]
    variants: tuple[Variant, ...]

    def scenario(self) -> Scenario:
        async def body(run: Run) -> None:
            await _run(self, run)

        return Scenario(self.name, self.seed, self.title, body, self.variants)


# ---------------------------------------------------------------------------------------------
# Loading


def load_file(path: Path, *, devices: Collection[str] | None = None) -> Scenario:
    """The scenario in a TOML file. `devices`: the topology ids steps may use (None: any id;
    an id the machine lacks then fails the variant when it runs)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return load_text(text, str(path), devices=devices, default_name=path.stem)


def load_text(
    text: str,
    label: str,
    *,
    devices: Collection[str] | None = None,
    default_name: str | None = None,
) -> Scenario:
    """The scenario in TOML `text`; `label` names it in errors (usually the file's path)."""
    return parse_text(text, label, devices=devices, default_name=default_name).scenario()


def parse_text(
    text: str,
    label: str,
    *,
    devices: Collection[str] | None = None,
    default_name: str | None = None,
) -> ScenarioFile:
    src = Source(label)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_ERROR.fullmatch(str(exc))
        if m:
            src.fail(f"line {m['line']}, column {m['col']}", f"not valid TOML: {m['msg']}")
        src.fail("TOML", str(exc))
    return _parse(src, data, devices, default_name or Path(label).stem)


def _parse(
    src: Source, data: dict[str, Any], devices: Collection[str] | None, default_name: str
) -> ScenarioFile:
    top = Table(src, "", data, TOP_KEYS)
    if "name" not in data and (problem := id_problem(default_name, NAME)):
        top.fail("name", f'missing, and the file name {problem}: give name = "..."')
    name = top.identifier("name", default_name, NAME)
    seed = top.text("seed", "") or ""
    title = top.text("title", required=True)
    concurrent = top.get("concurrent", bool, False)

    buffers = _buffers(src, top, devices)
    actors = _actors(src, top, buffers, devices)
    variant_names = _variant_names(src, top)
    steps = _steps(src, top, buffers, actors, variant_names)
    variants = _variants(src, top, buffers, actors, steps, concurrent)
    return ScenarioFile(src.label, name, seed, title, concurrent, buffers, actors, steps, variants)


def _device(t: Table, key: str, devices: Collection[str] | None) -> str:
    value = t.identifier(key)
    if devices is not None and value not in devices:
        t.fail(key, f"unknown device {value!r}; the topology has {', '.join(sorted(devices))}")
    return value


def _buffers(src: Source, top: Table, devices: Collection[str] | None) -> dict[str, BufferDecl]:
    tables = Table(src, "buffers", top.get("buffers", dict, required=True), None)
    if not tables.value:
        top.fail("buffers", "declares no buffer (add a [buffers.NAME] table)")
    out = {}
    for name, raw in tables.value.items():
        where = f"buffers.{name}"
        if problem := id_problem(name):
            src.fail(where, problem)
        t = Table(src, where, raw, BUFFER_KEYS)
        if t.has("pages") == t.has("bytes"):
            t.fail("pages", "give the size as pages = N or bytes = N (one of them)")
        if t.has("pages"):
            size = t.integer("pages", 1, MAX_BUFFER // PAGE) * PAGE
        else:
            size = t.integer("bytes", 1, MAX_BUFFER)
        out[name] = BufferDecl(
            name,
            size,
            _device(t, "exporter", devices),
            t.names("flags", BUF_FLAGS, "buffer flag") or (),
            t.names("faults", FAULTS, "fault") or (),
        )
    return out


def _actors(
    src: Source,
    top: Table,
    buffers: Mapping[str, BufferDecl],
    devices: Collection[str] | None,
) -> dict[str, ActorDecl]:
    tables = Table(src, "actors", top.get("actors", dict, required=True), None)
    if not tables.value:
        top.fail("actors", 'declares no actor (e.g. A = "dma0")')
    out = {}
    used: dict[str, str] = {}
    for name, raw in tables.value.items():
        where = f"actors.{name}"
        if problem := id_problem(name):
            src.fail(where, problem)
        if isinstance(raw, str):
            raw = {"device": raw}
        elif not isinstance(raw, dict):
            src.fail(
                where,
                f'must be a device id ("dma0") or a table, not {kind_label(raw)} ({shown(raw)})',
            )
        t = Table(src, where, raw, ACTOR_KEYS)
        device = _device(t, "device", devices)
        if device in used:
            # One attachment per (device, buffer), so the ledger can tell the owners apart.
            t.fail("device", f"{device!r} is already actor {used[device]}'s device")
        used[device] = name
        attached = t.names("buffers", tuple(buffers), "buffer")
        out[name] = ActorDecl(
            name,
            device,
            tuple(buffers) if attached is None else attached,
            t.names("flags", ATT_FLAGS, "attachment flag") or (),
            t.names("faults", FAULTS, "fault") or (),
        )
    return out


def _variant_names(src: Source, top: Table) -> list[str]:
    """The variants' names, read first so steps can refer to them."""
    raws = top.array("variant")
    if not raws:
        src.fail("variant", "missing: a scenario needs at least one [[variant]]")
    names: list[str] = []
    for i, raw in enumerate(raws):
        name = Table(src, f"variant[{i}]", raw, VARIANT_KEYS).identifier("name")
        if name in names:
            src.fail(f"variant[{i}].name", f"{name!r} is already variant[{names.index(name)}]")
        names.append(name)
    return names


def _span(t: Table, key: str, buf: BufferDecl, *, required: bool = True) -> Span | None:
    if not t.has(key):
        if required:
            t.fail(key, "missing")
        return None
    raw = t.value[key]
    where = t.name(key)
    if isinstance(raw, dict):
        r = Table(t.src, where, raw, SPAN_KEYS)
        offset = r.integer("offset", 0, MAX_BUFFER)
        length = r.integer("length", 1, MAX_BUFFER)
        span = Span(offset, length, f"bytes {offset:#x}+{length:#x}")
    elif isinstance(raw, str):
        words = raw.split()
        m = re.fullmatch(r"page (\d+)|pages (\d+)-(\d+)", " ".join(words))
        if words == ["all"]:
            return Span(0, buf.size, "the whole buffer")
        if not m:
            t.src.fail(
                where,
                f'{raw!r} is not a range ("page N", "pages N-M", "all" or '
                "{ offset = ..., length = ... })",
            )
        first, last = (int(m[1]), int(m[1])) if m[1] else (int(m[2]), int(m[3]))
        if last < first:
            t.src.fail(where, f"{raw!r}: the last page comes before the first")
        text = f"page {first}" if first == last else f"pages {first}-{last}"
        span = Span(first * PAGE, (last - first + 1) * PAGE, text)
    else:
        t.src.fail(
            where,
            f'must be a range ("page N", "pages N-M", "all" or a table), not {kind_label(raw)} '
            f"({shown(raw)})",
        )
    if span.offset + span.length > buf.size:
        pages = buf.size // PAGE
        if buf.size % PAGE:
            size = f"{buf.size:#x} bytes"
        else:
            size = f"pages 0-{pages - 1}" if pages > 1 else "page 0"
        t.src.fail(where, f"{span.text} is outside buffer {buf.name!r} ({size})")
    return span


def _pattern(t: Table, default: int | None = None) -> int:
    return t.integer("pattern", 0, (1 << 64) - 1, default)


def _steps(
    src: Source,
    top: Table,
    buffers: Mapping[str, BufferDecl],
    actors: Mapping[str, ActorDecl],
    variants: list[str],
) -> tuple[StepDecl, ...]:
    raws = top.array("step")
    if not raws:
        src.fail("step", "missing: a scenario needs at least one [[step]]")
    out: list[StepDecl] = []
    for i, raw in enumerate(raws):
        where = f"step[{i}]"
        if not isinstance(raw, dict):
            src.fail(where, f"must be a table, not {kind_label(raw)}")
        action = raw.get("action")
        if action is None:
            src.fail(f"{where}.action", f"missing (one of: {', '.join(ACTIONS)})")
        if action not in ACTIONS:
            src.fail(
                f"{where}.action", f"unknown action {shown(action)} (known: {', '.join(ACTIONS)})"
            )
        known = COMMON_STEP_KEYS + STEP_KEYS[action]
        if action == "check":
            if "actor" in raw:
                src.fail(f"{where}.actor", "a check is done by the host: leave actor out")
            known = tuple(k for k in known if k != "actor")
        t = Table(src, where, raw, known)
        n = t.integer("n", 1, MAX_STEP)
        actor = "" if action == "check" else _actor(t, action, actors)
        # CPU accesses go through the buffer's own mapping: no attachment needed.
        attached = actors.get(actor) if action not in ("cpu", "check") else None
        buffer = _buffer_name(t, "buffer", buffers, attached)
        only_in, skip_in = _selection(t, variants)
        out.append(_step(t, i, n, action, actor, buffers, buffer, actors, only_in, skip_in))
    return tuple(out)


def _actor(t: Table, action: str, actors: Mapping[str, ActorDecl]) -> str:
    raw = t.text("actor", required=True)
    role, _, name = raw.partition(" ")
    if role not in ("driver", "device") or name not in actors:
        known = [f"{r} {a}" for a in actors for r in ("driver", "device")]
        t.fail("actor", f"unknown actor {raw!r} (known: {', '.join(known)})")
    if action in DRIVER_ACTIONS and role != "driver":
        t.fail("actor", f"a {action} step is done by 'driver {name}', not {raw!r}")
    if action in DEVICE_ACTIONS and role != "device":
        t.fail("actor", f"a {action} step is done by 'device {name}', not {raw!r}")
    return name


def _buffer_name(
    t: Table, key: str, buffers: Mapping[str, BufferDecl], actor: ActorDecl | None
) -> str:
    if not t.has(key):
        if len(buffers) > 1:
            t.fail(key, f"missing (the scenario has buffers {', '.join(buffers)})")
        name = next(iter(buffers))
    else:
        name = t.text(key)
        if name not in buffers:
            t.fail(key, f"unknown buffer {name!r} (known: {', '.join(buffers)})")
    if actor is not None and name not in actor.buffers:
        t.fail(
            key,
            f"actor {actor.name} is not attached to buffer {name!r} (actors.{actor.name}.buffers)",
        )
    return name


def _selection(t: Table, variants: list[str]) -> tuple[frozenset[str] | None, frozenset[str]]:
    if t.has("only-in") and t.has("skip-in"):
        t.fail("skip-in", "give only-in or skip-in, not both")
    lists = {}
    for key in ("only-in", "skip-in"):
        if t.has(key):
            names = t.names(key, tuple(variants), "variant") or ()
            if not names:
                t.fail(key, "must name at least one variant, not []")
            lists[key] = frozenset(names)
    return lists.get("only-in"), lists.get("skip-in", frozenset())


def _step(
    t: Table,
    index: int,
    n: int,
    action: str,
    actor: str,
    buffers: Mapping[str, BufferDecl],
    buffer: str,
    actors: Mapping[str, ActorDecl],
    only_in: frozenset[str] | None,
    skip_in: frozenset[str],
) -> StepDecl:
    buf = buffers[buffer]
    common: dict[str, Any] = dict(
        index=index, n=n, action=action, actor=actor, buffer=buffer, only_in=only_in,
        skip_in=skip_in,
    )  # fmt: skip
    label = t.text("label", "")
    many = len(buffers) > 1
    if action == "cpu":
        read = _span(t, "read", buf, required=False)
        write = _span(t, "write", buf, required=False)
        if read is None and write is None:
            t.fail("write", "a cpu step needs read, write or both")
        pattern = _pattern(t, n)
        if t.has("pattern") and write is None:
            t.fail("pattern", f"only a CPU write uses a pattern, not {t.value['pattern']!r}")
        sync = t.get("sync", bool, False)
        if not label:
            parts = [f"read {read.text}" if read else "", f"write {write.text}" if write else ""]
            label = "CPU " + ", ".join(p for p in parts if p) + (" (synced)" if sync else "")
        return StepDecl(**common, label=label, read=read, write=write, pattern=pattern, sync=sync)
    if action in ("map", "unmap"):
        direction = t.choice("direction", DIRECTIONS, "BIDIRECTIONAL") if action == "map" else ""
        # Run names map and unmap steps itself ("map (device A, BIDIRECTIONAL)").
        return StepDecl(**common, label=action, direction=direction)
    if action == "dma-copy":
        to_buffer = (
            _buffer_name(t, "to-buffer", buffers, actors[actor]) if t.has("to-buffer") else buffer
        )
        src = _span(t, "from", buf)
        dst = _span(t, "to", buffers[to_buffer])
        assert src is not None and dst is not None
        if src.length != dst.length:
            t.fail("to", f"{dst.text} is {dst.length} bytes, from ({src.text}) {src.length}")
        if to_buffer == buffer and src.overlaps(dst):
            # A device copies in its own order: an overlapping copy has no single right result.
            t.fail("to", f"{dst.text} overlaps from ({src.text})")
        if not label and (many or to_buffer != buffer):
            label = f"dma (copy {buffer} {src.text} to {to_buffer} {dst.text})"
        label = label or f"dma (copy {src.text} to {dst.text})"
        return StepDecl(**common, label=label, src=src, dst=dst, to_buffer=to_buffer,
                        status=t.choice("status", STATUSES, "OK"))  # fmt: skip
    if action == "dma-fill":
        dst = _span(t, "to", buf)
        assert dst is not None
        pattern = _pattern(t)
        subject = f"{buffer} {dst.text}" if many else dst.text
        label = label or f"dma (fill {subject} with {pattern:#x})"
        return StepDecl(**common, label=label, dst=dst, pattern=pattern,
                        status=t.choice("status", STATUSES, "OK"))  # fmt: skip
    return _check_step(t, common, buf, label, many)


def _check_step(
    t: Table, common: dict[str, Any], buf: BufferDecl, label: str, many: bool
) -> StepDecl:
    """A `check` step: a range of the buffer against a coherent machine, a pattern or zeros."""
    buffer = common["buffer"]
    span = _span(t, "range", buf, required=False) or Span(0, buf.size, "the whole buffer")
    equals = t.choice("equals", EQUALS, "coherent")
    if equals in ("cpu-pattern", "fill"):
        pattern = _pattern(t)
    elif t.has("pattern"):
        t.fail("pattern", f"only equals = cpu-pattern or fill uses a pattern, not {equals}")
    else:
        pattern = 0
    if not label:
        against = {
            "coherent": "a coherent machine",
            "cpu-pattern": f"CPU pattern {pattern}",
            "fill": f"fill {pattern:#x}",
            "zero": "zeros",
        }[equals]
        subject = span.text
        if many:
            subject = buffer if span.text == "the whole buffer" else f"{buffer} {span.text}"
        label = f"{subject} vs. {against}"
    return StepDecl(**common, label=label, checked=span, pattern=pattern, equals=equals)


def _overrides(
    t: Table, key: str, names: Collection[str], flags: tuple[str, ...], what: str
) -> dict[str, dict[str, list[str]]]:
    """A variant's [variant.buffers.NAME] or [variant.actors.NAME]: flags and faults that
    replace the declared ones."""
    tables = Table(t.src, t.name(key), t.get(key, dict, {}), None)
    out = {}
    for name, raw in tables.value.items():
        if name not in names:
            t.fail(f"{key}.{name}", f"unknown {what} {name!r} (known: {', '.join(names)})")
        o = Table(t.src, t.name(f"{key}.{name}"), raw, OVERRIDE_KEYS)
        entry = {}
        for field, choices in (("flags", flags), ("faults", FAULTS)):
            value = o.names(field, choices, "flag" if field == "flags" else "fault")
            if value is not None:
                entry[field] = list(value)
        out[name] = entry
    return out


def _variants(
    src: Source,
    top: Table,
    buffers: Mapping[str, BufferDecl],
    actors: Mapping[str, ActorDecl],
    steps: tuple[StepDecl, ...],
    concurrent: bool,
) -> tuple[Variant, ...]:
    out = []
    for i, raw in enumerate(top.array("variant")):
        t = Table(src, f"variant[{i}]", raw, VARIANT_KEYS)
        name = t.identifier("name")
        expect = t.choice("expect", EXPECTATIONS)
        active = [s for s in steps if s.runs_in(name)]
        if not active:
            src.fail(t.where, f"no step runs in variant {name!r} (check only-in and skip-in)")
        _check_sequence(src, name, active)
        numbers = sorted({s.n for s in active})
        detected = _detected_steps(t, name, expect, numbers)
        params: dict[str, Any] = {"concurrent": t.get("concurrent", bool, concurrent)}
        if t.has("buffers"):
            params["buffers"] = _overrides(t, "buffers", buffers, BUF_FLAGS, "buffer")
        if t.has("actors"):
            params["actors"] = _overrides(t, "actors", actors, ATT_FLAGS, "actor")
        cells = _cells(t, name, numbers)
        about = t.text("about", "") or ""
        out.append(Variant(name, expect, detected, about, params, cells))
    return tuple(out)


def _detected_steps(t: Table, variant: str, expect: str, numbers: list[int]) -> tuple[int, ...]:
    """The `steps` of a variant or a cell: steps that run in the variant, present exactly when
    `expect` is "detected"."""
    detected = t.get("steps", list, [])
    for j, n in enumerate(detected):
        if isinstance(n, bool) or not isinstance(n, int):
            t.src.fail(
                f"{t.where}.steps[{j}]", f"must be a step number, not {kind_label(n)} ({shown(n)})"
            )
        if n not in numbers:
            t.fail(
                "steps",
                f"step {n} does not run in variant {variant!r} (its steps: "
                f"{', '.join(map(str, numbers))})",
            )
    if expect == "detected" and not detected:
        given = f", not {detected}" if t.has("steps") else ""
        t.fail("steps", f"missing: a detected variant names the steps it must be caught at{given}")
    if expect == "pass" and detected:
        t.fail("steps", f"a pass variant must have no finding: leave steps out, not {detected}")
    if expect != "detected" and detected:
        t.fail("steps", f"an {expect!r} cell names no steps: leave steps out, not {detected}")
    return tuple(sorted(set(detected)))


def _cells(variant: Table, name: str, numbers: list[int]) -> tuple[Cell, ...]:
    """A variant's [[variant.cell]]: what it must show in other matrix cells, and why."""
    raws = variant.get("cell", list, [])
    cells: list[Cell] = []
    for k, raw in enumerate(raws):
        t = Table(variant.src, f"{variant.where}.cell[{k}]", raw, CELL_KEYS)
        policy = t.choice("policy", tuple(POLICIES))
        expect = t.choice("expect", CELL_EXPECTATIONS)
        on = t.choice("on", CELL_TOPOLOGIES, "any")
        why = t.text("why", required=True)
        steps = _detected_steps(t, name, expect, numbers)
        for j, c in enumerate(cells):
            if c.policy == policy and (c.on == on or "any" in (c.on, on)):
                t.fail("on", f"{policy} on {on} topologies is already cell[{j}] (on {c.on})")
        cells.append(Cell(policy, expect, why, steps, on))
    return tuple(cells)


def _check_sequence(src: Source, variant: str, active: list[StepDecl]) -> None:
    """Within one variant: step numbers in order, one step per number (a check may share its
    step's number), and maps and unmaps that pair up, none left mapped at the end."""
    numbered: dict[int, StepDecl] = {}
    mapped: dict[tuple[str, str], StepDecl] = {}
    for last, s in zip([None, *active], active, strict=False):
        if last is not None and s.n < last.n:
            src.fail(
                f"step[{s.index}].n",
                f"step {s.n} comes after step {last.n} (step[{last.index}]) in variant "
                f"{variant!r}: step numbers must not decrease",
            )
        if s.action != "check":
            if s.n in numbered:
                src.fail(
                    f"step[{s.index}].n",
                    f"step {s.n} is also step[{numbered[s.n].index}] in variant {variant!r} "
                    "(use only-in or skip-in to pick one)",
                )
            numbered[s.n] = s
        key = (s.actor, s.buffer)
        if s.action == "map":
            if key in mapped:
                src.fail(
                    f"step[{s.index}]",
                    f"driver {s.actor} maps {s.buffer!r} again in variant {variant!r} "
                    f"(mapped at step {mapped[key].n}, not unmapped since)",
                )
            mapped[key] = s
        elif s.action == "unmap" and mapped.pop(key, None) is None:
            src.fail(
                f"step[{s.index}]",
                f"driver {s.actor} unmaps {s.buffer!r} in variant {variant!r}, "
                "but has not mapped it",
            )
    for s in mapped.values():
        # The runner's teardown would unmap it after the last step, unseen by the table and
        # its checks: the file says where the device gives the buffer back.
        src.fail(
            f"step[{s.index}]",
            f"driver {s.actor} maps {s.buffer!r} at step {s.n} and never unmaps it in variant "
            f"{variant!r} (add an unmap step)",
        )


# ---------------------------------------------------------------------------------------------
# Running


async def _run(sf: ScenarioFile, run: Run) -> None:
    p = run.params
    run.concurrent = bool(p.get("concurrent", sf.concurrent))
    used = {b.exporter for b in sf.buffers.values()} | {a.device for a in sf.actors.values()}
    missing = sorted(used - set(run.devices))
    if missing:
        raise CheckFailed(
            f"{sf.label}: topology {run.topology} has no device {', '.join(missing)} "
            f"(it has {', '.join(run.devices)})"
        )
    bufs: dict[str, Buf] = {}
    for b in sf.buffers.values():
        o = p.get("buffers", {}).get(b.name, {})
        bufs[b.name] = await run.buffer(
            b.name, b.size, exporter=b.exporter,
            flags=o.get("flags", b.flags), faults=o.get("faults", b.faults),
        )  # fmt: skip
    atts: dict[tuple[str, str], Att] = {}
    for a in sf.actors.values():
        o = p.get("actors", {}).get(a.name, {})
        for name in a.buffers:
            atts[a.name, name] = await run.attach(
                bufs[name], a.device, f"device {a.name}",
                flags=o.get("flags", a.flags), faults=o.get("faults", a.faults),
            )  # fmt: skip
    for s in sf.steps:
        if s.runs_in(run.variant.name):
            await _do(run, s, bufs, atts)
    await run.finish()


async def _do(
    run: Run,
    s: StepDecl,
    bufs: dict[str, Buf],
    atts: dict[tuple[str, str], Att],
) -> None:
    buf = bufs[s.buffer]
    model = run.ledger.model
    if s.action == "cpu":
        write = (s.write.offset, s.write.length, run.pattern_seed(s.pattern)) if s.write else None
        read = (s.read.offset, s.read.length) if s.read else None
        await run.cpu(s.n, s.who, buf, write=write, read=read, sync=s.sync, action=s.label)
    elif s.action == "map":
        await run.map(s.n, s.who, atts[s.actor, s.buffer], s.direction)
    elif s.action == "unmap":
        await run.unmap(s.n, s.who, atts[s.actor, s.buffer])
    elif s.action == "dma-copy":
        assert s.src is not None and s.dst is not None
        src, dst = s.src, s.dst
        a, b = atts[s.actor, s.buffer], atts[s.actor, s.to_buffer]
        desc = Desc.copy(a.id, b.id, src.length, src_off=src.offset, dst_off=dst.offset)

        def copied() -> dict[str, dict[int, bytes]]:
            # Read when the step completes: a coherent machine copies what is there by then.
            return {
                s.to_buffer: {dst.offset: model(s.buffer)[src.offset : src.offset + src.length]}
            }

        await run.dma(s.n, s.who, a.device, [desc], action=s.label, expect_status=s.status,
                      writes=copied if s.status == "OK" else None)  # fmt: skip
    elif s.action == "dma-fill":
        assert s.dst is not None
        a = atts[s.actor, s.buffer]
        desc = Desc.fill(a.id, s.dst.length, run.fill_word(s.pattern), dst_off=s.dst.offset)
        filled = {s.buffer: {s.dst.offset: run.fill(s.pattern, s.dst.length)}}
        await run.dma(s.n, s.who, a.device, [desc], action=s.label, expect_status=s.status,
                      writes=filled if s.status == "OK" else None)  # fmt: skip
    else:
        assert s.checked is not None
        # A check sees every step before it completed, also one still blocked (concurrent).
        await run.finish()
        span = s.checked
        expected = {
            "coherent": lambda: model(s.buffer)[span.offset : span.offset + span.length],
            "cpu-pattern": lambda: run.pattern(s.pattern, span.length),
            "fill": lambda: run.fill(s.pattern, span.length),
            "zero": lambda: bytes(span.length),
        }[s.equals]()
        await run.check_bytes(s.n, buf, span.offset, expected, s.label)
