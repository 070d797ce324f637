"""Scenario files (TOML): parsing, one-line errors for every mistake, and the shipped 000 file
doing exactly what the Python seed 000 does, first on a recording stand-in for `Run` (no guest),
then on the default topology under TCG."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmalab.cli import main
from dmalab.errors import BadInput, CheckFailed
from dmalab.machine.topology import load_topology, shipped_topologies
from dmalab.scenarios.api import PAGE, Att, Buf
from dmalab.scenarios.codec import fill_bytes
from dmalab.scenarios.declarations import Scenario, Variant
from dmalab.scenarios.declarative import load_file, load_text, parse_text
from dmalab.scenarios.ownership import Ledger
from dmalab.scenarios.results import Result, StepRecord
from dmalab.scenarios.runner import Machine
from dmalab.scenarios.seeds import SEED_000
from dmalab.scenarios.suite import SUITE
from dmalab.spec import agent as spec

#: Seed 000 as a scenario file: the documented example, held to the Python seed.
FILE_000 = Path(__file__).resolve().parents[2] / "docs" / "examples" / "000-arnd-table.toml"
DEVICES = sorted({d.id for t in shipped_topologies() for d in load_topology(t).devices})

GOOD = """\
name = "copy"
seed = "900"
title = "one copy"

[buffers.buf]
pages = 2
exporter = "dma0"

[actors]
A = "dma0"
B = { device = "dma1", faults = ["USE_STALE"] }

[[step]]
n = 1
actor = "driver A"
action = "cpu"
write = "page 0"

[[step]]
n = 2
actor = "driver A"
action = "map"

[[step]]
n = 3
actor = "device A"
action = "dma-copy"
from = "page 0"
to = "page 1"

[[step]]
n = 4
actor = "driver A"
action = "unmap"

[[step]]
n = 4
action = "check"
range = "page 1"
equals = "cpu-pattern"
pattern = 1

[[variant]]
name = "plain"
expect = "pass"

[[variant]]
name = "lost"
expect = "detected"
steps = [4]
actors.A.faults = ["SKIP_UNMAP_CLEAN"]
"""


# ---------------------------------------------------------------------------------------------
# A stand-in for Run that records every call, for comparing two scenarios without a guest


class Recorder:
    def __init__(self, variant: Variant, devices: list[str] = DEVICES) -> None:
        self.variant = variant
        self.params = variant.params
        self.devices = {d: i for i, d in enumerate(devices)}
        self.topology = "recorder"
        self.concurrent = False
        self.ledger = Ledger()
        self.records: list[StepRecord] = []
        self.log: list[tuple[Any, ...]] = []
        self.labels: dict[int, str] = {}
        self._ids = itertools.count(1)

    # The seed's salt is 0 here (seed 1), so patterns are the scenario's own constants.
    def pattern_seed(self, tag: int) -> int:
        return tag

    def fill_word(self, word: int) -> int:
        return word

    def pattern(self, tag: int, n: int) -> bytes:
        return spec.pattern(tag, n)

    def fill(self, word: int, n: int) -> bytes:
        return fill_bytes(word, n)

    async def buffer(self, name: str, size: int, *, exporter: str, flags: Any = (),
                     faults: Any = ()) -> Buf:  # fmt: skip
        self.log.append(("buffer", name, size, exporter, sorted(flags), sorted(faults)))
        self.ledger.add_buffer(name, size)
        return Buf(name, next(self._ids), size, [])

    async def attach(self, buf: Buf, device: str, label: str, *, flags: Any = (),
                     faults: Any = ()) -> Att:  # fmt: skip
        self.log.append(("attach", buf.name, device, label, sorted(flags), sorted(faults)))
        return Att(next(self._ids), buf, device, label)

    def _step(self, step: int, actor: str, action: str, *what: Any) -> None:
        self.records.append(StepRecord(step, actor, action))
        self.labels[step] = action
        self.log.append((step, actor, *what))

    async def cpu(self, step: int, actor: str, buf: Buf, *, write: Any = None, read: Any = None,
                  sync: bool = False, action: str = "CPU read/write") -> None:  # fmt: skip
        self._step(step, actor, action, "cpu", buf.name, write, read, sync)
        if write is not None:
            self.ledger.cpu_write(step, buf.name, write[0], spec.pattern(write[2], write[1]))

    async def map(self, step: int, actor: str, att: Att, direction: str = "BIDIRECTIONAL") -> None:
        self._step(step, actor, "map", "map", att.id, direction)
        self.ledger.map(step, att.buf.name, att.label)

    async def unmap(self, step: int, actor: str, att: Att) -> None:
        self._step(step, actor, "unmap", "unmap", att.id)
        self.ledger.unmap(step, att.buf.name, att.label)

    async def dma(self, step: int, actor: str, device: str, descs: Any, *, action: str = "dma",
                  expect_status: str = "OK", writes: Any = None) -> None:  # fmt: skip
        effect = (writes() if callable(writes) else writes) or {}
        fields = [(d.op, d.src, d.dst, d.src_off, d.dst_off, d.len, d.pattern) for d in descs]
        self._step(step, actor, action, "dma", device, fields, expect_status, effect)
        for name, data in effect.items():
            self.ledger.dma(step, name, actor, writes=data)

    async def check_bytes(self, step: int, buf: Buf, offset: int, expected: bytes,
                          what: str) -> bool:  # fmt: skip
        self.log.append((step, "check", buf.name, offset, expected, what))
        return True

    async def finish(self) -> None:
        pass


def record(sc: Scenario, variant: str, devices: list[str] = DEVICES) -> Recorder:
    v = next(v for v in sc.variants if v.name == variant)
    rec = Recorder(v, devices)
    asyncio.run(sc.body(rec))  # type: ignore[arg-type]
    return rec


# ---------------------------------------------------------------------------------------------
# Parsing


def test_the_shipped_000_declares_what_the_python_seed_does() -> None:
    sc = load_file(FILE_000, devices=DEVICES)
    assert (sc.name, sc.seed) == ("000-arnd-table-toml", "000")
    assert [(v.name, v.expect, v.steps) for v in sc.variants] == [
        (v.name, v.expect, v.steps) for v in SEED_000.variants
    ]
    # Cells too, reasons and all: the matrix treats the file like the seed.
    assert [v.cells for v in sc.variants] == [v.cells for v in SEED_000.variants]
    exclusive = sc.variants[-1].params
    assert exclusive == {"concurrent": True, "buffers": {"buf": {"flags": ["EXCLUSIVE"]}}}


@pytest.mark.parametrize("variant", [v.name for v in SEED_000.variants])
def test_000_file_makes_the_same_calls_as_the_python_seed(variant: str) -> None:
    """Same buffers, attachments, steps, descriptors, derived DMA effects on the coherent model
    and final check, for every variant; only the steps' descriptive labels differ."""
    py = record(SEED_000, variant)
    toml = record(load_file(FILE_000), variant)
    assert toml.log == py.log
    assert toml.concurrent == py.concurrent == (variant == "exclusive")
    assert toml.ledger.model("buf") == py.ledger.model("buf")
    steps = [r.step for r in toml.records]
    if variant in ("shared-read", "both-write"):
        assert 4 not in steps and 11 not in steps
    assert toml.labels[5] == "dma (copy page 0 to page 1)"
    if variant == "both-write":
        assert toml.labels[8] == "dma (fill page 3 with 0xb8b8)"


def test_derived_effects_across_buffers_and_byte_ranges() -> None:
    text = """
        title = "two buffers"
        [buffers.src]
        pages = 1
        exporter = "dma0"
        [buffers.dst]
        bytes = 8192
        exporter = "dma0"
        [actors]
        A = { device = "dma2", flags = ["CACHE_SGT"] }
        [[step]]
        n = 1
        actor = "driver A"
        action = "cpu"
        buffer = "src"
        write = "all"
        pattern = 7
        [[step]]
        n = 2
        actor = "device A"
        action = "dma-copy"
        buffer = "src"
        from = { offset = 0x10, length = 0x100 }
        to-buffer = "dst"
        to = { offset = 0x1000, length = 0x100 }
        [[step]]
        n = 3
        actor = "device A"
        action = "dma-fill"
        buffer = "dst"
        to = { offset = 3, length = 13 }
        pattern = 0x0102030405060708
        [[step]]
        n = 3
        action = "check"
        buffer = "dst"
        range = "pages 0-1"
        [[variant]]
        name = "only"
        expect = "pass"
    """
    sc = load_text(text, "two.toml")
    assert sc.name == "two"
    rec = record(sc, "only")
    copy, fill, check = rec.log[-3:]
    assert copy[-1] == {"dst": {0x1000: spec.pattern(7, PAGE)[0x10:0x110]}}
    assert copy[4] == [("COPY", 3, 4, 0x10, 0x1000, 0x100, 0)]  # attachments 3 and 4
    assert fill[-1] == {"dst": {3: bytes([8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4])}}
    expected = bytearray(2 * PAGE)
    expected[0x1000:0x1100] = spec.pattern(7, PAGE)[0x10:0x110]
    expected[3:16] = bytes([8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4])
    assert check == (3, "check", "dst", 0, bytes(expected), "dst pages 0-1 vs. a coherent machine")
    assert rec.labels[2] == "dma (copy src bytes 0x10+0x100 to dst bytes 0x1000+0x100)"
    assert rec.log[2] == ("attach", "src", "dma2", "device A", ["CACHE_SGT"], [])


def test_a_device_the_topology_lacks_fails_the_variant_in_one_line() -> None:
    with pytest.raises(CheckFailed, match=r"^x\.toml: topology recorder has no device dma1 \("):
        record(load_text(GOOD, "x.toml"), "plain", devices=["dma0"])


def test_the_suite_runs_each_seed_once() -> None:
    names = [s.name for s in SUITE]
    assert names == ["000-arnd-table", "003-sgt-cache", "004-domain-reuse", "001-move",
                     "002-revoke", "platform-table", "platform-cpu-access",
                     "platform-udmabuf", "platform-heap", "platform-vgem"]  # fmt: skip
    assert len({s.seed for s in SUITE}) == len(SUITE)


# ---------------------------------------------------------------------------------------------
# Mistakes: one line naming the file, the field and the problem

_LOST = 'actors.A.faults = ["SKIP_UNMAP_CLEAN"]'


def _cell(*lines: str) -> str:
    """The last variant with a [[variant.cell]] made of `lines`."""
    return "\n".join([_LOST, "[[variant.cell]]", *lines])


MISTAKES = [
    # (replace this in GOOD, with this, the field named, part of the problem)
    ("pages = 2", "pages = ", "line 6, column 9", "not valid TOML: Invalid value"),
    ('to = "page 1"', 'to = "pages 0-1"\nfrom = "page 1"', "line 30, column 16",
     "not valid TOML: Cannot overwrite a value"),
    ('title = "one copy"\n', "", "title", "missing"),
    ('seed = "900"', 'seed = "900"\nsede = 1', "sede", "unknown field (expected one of: name,"),
    ('seed = "900"', "seed = 900", "seed", "must be a string, not an integer"),
    ("pages = 2", "pages = true", "buffers.buf.pages", "must be an integer, not true or false"),
    ('action = "map"', 'action = "mapp"', "step[1].action",
     "unknown action 'mapp' (known: cpu, map, unmap, dma-copy, dma-fill, check)"),
    ('action = "map"', 'action = "map"\npattern = 3', "step[1].pattern",
     "unknown field (expected one of: n, action, actor, buffer, only-in, skip-in, direction)"),
    ('actor = "driver A"\naction = "cpu"', 'actor = "driver C"\naction = "cpu"', "step[0].actor",
     "unknown actor 'driver C' (known: driver A, device A, driver B, device B)"),
    ('actor = "device A"', 'actor = "driver A"', "step[2].actor",
     "a dma-copy step is done by 'device A', not 'driver A'"),
    ('action = "check"', 'action = "check"\nactor = "driver A"', "step[4].actor",
     "a check is done by the host"),
    ('exporter = "dma0"', 'exporter = "dma9"', "buffers.buf.exporter",
     "unknown device 'dma9'; the topology has dma0, dma1, dma2"),
    ('A = "dma0"', 'A = "dma1"', "actors.B.device", "'dma1' is already actor A's device"),
    ('action = "unmap"\n', 'action = "unmap"\nonly-in = ["lost"]\n', "step[1]",
     "driver A maps 'buf' at step 2 and never unmaps it in variant 'plain' (add an unmap step)"),
    ("[buffers.buf]", "[buffers.9buf]", "buffers.9buf",
     "'9buf' is not an id (a letter, then letters, digits, '-' or '_', at most 31 characters)"),
    ("[actors]\nA =", "[actors]\n'A,B' =", "actors.A,B", "'A,B' is not an id"),
    ("pages = 2", 'pages = "2"', "buffers.buf.pages", "must be an integer, not a string ('2')"),
    ('name = "copy"', 'name = "a/b"', "name", "'a/b' is not a name (a letter or digit, then"),
    ('name = "copy"', 'name = "-copy"', "name", "'-copy' is not a name"),
    ('name = "plain"', 'name = "pl\u00e4in"', "variant[0].name", "is not an id"),
    ('action = "map"', 'action = "map"\nbuffer = "bf"', "step[1].buffer",
     "unknown buffer 'bf' (known: buf)"),
    ('exporter = "dma0"', 'exporter = "dma0"\nflags = ["EXCLUSIV"]', "buffers.buf.flags[0]",
     "unknown buffer flag 'EXCLUSIV' (known: DYNAMIC, CACHE_SGT, EXCLUSIVE, SHARE_DOMAIN)"),
    ("n = 3", "n = 1", "step[2].n",
     "step 1 comes after step 2 (step[1]) in variant 'plain': step numbers must not decrease"),
    ('n = 4\nactor = "driver A"', 'n = 3\nactor = "driver A"', "step[3].n",
     "step 3 is also step[2] in variant 'plain' (use only-in or skip-in to pick one)"),
    ('to = "page 1"', 'to = "page 2"', "step[2].to", "page 2 is outside buffer 'buf' (pages 0-1)"),
    ('to = "page 1"', 'to = "pages 1-3"', "step[2].to", "pages 1-3 is outside buffer 'buf'"),
    ('write = "page 0"', 'write = "page zero"', "step[0].write", "'page zero' is not a range"),
    ('to = "page 1"', "to = { offset = 4096, length = 100 }", "step[2].to",
     "bytes 0x1000+0x64 is 100 bytes, from (page 0) 4096"),
    ('to = "page 1"', "to = { offset = 100, length = 4096 }", "step[2].to",
     "overlaps from (page 0)"),
    ('action = "map"', 'action = "cpu"\nread = "page 0"', "step[3]",
     "driver A unmaps 'buf' in variant 'plain', but has not mapped it"),
    ("steps = [4]", "steps = [5]", "variant[1].steps",
     "step 5 does not run in variant 'lost' (its steps: 1, 2, 3, 4)"),
    ("steps = [4]\n", "", "variant[1].steps", "missing: a detected variant names the steps"),
    ('expect = "pass"', 'expect = "pass"\nsteps = [1]', "variant[0].steps",
     "a pass variant must have no finding"),
    ('expect = "pass"', 'expect = "fine"', "variant[0].expect",
     "must be one of pass, detected, not 'fine'"),
    ('name = "lost"', 'name = "plain"', "variant[1].name", "'plain' is already variant[0]"),
    ("[[step]]\n", '[[step]]\nskip-in = ["lost"]\n', "variant[1]",  # every step
     "no step runs in variant 'lost' (check only-in and skip-in)"),
    ('write = "page 0"', 'write = "page 0"\nonly-in = ["plian"]', "step[0].only-in[0]",
     "unknown variant 'plian' (known: plain, lost)"),
    ("actors.A.faults", "actors.C.faults", "variant[1].actors.C",
     "unknown actor 'C' (known: A, B)"),
    ('faults = ["USE_STALE"]', 'faults = "USE_STALE"', "actors.B.faults",
     "must be a list, not a string"),
    ("n = 1", "n = 0", "step[0].n", "must be in [1, 65535], not 0"),
    (_LOST, _cell('policy = "exclusiv"', 'expect = "pass"', 'why = "w"'),
     "variant[1].cell[0].policy", "must be one of base, cache-sgt, exclusive, not 'exclusiv'"),
    (_LOST, _cell('policy = "exclusive"', 'expect = "pass"'), "variant[1].cell[0].why", "missing"),
    (_LOST, _cell('policy = "base"', 'expect = "pass"', 'why = " "'), "variant[1].cell[0].why",
     "must not be empty"),
    (_LOST, _cell('policy = "exclusive"', 'expect = "detected"', 'why = "w"'),
     "variant[1].cell[0].steps", "missing: a detected variant names the steps"),
    (_LOST, _cell('policy = "exclusive"', 'expect = "n/a"', 'why = "w"', "steps = [4]"),
     "variant[1].cell[0].steps", "an 'n/a' cell names no steps"),
    (_LOST, _cell('policy = "exclusive"', 'expect = "detected"', 'why = "w"', "steps = [9]"),
     "variant[1].cell[0].steps", "step 9 does not run in variant 'lost'"),
    (_LOST, _cell('policy = "exclusive"', 'expect = "pass"', 'why = "w"', "[[variant.cell]]",
                  'policy = "exclusive"', 'expect = "pass"', 'why = "w"', 'on = "coherent"'),
     "variant[1].cell[1].on", "exclusive on coherent topologies is already cell[0] (on any)"),
    (_LOST, _cell('policy = "base"', 'expect = "pass"', 'why = "w"', 'on = "both"'),
     "variant[1].cell[0].on",
     "must be one of any, coherent, noncoherent, noncoherent-platform, not 'both'"),
    (_LOST, _cell('policy = "base"', 'expect = "pass"', 'why = "w"', "when = 1"),
     "variant[1].cell[0].when", "unknown field (expected one of: policy, expect, why, steps, on)"),
]  # fmt: skip


def _variants_removed(text: str) -> str:
    return text[: text.index("[[variant]]")]


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"), MISTAKES, ids=[f"{m[2]}:{m[3][:30]}" for m in MISTAKES]
)
def test_every_mistake_is_one_line_naming_file_field_and_problem(
    tmp_path: Path, old: str, new: str, field: str, problem: str
) -> None:
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(BadInput) as exc:
        load_file(path, devices=DEVICES)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message, message


def test_the_good_file_is_good_and_other_mistakes(tmp_path: Path) -> None:
    assert [v.name for v in load_text(GOOD, "good.toml", devices=DEVICES).variants] == [
        "plain",
        "lost",
    ]
    with pytest.raises(BadInput, match=r"^x\.toml: variant: missing: a scenario needs at least"):
        load_text(_variants_removed(GOOD), "x.toml")
    with pytest.raises(BadInput, match=r"^x\.toml: buffers: missing$"):
        load_text(GOOD.replace('[buffers.buf]\npages = 2\nexporter = "dma0"\n', ""), "x.toml")
    missing = tmp_path / "nope.toml"
    with pytest.raises(BadInput, match=rf"^{re.escape(str(missing))}: cannot read: No such file"):
        load_file(missing)
    with pytest.raises(BadInput, match=r"^my file\.toml: name: missing, and the file name 'my"):
        load_text(GOOD.replace('name = "copy"\n', ""), "my file.toml")
    # Without the topology's devices any id goes at load time (checked when it runs).
    assert load_text(GOOD.replace('"dma0"', '"gpu0"'), "x.toml").name == "copy"


def _mutations(text: str) -> list[tuple[str, str]]:
    """Every line left out, and every value given the wrong type: (file, the value as the
    error must quote it, "" for a line left out)."""
    lines = text.splitlines()
    out = [("\n".join(lines[:i] + lines[i + 1 :]), "") for i in range(len(lines))]
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            swapped, quoted = ("1", "1") if value.startswith(('"', "[", "{")) else ('"x"', "'x'")
            for new, shown in ((swapped, quoted), ("[]", "[]")):
                out.append(("\n".join([*lines[:i], f"{key} = {new}", *lines[i + 1 :]]), shown))
    return out


@pytest.mark.parametrize("source", ["good", "000"])
def test_no_mutation_gets_past_without_a_one_line_answer(source: str) -> None:
    """Every answer is one line naming the file and a table path; a wrong value is quoted."""
    text = GOOD if source == "good" else FILE_000.read_text()
    unquoted = []
    for mutated, value in _mutations(text):
        try:
            parse_text(mutated, "m.toml", devices=DEVICES)
        except BadInput as exc:
            message = str(exc)
            where = r"(line \d+, column \d+|[A-Za-z][\w.\[\]-]*)"
            assert re.match(rf"m\.toml: {where}: ", message) and "\n" not in message, message
            if value and value not in message:
                unquoted.append(message)
    assert not unquoted, "\n".join(unquoted)


# ---------------------------------------------------------------------------------------------
# On a machine: the TOML 000 against the Python seed 000


def _final_bytes(r: Result) -> list[str]:
    """The kind of the final byte check's evidence ("N of M bytes differ"), without the numbers."""
    return [
        re.sub(r"\d+ of \d+ bytes differ.*", "bytes differ", e.split(": ", 1)[1])
        for e in r.evidence
        if "vs. a coherent machine" in e
    ]


@pytest.mark.asyncio(loop_scope="module")
async def test_000_file_on_the_default_topology_matches_the_python_seed(
    default_machine: Machine,
) -> None:
    py = {r.variant: r for r in await default_machine.run(SEED_000)}
    toml = {r.variant: r for r in await default_machine.run(load_file(FILE_000))}
    assert list(toml) == ["table", "shared-read", "both-write", "exclusive"]
    for name, r in toml.items():
        p = py[name]
        print(f"\n{name}: {r.outcome} at {r.detected_steps} ({r.timing['seconds']} s)")
        assert r.ok and p.ok, (name, r.outcome, r.evidence)
        assert r.outcome == p.outcome == ("pass" if r.expectation == "pass" else "detected")
        assert r.detected_steps == p.detected_steps
        assert _final_bytes(r) == _final_bytes(p)
        # The same machine state, steps and ledger: the evidence is the same, line for line.
        assert r.evidence == p.evidence
        assert r.counters == p.counters and r.note == p.note
        assert [(s.step, s.actor, s.order, s.owners) for s in r.steps] == [
            (s.step, s.actor, s.order, s.owners) for s in p.steps
        ]
    assert {4, 11} <= set(toml["table"].detected_steps)
    assert toml["both-write"].detected_steps[0] == 8
    assert _final_bytes(toml["table"]) == [
        "the buffer after the table vs. a coherent machine: bytes differ"
    ]
    assert toml["exclusive"].note.endswith("1, 2, 3, 5, 7, 9, 4, 6, 8, 10, 12, 11")


def test_dmalab_run_refuses_a_device_none_of_its_topologies_has(tmp_path: Path) -> None:
    """Before anything is built or booted (DMALAB_QEMU points nowhere: exit 3 if it got there)."""
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('exporter = "dma0"', 'exporter = "dma9"'))
    result = CliRunner().invoke(
        main,
        ["run", "--scenario-file", str(path), "-t", "default"],
        env={"DMALAB_QEMU": str(tmp_path / "no-qemu")},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"dmalab: error: {path}: buffers.buf.exporter: unknown device 'dma9'; "
        "the topology has dma0, dma1, dma2\n"
    )
