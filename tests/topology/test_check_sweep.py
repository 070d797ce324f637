"""`dmalab topology check` accepts exactly what boots: sweeps of generated topologies, a class
each, that QEMU, the image builder or the run would refuse later.

Every refused case must end with exit 2, no traceback, and exactly one stderr line starting
`dmalab: error:` that names the file and the field. The accepted cases of a class (each bound
itself, the largest machine that fits) must pass the check; tests/device/test_properties.py
holds the device properties' bounds to what ncdma's realize accepts, and
tests/device/test_topology_limits.py the slot and id limits to QEMU itself. The cases run in this
process through click's test runner; the first of each class runs again as a real process.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

import kernels
from dmalab.cli import main
from dmalab.errors import EXIT_BAD_INPUT
from dmalab.machine import topology as t
from dmalab.machine import topology_schema
from dmalab.spec import ncdma as spec

INT64 = (1 << 63) - 1
#: A device that takes little memory, for machines with many.
SMALL = {"cache_size": 4096, "cache_ways": 1, "xlog_size": 1, "xlog_segs": 1}
IOMMU = '[iommu]\nkind = "intel-iommu"\n'


@dataclass
class Case:
    label: str
    text: str  # the topology file
    field: str  # what the error must name; "" for a case that must pass
    file: str = "t.toml"


def toml_str(value: str) -> str:
    """A TOML basic string holding exactly `value` (any character, escaped where needed)."""
    plain = lambda c: " " <= c <= "~" and c not in '"\\'  # noqa: E731
    return '"' + "".join(c if plain(c) else f"\\U{ord(c):08x}" for c in value) + '"'


def device(**props: object) -> str:
    """A [[device]] table; props with `_` for `-`."""
    lines = ["[[device]]"]
    for key, value in {"id": "dma0", **props}.items():
        shown = toml_str(value) if isinstance(value, str) else str(value).lower()
        lines.append(f"{key.replace('_', '-')} = {shown}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The classes

BAD_IDS = [
    "dmä0", "d\u00e9v", "\u30c0", "dma\u200b0", "dma0\u00a0",  # not ASCII
    "a/b", "/dma0", "dma0/", "..", "../dma0", "a..b", ".",  # the file system's
    "0dma", "9x", "1", "-dma0", "--x", "_x",  # leading digits, dashes
    "a,b", "a=b", "id=x", "a.b", "a b", "a:b", "a;b", "a\tb", "dma0,bus=pcie.0",  # QEMU's syntax
    "", "a" * 32, "x" * 200,  # empty, too long
]  # fmt: skip


def id_cases() -> Iterator[Case]:
    for n, bad in enumerate(BAD_IDS):
        yield Case(f"name {n}", f"name = {toml_str(bad)}\n", "name")
        yield Case(f"bridge {n}", f"[[bridge]]\nid = {toml_str(bad)}\n", "bridge[0].id")
        yield Case(f"device {n}", device() + device(id=bad), "device[1].id")
    for stem in ("9lives", "-x", "a b", "dmä", "a.b", "a,b", "x" * 40):
        yield Case(f"file {stem!r}", device(), "name", file=f"{stem}.toml")
    # The ids dmalab gives its own devices and root ports.
    yield Case("vser", device(id="vser"), "device[0].id")
    yield Case("pxb", IOMMU + device(id="pxb-bypass"), "device[0].id")
    yield Case("root port", device() + device(id="rp-dma0"), "device[1].id")
    yield Case("bridge port", '[[bridge]]\nid = "b"\n' + device(id="rp-b"), "device[0].id")
    yield Case("bridge's", device(id="rp-x") + '[[bridge]]\nid = "x"\n', "device[0].id")
    # What must pass: the longest id, every character class.
    yield Case("longest", device(id="a" * 31), "")
    yield Case("every class", f'name = "A-b_9"\n{device(id="Z-9_a")}', "")


def memory_cases() -> Iterator[Case]:
    seg = t.SEGMENT_BYTES
    for memory in (128, 129, 160, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384):
        budget = memory << 20
        header = f"[machine]\nmemory = {memory}\n"
        logs = {"cache_size": 4096, "cache_ways": 1, "vlog_size": 1, "xlog_size": 4096}
        fits = (budget - 4096 * 2 - 120 - 4096 * 72) // (4096 * seg)
        # One device's transaction log: at the budget, just past, far past.
        if fits <= spec.PROPERTY["xlog-segs"].hi:
            yield Case(f"{memory} logs at", header + device(**logs, xlog_segs=fits), "")
            past = device(**logs, xlog_segs=fits + 1)
            yield Case(f"{memory} logs past", header + past, "device[0].xlog-segs")
        far = device(xlog_size=4096, xlog_segs=65536)
        if 4096 * 65536 * seg > budget:
            yield Case(f"{memory} logs far", header + far, "device[0].xlog-segs")
        # The sum: caches of 64 MiB (twice that in QEMU) on more devices than fit.
        cache = {"cache_size": 64 << 20, "xlog_size": 1, "xlog_segs": 1}
        count = min(budget // ((128 << 20) + 4096), 26)
        fitting = "".join(device(id=f"d{i}", **cache) for i in range(count))
        if count:
            yield Case(f"{memory} caches at", header + fitting, "")
        if count < 26:
            over = fitting + device(id="over", **cache)
            yield Case(f"{memory} caches past", header + over, f"device[{count}].cache-size")
        # Many devices, each with logs, that only together exceed the budget.
        each = {"cache_size": 4096, "cache_ways": 1, "xlog_size": 4096}
        segs = min(fits // 3 + 1, spec.PROPERTY["xlog-segs"].hi)
        many = "".join(device(id=f"d{i}", **each, xlog_segs=segs) for i in range(3))
        if 3 * 4096 * segs * seg > budget:
            yield Case(f"{memory} three logs", header + many, "device[2].xlog-segs")


def _kernel_files(root: Path) -> dict[str, Path]:
    """Files and directories of every kind a kernel path may wrongly name."""
    (root / "dir").mkdir(exist_ok=True)
    (root / "empty-dir").mkdir(exist_ok=True)
    (root / "file").write_text("not a kernel\n")
    (root / "empty").write_bytes(b"")
    (root / "elf").write_bytes(kernels.vmlinux())
    (root / "Image").write_bytes(kernels.arm64_image())
    (root / "Image.gz").write_bytes(gzip.compress(kernels.arm64_image()))
    (root / "no-pvh").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(0x300))
    (root / "no-version").write_bytes(kernels.vmlinux().split(b"Linux")[0])
    (root / "bad-elf").write_bytes(b"\x7fELF" + bytes(10))
    (root / "bad-gzip").write_bytes(b"\x1f\x8b" + bytes(100))
    bz = bytearray(0x300)
    bz[0x202:0x206] = b"HdrS"
    (root / "bad-bzimage").write_bytes(bytes(bz))
    for release in (kernels.RELEASE, "6.0.0-other"):
        (root / release).mkdir(exist_ok=True)
        (root / release / "modules.builtin").write_text("kernel/foo.ko\n")
    (root / "no-modules").mkdir(exist_ok=True)
    (root / "no-modules" / "README").write_text("x\n")
    for name, target in (("dangling", "nowhere"), ("loop", "loop"), ("to-dir", "dir")):
        if not (root / name).is_symlink():
            (root / name).symlink_to(target)
    if not (root / "fifo").exists():
        os.mkfifo(root / "fifo")
    return {p.name: p for p in root.iterdir()}


def kernel_cases(root: Path) -> Iterator[Case]:
    files = _kernel_files(root)
    bad_kernels = [
        "nope", str(root / "nope"), "dir", "empty-dir", "to-dir", "fifo", "dangling", "loop",
        "file/below", "file", "empty", "Image", "modules", "", "x" * 300, "a\\u0000b",
        "~no-such-user-here/vmlinuz", "../nope/bzImage", "/", "no-pvh", "no-version",
        "bad-elf", "bad-bzimage", "Image.gz",
    ]  # fmt: skip
    for n, kernel in enumerate(bad_kernels):
        yield Case(f"kernel {n}", f'[kernel]\nkernel = "{kernel}"\n', "kernel.kernel")
    arm = '[machine]\narch = "aarch64"\n'
    for n, kernel in enumerate(("elf", "file", "empty", "dir", "fifo", "bad-gzip", "no-version")):
        yield Case(f"arm64 kernel {n}", f'{arm}[kernel]\nkernel = "{kernel}"\n', "kernel.kernel")
    bad_modules = ["nope", "file", "empty-dir", "no-modules", "fifo", "dangling", "loop", "elf",
                   "file/below", "", "a\\u0000b", "6.0.0-other"]  # fmt: skip
    for n, modules in enumerate(bad_modules):
        text = f'[kernel]\nkernel = "elf"\nmodules = "{modules}"\n'
        yield Case(f"modules {n}", text, "kernel.modules")
    yield Case("modules alone", f'[kernel]\nmodules = "{kernels.RELEASE}"\n', "kernel.modules")
    yield Case("initramfs", '[kernel]\nkernel = "elf"\ninitramfs = "elf"\n', "kernel.initramfs")
    bad_args = ['"a b"', '""', '"a\\"b"', '"d\u00e9j\u00e0"', '"a\\tb"', '"a\\u0007"', "1", "[1]"]
    for n, arg in enumerate(bad_args):
        yield Case(f"args {n}", f"[kernel]\nargs = [{arg}]\n", "kernel.args[0]")
    long = ", ".join([f'"{"x" * 99}"'] * 11)
    yield Case("args too long", f"[kernel]\nargs = [{long}]\n", "kernel.args")
    good = f'kernel = "elf"\nmodules = "{kernels.RELEASE}"\nargs = ["a=1"]\n'
    yield Case("good", f"[kernel]\n{good}", "")
    yield Case("good arm64", f'{arm}[kernel]\nkernel = "Image"\n', "")
    yield Case("good arm64 gzip", f'{arm}[kernel]\nkernel = "Image.gz"\n', "")
    assert files


def _bounds(lo: int, hi: int) -> dict[str, int]:
    """A field's values: at each bound, just past and far past them."""
    values = {"lo": lo, "hi": hi, "lo-1": lo - 1, "hi+1": hi + 1, "hi*16": hi * 16 + 1}
    values.update({"int64": INT64, "-int64": -INT64 - 1, "-1": -1 if lo >= 0 else lo - 1000})
    return values


def numeric_cases() -> Iterator[Case]:
    fields: list[tuple[str, str, int, int, str]] = [
        ("machine", "memory", *t.MEMORY_MIB, ""),
        ("machine", "smp", *t.SMP, ""),
        ("iommu", "aw-bits", *t.AW_BITS, 'kind = "intel-iommu"\n'),
    ]
    for table, key, lo, hi, extra in fields:
        for label, value in _bounds(lo, hi).items():
            ok = label in ("lo", "hi")
            text = f"[{table}]\n{extra}{key} = {value}\n"
            yield Case(f"{key} {label}", text, "" if ok else f"{table}.{key}")
        for wrong in ('"64"', "1.5", "true", "[1]"):
            yield Case(f"{key} {wrong}", f"[{table}]\n{extra}{key} = {wrong}\n", f"{table}.{key}")
    yield Case("aw-bits 40", f"{IOMMU}aw-bits = 40\n", "iommu.aw-bits")
    for p in spec.PROPERTIES:
        if p.boolean:
            for wrong in ("1", "0", '"on"', '"true"'):
                text = f'[[device]]\nid = "a"\n{p.name} = {wrong}\n'
                yield Case(f"{p.name} {wrong}", text, f"device[0].{p.name}")
            continue
        for label, value in _bounds(p.lo, p.hi).items():
            ok = label in ("lo", "hi")
            props = {p.field: value}
            if p.name == "cache-size" and label == "lo":
                props.update(line_size=16, cache_ways=1, cache_size=16)  # the least that fits
            yield Case(f"{p.name} {label}", device(**props), "" if ok else f"device[0].{p.name}")
        for wrong in ('"64"', "64.0", "true", "[64]", "{ a = 1 }"):
            text = f'[[device]]\nid = "a"\n{p.name} = {wrong}\n'
            yield Case(f"{p.name} {wrong}", text, f"device[0].{p.name}")


def slot_cases() -> Iterator[Case]:
    for arch, slots in t.ROOT_SLOTS.items():
        machine = f'[machine]\narch = "{arch}"\n'
        free = slots - 1  # dmalab's virtio-serial
        for bus in ("root-port", "root"):
            at = "".join(device(id=f"d{i}", bus=bus, **SMALL) for i in range(free))
            yield Case(f"{arch} {bus} at", machine + at, "")
            for extra in (1, 2, 5, 34, 226, 300):  # past, far past, past the 255 chassis
                more = "".join(device(id=f"x{i}", bus=bus, **SMALL) for i in range(extra))
                yield Case(f"{arch} {bus} +{extra}", machine + at + more, f"device[{free}].bus")
        bridges = "".join(f'[[bridge]]\nid = "b{i}"\nkind = "multifunction"\n' for i in range(free))
        yield Case(f"{arch} bridges past", machine + bridges + device(id="x"), "device[0].bus")
        nine = '[[bridge]]\nid = "m"\nkind = "multifunction"\n' + "".join(
            device(id=f"d{i}", bus="m") for i in range(9)
        )
        yield Case(f"{arch} nine functions", machine + nine, "bridge[0]")
    pci = '[[bridge]]\nid = "b"\n'
    small = SMALL
    yield Case(
        "bridge at", pci + "".join(device(id=f"d{i}", bus="b", **small) for i in range(32)), ""
    )
    over = pci + "".join(device(id=f"d{i}", bus="b", **small) for i in range(33))
    yield Case("bridge past", over, "bridge[0]")
    viommu = '[iommu]\nkind = "virtio-iommu"\n'
    full = "".join(device(id=f"d{i}") for i in range(t.ROOT_SLOTS["x86_64"] - 2))
    yield Case("virtio-iommu at", viommu + full, "")
    yield Case("virtio-iommu past", viommu + full + device(id="x"), f"device[{28}].bus")


# ---------------------------------------------------------------------------------------------
# Running them


def _problems(case: Case, path: Path, code: int, stderr: str, escaped: object) -> list[str]:
    errors = [line for line in stderr.splitlines() if line.startswith("dmalab: error:")]
    if "Traceback" in stderr or escaped is not None:
        return [f"a traceback ({escaped!r})"]
    if not case.field:
        return [] if code == 0 else [f"refused: {stderr.strip()}"]
    out = []
    if code != EXIT_BAD_INPUT:
        out.append(f"exit {code}")
    if len(errors) != 1 or len(stderr.strip().splitlines()) != 1:
        out.append(f"{len(errors)} error lines")
    elif not errors[0].startswith(f"dmalab: error: {path}: {case.field}"):
        out.append(f"does not name {path}: {case.field}")
    return out


def sweep(cases: list[Case], root: Path, *, beside: bool = False) -> None:
    """Check every case's file (each in a folder of its own, or all in `root` when `beside`:
    next to the files they name) and fail listing every case that misbehaved."""
    bad = []
    first_refused = next(i for i, c in enumerate(cases) if c.field)
    for n, case in enumerate(cases):
        path = root / f"case-{n}.toml" if beside else root / f"c{n}" / case.file
        path.parent.mkdir(exist_ok=True)
        path.write_text(case.text, encoding="utf-8")
        result = CliRunner().invoke(main, ["topology", "check", str(path)])
        escaped = result.exception
        escaped = None if isinstance(escaped, (SystemExit, type(None))) else escaped
        problems = _problems(case, path, result.exit_code, result.stderr, escaped)
        if n in (0, first_refused):
            proc = subprocess.run(
                [sys.executable, "-m", "dmalab", "topology", "check", str(path)],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            problems += _problems(case, path, proc.returncode, proc.stderr, None)
        if problems:
            bad.append(f"{case.label}: {', '.join(problems)}\n    {result.stderr.strip()[:300]}")
    assert not bad, f"{len(bad)} of {len(cases)} cases:\n" + "\n".join(bad)


#: The classes of the sweep: a function from the folder the cases may use to its cases.
CLASSES = {
    "ids": lambda root: list(id_cases()),
    "kernel files": lambda root: list(kernel_cases(root)),
    "memory": lambda root: list(memory_cases()),
    "numeric": lambda root: list(numeric_cases()),
    "slots": lambda root: list(slot_cases()),
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_check_refuses_what_would_not_boot(name: str, tmp_path: Path) -> None:
    cases = CLASSES[name](tmp_path)
    assert len([c for c in cases if c.field]) >= 30, len(cases)
    sweep(cases, tmp_path, beside=name == "kernel files")


def test_the_schema_refuses_the_same_single_fields(tmp_path: Path) -> None:
    """Cases about one field's type, range or spelling: the published schema (docs/schemas.md)
    and the check say the same of each. JSON has one kind of number, so a TOML float without a
    fraction (64.0) is an integer to the schema; dmalab refuses it."""
    validator = jsonschema.Draft202012Validator(topology_schema.schema())
    spelled = re.compile(r"(name|bridge|device) \d+")
    cases = [c for c in numeric_cases() if not c.label.endswith(".0")]
    cases += [c for c in id_cases() if spelled.fullmatch(c.label)]
    disagree = [
        c.label for c in cases if validator.is_valid(tomllib.loads(c.text)) != (not c.field)
    ]
    assert not disagree and len(cases) > 200, disagree
