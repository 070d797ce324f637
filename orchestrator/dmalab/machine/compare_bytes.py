"""Byte-exact comparison of two buffers, with a diff a person can read.

`compare(expected, actual)` returns a `Difference` (or None when the bytes are equal): the first
differing offset, how many bytes differ and in how many runs, and a hexdump of 16-byte rows around
the first runs, expected above actual, with `^^` under each differing byte. `assert_same` raises
`BytesDiffer` (a `CheckFailed`) carrying that text.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmalab.errors import CheckFailed

Buffer = bytes | bytearray | memoryview

ROW = 16


class BytesDiffer(CheckFailed):
    """Two buffers that had to be equal are not; `difference` has the details."""

    def __init__(self, what: str, difference: Difference) -> None:
        self.difference = difference
        super().__init__(f"{what}: {difference.summary()}\n{difference.render()}")


@dataclass(frozen=True)
class Difference:
    expected_len: int
    actual_len: int
    first: int  # first differing offset (or the shorter length, when only the lengths differ)
    differing: int  # differing bytes in the common length
    runs: list[tuple[int, int]]  # (offset, length) of maximal differing runs
    _expected: bytes
    _actual: bytes
    base: int = 0  # address of offset 0, for display

    def summary(self) -> str:
        text = (
            f"{self.differing} of {min(self.expected_len, self.actual_len)} bytes differ in "
            f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}, first at offset "
            f"{self.first:#x}"
        )
        if self.base:
            text += f" (address {self.base + self.first:#x})"
        if self.expected_len != self.actual_len:
            text += f"; lengths differ: expected {self.expected_len}, actual {self.actual_len}"
        return text

    def render(self, *, max_runs: int = 4, context_rows: int = 1) -> str:
        """Hexdump rows around the first `max_runs` runs: `-` expected, `+` actual, `^^` marks."""
        rows: list[int] = []
        common = min(self.expected_len, self.actual_len)
        for offset, length in self.runs[:max_runs]:
            first_row = max(0, offset // ROW - context_rows)
            last_row = min((offset + length - 1) // ROW + context_rows, (common - 1) // ROW)
            for row in range(first_row, last_row + 1):
                if not rows or rows[-1] < row:
                    rows.append(row)
        if not rows and self.expected_len != self.actual_len:
            rows = [max(0, common // ROW - 1)]
        lines: list[str] = []
        previous = None
        for row in rows:
            if previous is not None and row > previous + 1:
                lines.append("  ...")
            previous = row
            start = row * ROW
            exp = self._expected[start : start + ROW]
            act = self._actual[start : start + ROW]
            address = self.base + start
            lines.append(f"- {address:#014x}  {_hex(exp)}  |{_ascii(exp)}|")
            lines.append(f"+ {address:#014x}  {_hex(act)}  |{_ascii(act)}|")
            marks = "".join(
                ("^^" if i >= len(exp) or i >= len(act) or exp[i] != act[i] else "  ")
                + (" " if i != 7 else "  ")
                for i in range(max(len(exp), len(act)))
            ).rstrip()
            if marks:
                lines.append(" " * 18 + marks)
        if len(self.runs) > max_runs:
            lines.append(f"  ... and {len(self.runs) - max_runs} more differing runs")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.summary()}\n{self.render()}"


def _hex(row: bytes) -> str:
    cells = [f"{b:02x}" for b in row] + ["  "] * (ROW - len(row))
    return " ".join(cells[:8]) + "  " + " ".join(cells[8:])


def _ascii(row: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in row).ljust(ROW)


def _runs(expected: bytes, actual: bytes, length: int) -> tuple[int, list[tuple[int, int]]]:
    """Differing byte count and runs in [0, length), fast where the bytes are equal."""
    runs: list[tuple[int, int]] = []
    differing = 0
    chunk = 4096
    offset = 0
    while offset < length:
        end = min(offset + chunk, length)
        if expected[offset:end] != actual[offset:end]:
            for i in range(offset, end):
                if expected[i] != actual[i]:
                    differing += 1
                    if runs and runs[-1][0] + runs[-1][1] == i:
                        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    else:
                        runs.append((i, 1))
        offset = end
    return differing, runs


def _equal(a: memoryview, b: memoryview, chunk: int = 256 << 10) -> bool:
    """memoryview == memoryview walks element by element; bytes comparison is a memcmp.

    Chunks stay below glibc's mmap threshold: 1 MiB copies were each a fresh mmap whose pages
    faulted in, which made a 64 MiB comparison 7x slower (72 ms against 10.6 ms here)."""
    return all(
        bytes(a[off : off + chunk]) == bytes(b[off : off + chunk])
        for off in range(0, len(a), chunk)
    )


def compare(expected: Buffer, actual: Buffer, *, base: int = 0) -> Difference | None:
    """None if the two are byte-for-byte equal, else what differs. `base` only labels rows."""
    exp = memoryview(expected).cast("B")
    act = memoryview(actual).cast("B")
    if len(exp) == len(act) and _equal(exp, act):
        return None
    exp_b, act_b = bytes(exp), bytes(act)
    common = min(len(exp_b), len(act_b))
    differing, runs = _runs(exp_b, act_b, common)
    first = runs[0][0] if runs else common
    return Difference(len(exp_b), len(act_b), first, differing, runs, exp_b, act_b, base)


def assert_same(expected: Buffer, actual: Buffer, what: str = "bytes", *, base: int = 0) -> None:
    """Raise `BytesDiffer` unless the two are byte-for-byte equal."""
    difference = compare(expected, actual, base=base)
    if difference is not None:
        raise BytesDiffer(what, difference)
