"""The agent protocol's declarations: every message round-trips through construct, the committed
C header is what the spec generates (and compiles), the driver vocabulary mirrored in the spec
matches the driver's UAPI header, and the agent's C pattern generator and CRC agree with Python.
No guest needed."""

from __future__ import annotations

import re
import subprocess
import zlib
from pathlib import Path
from typing import Any

import construct as c
import pytest
from click.testing import CliRunner

from dmalab.artifacts.cache import repo_root
from dmalab.cli import main
from dmalab.cli import spec as spec_cli
from dmalab.spec import agent as spec
from dmalab.spec import agent_cheader
from dmalab.spec import ncdma as hw

ROOT = repo_root()
AGENT_DIR = ROOT / "guest-tests" / "agent"
UAPI = ROOT / "guest-tests" / "include" / "ncdma-uapi.h"


def sample(con: c.Construct, salt: int = 1) -> Any:
    """A deterministic value for every field of a construct (enums and flags get a valid one,
    reserved fields their constant)."""
    while isinstance(con, c.Renamed):
        con = con.subcon
    if isinstance(con, c.Struct):
        return {sc.name: sample(sc, salt + i) for i, sc in enumerate(con.subcons) if sc.name}
    if isinstance(con, c.Const):  # a reserved field: only its constant builds
        return con.value
    if isinstance(con, c.Enum):
        return next(iter(con.encmapping))
    if isinstance(con, c.FlagsEnum):
        return {name: True for name in list(con.flags)[:1]}
    if isinstance(con, c.Bytes):
        return bytes((salt + i) & 0xFF for i in range(con.length))
    if isinstance(con, c.Array):
        return [sample(con.subcon, salt + i) for i in range(con.count)]
    size = con.sizeof()
    value = (0x0102030405060708 * salt) & ((1 << (8 * size - 1)) - 1)
    return value


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, c.EnumIntegerString):
        return str(value)
    return value


def _tail(tail: spec.Tail, salt: int) -> Any:
    if tail.kind is spec.TailKind.BYTES:
        return bytes(range(salt, salt + 37))
    if tail.kind is spec.TailKind.ITEMS:
        assert tail.item is not None
        return [sample(tail.item, salt + i) for i in range(3)]
    return b""


def _flags_equal(sent: Any, got: Any) -> bool:
    if isinstance(sent, dict) and isinstance(got, dict):
        return all(_flags_equal(v, got.get(k)) for k, v in sent.items())
    if isinstance(sent, list):
        return len(sent) == len(got) and all(
            _flags_equal(a, b) for a, b in zip(sent, got, strict=True)
        )
    return bool(sent == got) or str(sent) == str(got)


def test_header_layout() -> None:
    assert spec.Header.sizeof() == spec.HEADER_SIZE == 24
    raw = spec.encode_header(0x42, 7, 5, flags=2, status=16)
    assert raw[:4] == b"dmag"
    h = spec.Header.parse(raw)
    assert (h.op, h.seq, h.length, h.status, h.flags.ASYNC) == (0x42, 7, 5, 16, True)


def test_op_codes_and_names_are_unique() -> None:
    assert len({op.code for op in spec.OPS}) == len(spec.OPS)
    assert len({op.name for op in spec.OPS}) == len(spec.OPS)
    assert all(0 < op.code < 0x100 for op in spec.OPS)


@pytest.mark.parametrize("op", spec.OPS, ids=lambda op: op.name)
def test_request_and_reply_round_trip(op: spec.Op) -> None:
    fields = sample(op.request, 3)
    tail = _tail(op.request_tail, 5)
    message = spec.encode_request(op, 99, fields, tail, flags=0x2)
    header, got_op, got_fields, got_tail = spec.decode_request(message)
    assert got_op is op
    assert (header.seq, header.length) == (99, len(message) - spec.HEADER_SIZE)
    if op.request_tail.kind is spec.TailKind.ITEMS:
        fields[op.request_tail.count_field] = len(tail)
    assert _flags_equal(fields, _normalise(got_fields))
    if op.request_tail.kind is not spec.TailKind.NONE:
        assert _flags_equal(tail, _normalise(got_tail))

    fields = sample(op.reply, 11)
    tail = _tail(op.reply_tail, 13)
    reply = spec.encode_reply(op, 99, fields, tail)
    header = spec.Header.parse(reply[: spec.HEADER_SIZE])
    assert header.flags.REPLY and header.status == 0 and header.op == op.code
    got_fields, got_tail = spec.decode_reply(op, reply[spec.HEADER_SIZE :])
    if op.reply_tail.kind is spec.TailKind.ITEMS:
        fields[op.reply_tail.count_field] = len(tail)
    assert _flags_equal(fields, _normalise(got_fields))
    if op.reply_tail.kind is not spec.TailKind.NONE:
        assert _flags_equal(tail, _normalise(got_tail))


def test_error_reply_carries_errno_and_message() -> None:
    raw = spec.encode_error(0x21, 5, 16, "buffer 3 is in use")
    header = spec.Header.parse(raw[: spec.HEADER_SIZE])
    assert (header.status, header.seq, header.flags.REPLY) == (16, 5, True)
    assert raw[spec.HEADER_SIZE :] == b"buffer 3 is in use"
    assert spec.errno_name(16) == "EBUSY"
    assert spec.errno_name(9999) == "E9999"


def test_malformed_payloads_are_rejected() -> None:
    op = spec.OP_BY_NAME["SUBMIT"]
    good = spec.encode_request(op, 1, {"dev": 0}, [sample(spec.Desc)])
    with pytest.raises(spec.ProtocolError):
        spec.decode_request(good[:-1])
    with pytest.raises(spec.ProtocolError):
        spec.decode_payload(spec.BufRequest, spec.NO_TAIL, b"\0" * 9)
    with pytest.raises(spec.ProtocolError):
        spec.decode_request(spec.encode_header(0xEE, 1, 0))
    with pytest.raises(c.ConstructError):  # a reserved field set
        spec.decode_payload(spec.BufRequest, spec.NO_TAIL, bytes([1, 0, 0, 0, 1, 0, 0, 0]))
    with pytest.raises(c.ConstructError):
        spec.BufRequest.build({"buf": 1, "reserved": 1})


def test_pattern_known_answer() -> None:
    # state = 1 ^ MIX, one xorshift64 (13, 7, 17) step, little-endian.
    x = 1 ^ spec.PATTERN_MIX
    x ^= (x << 13) & (2**64 - 1)
    x ^= x >> 7
    x ^= (x << 17) & (2**64 - 1)
    assert spec.pattern(1, 8) == x.to_bytes(8, "little")
    assert spec.pattern(1, 13) == spec.pattern(1, 16)[:13]
    assert spec.pattern(1, 64) != spec.pattern(2, 64)
    assert spec.pattern_state(spec.PATTERN_MIX) == spec.PATTERN_MIX  # never the zero state


# ---------------------------------------------------------------------------------------------
# The generated C header


def test_committed_agent_header_matches_the_spec() -> None:
    path = AGENT_DIR / agent_cheader.HEADER_NAME
    assert path.read_text() == agent_cheader.generate(), (
        f"{path} is stale: run `dmalab spec header`"
    )


def test_agent_header_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / agent_cheader.HEADER_NAME
    monkeypatch.setattr(spec_cli, "agent_header_path", lambda: target)
    runner = CliRunner()
    assert runner.invoke(main, ["spec", "header", "--check"]).exit_code == 1
    assert runner.invoke(main, ["spec", "header"]).exit_code == 0
    assert target.read_text() == agent_cheader.generate()
    assert runner.invoke(main, ["spec", "header", "--check"]).exit_code == 0
    target.write_text(target.read_text().replace("AGENT_", "OLD_", 1))
    stale = runner.invoke(main, ["spec", "header", "--check"])
    assert stale.exit_code == 1 and "differs" in stale.stderr


def _compile_and_run(tmp_path: Path, source: str, *extra: str) -> str:
    src = tmp_path / "probe.c"
    src.write_text(source)
    exe = tmp_path / "probe"
    proc = subprocess.run(
        [
            "gcc",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            str(AGENT_DIR),
            "-I",
            str(UAPI.parent),
            *extra,
            "-o",
            str(exe),
            str(src),
            "-pthread",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def test_structs_have_the_spec_layout(tmp_path: Path) -> None:
    """The C structs (generated and UAPI) have the sizes and offsets construct computes."""
    checks: list[tuple[str, str, int]] = []
    names = agent_cheader.struct_names()
    for _attr, value in vars(spec).items():
        if id(value) in names:
            checks.append((f"struct {names[id(value)]}", "", value.sizeof()))
    # The UAPI structs the agent copies wholesale into replies.
    checks += [
        ("struct ncdma_info", "", spec.DeviceInfoReply.sizeof()),
        ("struct ncdma_stats", "", spec.StatsReply.sizeof()),
        ("struct ncdma_udesc", "", spec.Desc.sizeof()),
        ("struct ncdma_result", "", spec.Result.sizeof()),
        ("struct ncdma_seg", "", spec.Seg.sizeof()),
    ]
    lines = [f'printf("%zu\\n", sizeof({name}));' for name, _, _ in checks]
    out = _compile_and_run(
        tmp_path,
        '#include <stdio.h>\n#include "agent-proto.h"\n#include "ncdma-uapi.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n",
    )
    sizes = [int(x) for x in out.split()]
    assert sizes == [size for _, _, size in checks]


def _defines(text: str, prefix: str) -> dict[str, int]:
    found = {}
    define = rf"^#define {prefix}(\w+)\s+\(?(0x[0-9a-fA-F]+|\d+)(?:ull|u)?(?:\s*<<\s*(\d+))?"
    for m in re.finditer(define, text, re.M):
        value = int(m.group(2), 0)
        if m.group(3):
            value <<= int(m.group(3))
        found[m.group(1)] = value
    return found


def _enum(con: c.Enum) -> dict[str, int]:
    return {str(k): int(v) for k, v in con.encmapping.items()}


def test_spec_mirrors_the_driver_uapi() -> None:
    text = UAPI.read_text()
    flags = {
        k: v
        for k, v in _defines(text, "NCDMA_BUF_").items()
        if k not in ("FLAGS_VALID",) and not k.startswith("STATE_")
    }
    assert flags == dict(spec.BufFlags.flags)
    assert {
        k: v
        for k, v in _defines(text, "NCDMA_ATT_").items()
        if k != "FLAGS_VALID" and not k.startswith("STATE_")
    } == dict(spec.AttFlags.flags)
    assert {k: v for k, v in _defines(text, "NCDMA_FAULT_").items()} == dict(spec.Faults.flags)
    assert _defines(text, "NCDMA_ATT_STATE_") == dict(spec.AttState.flags)
    assert _defines(text, "NCDMA_BUF_STATE_") == dict(spec.BufState.flags)
    assert _defines(text, "NCDMA_DIR_") == _enum(spec.Direction)
    assert _defines(text, "NCDMA_REASON_") == _enum(spec.CookieReason)
    assert _defines(text, "NCDMA_UOP_") == _enum(hw.Opcode)
    assert _defines(text, "NCDMA_UDESC_") == dict(spec.UdescFlags.flags)
    assert _defines(text, "NCDMA_DOMAIN_") == _enum(spec.IommuDomain)
    assert _defines(text, "NCDMA_RESULT_")["RING_ERROR"] == spec.RESULT_RING_ERROR
    assert _defines(text, "NCDMA_MAX_")["BATCH"] == spec.MAX_BATCH
    assert _defines(text, "NCDMA_COOKIE_")["DRIVER"] == spec.COOKIE_DRIVER
    assert _defines(text, "NCDMA_DEV_")["COUNTERS_MAX"] == spec.DEVICE_COUNTERS_MAX
    assert sum(spec.Faults.flags.values()) == _defines(text, "NCDMA_")["FAULTS_VALID"]
    stats = re.search(r"struct ncdma_drv_stats \{(.*?)\};", text, re.S)
    assert stats is not None
    fields = re.findall(r"__u64 (\w+)(?:\[(\d+)\])?;", stats.group(1))
    names = tuple(name for name, count in fields if not count)
    assert names == spec.DRIVER_STAT_NAMES
    assert len(names) + sum(int(n) for _, n in fields if n) == spec.DRIVER_STATS_SLOTS


def test_agent_pattern_and_crc_match_python(tmp_path: Path) -> None:
    """The agent's own generator and CRC (compiled from agent.c) produce what the host predicts."""
    harness = (
        f'#define main agent_main\n#include "{AGENT_DIR / "agent.c"}"\n#undef main\n'
        "int main(void) {\n"
        "  static const uint64_t seeds[] = { 0, 1, 42, 0x9e3779b97f4a7c15ull, ~0ull };\n"
        "  static const size_t lens[] = { 1, 7, 8, 100, 4096 };\n"
        "  uint8_t buf[4096];\n"
        "  crc32_init();\n"
        "  for (unsigned i = 0; i < 5; i++) {\n"
        "    uint64_t state = pattern_state(seeds[i]);\n"
        "    pattern_fill(buf, lens[i], &state);\n"
        '    for (size_t j = 0; j < lens[i]; j++) printf("%02x", buf[j]);\n'
        '    printf(" %08x\\n", crc32_update(0, buf, lens[i]));\n'
        "  }\n  return 0;\n}\n"
    )
    out = _compile_and_run(tmp_path, harness, "-Wno-unused-function")
    seeds = (0, 1, 42, spec.PATTERN_MIX, 2**64 - 1)
    lens = (1, 7, 8, 100, 4096)
    for line, seed, length in zip(out.splitlines(), seeds, lens, strict=True):
        data, crc = line.split()
        assert bytes.fromhex(data) == spec.pattern(seed, length)
        assert int(crc, 16) == zlib.crc32(spec.pattern(seed, length))
