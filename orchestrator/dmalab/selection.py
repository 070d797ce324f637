"""Choosing part of a run list: `-k EXPR` (pytest's keyword expressions) and `--shard I/N`.

Both work on a list already expanded in its canonical order, and both keep that order, so a
selected or sharded run is the same run as the whole one, with items left out.

A shard is a contiguous slice: shard I of N takes items `(I-1)*L//N` up to `I*L//N` of the L
items. The N slices are disjoint, cover the list exactly, differ in size by at most one and
depend only on the list (not on -j, the seed or the machine), so N machines or CI jobs that run
`--shard 1/N` ... `--shard N/N` together run the list once. Slices rather than every N-th item,
because the list is ordered by topology: a slice boots as few machines as possible.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from dmalab.errors import BadInput

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> Shard:
        """`I/N` with 1 <= I <= N; anything else is a BadInput naming `option`."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise BadInput(f"{option}: expected I/N such as 1/4, not {text!r}")
        index, count = int(m[1]), int(m[2])
        if count < 1 or not 1 <= index <= count:
            raise BadInput(f"{option}: {text}: I must be between 1 and N, and N at least 1")
        return cls(index, count)

    def bounds(self, length: int) -> tuple[int, int]:
        """The slice [start, stop) of a list of `length` items this shard takes."""
        return (self.index - 1) * length // self.count, self.index * length // self.count

    def take(self, items: Sequence[T]) -> list[T]:
        start, stop = self.bounds(len(items))
        return list(items[start:stop])


# ---------------------------------------------------------------------------------------------
# -k EXPR, as pytest reads it:
#   expr: and_expr ('or' and_expr)*    and_expr: not_expr ('and' not_expr)*
#   not_expr: 'not' not_expr | '(' expr ')' | ident
# An identifier matches an item when it is a case-insensitive substring of one of its names.

_TOKEN = re.compile(r"\s*(?:(\()|(\))|([\w:+\-.\[\]\\/]+))")
_WORDS = ("and", "or", "not")
Matcher = Callable[[Sequence[str]], bool]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if not m:
                self.fail(f"unexpected character {text[pos:].lstrip()[:1]!r}")
            self.tokens.append(m[1] or m[2] or m[3])
            pos = m.end()
        self.pos = 0

    def fail(self, why: str) -> NoReturn:
        raise BadInput(f"-k: {self.text!r}: {why}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> str:
        token = self.peek()
        if token is None:
            self.fail("unexpected end of the expression")
        self.pos += 1
        return token

    def expr(self) -> Matcher:
        return self._joined("or", self.and_expr, any)

    def and_expr(self) -> Matcher:
        return self._joined("and", self.not_expr, all)

    def _joined(
        self, word: str, operand: Callable[[], Matcher], combine: Callable[[Iterable[bool]], bool]
    ) -> Matcher:
        """operand (word operand)*: the operands' matches combined by `combine` (any, all)."""
        parts = [operand()]
        while self.peek() == word:
            self.pos += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else lambda names: combine(p(names) for p in parts)

    def not_expr(self) -> Matcher:
        token = self.next()
        if token == "not":
            inner = self.not_expr()
            return lambda names: not inner(names)
        if token == "(":
            inner = self.expr()
            if self.next() != ")":
                self.fail("expected ')'")
            return inner
        if token == ")" or token in _WORDS:
            self.fail(f"unexpected {token!r}")
        word = token.lower()
        return lambda names: any(word in name.lower() for name in names)


def keyword_matcher(expr: str) -> Matcher:
    """A function telling whether an item, given as its names, matches `expr` (`-k`)."""
    parser = _Parser(expr)
    if not parser.tokens:
        return lambda names: True
    match = parser.expr()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()!r}")
    return match


def select(
    items: Iterable[T],
    names: Callable[[T], Sequence[str]],
    *,
    keyword: str | None = None,
    shard: Shard | None = None,
) -> list[T]:
    """`items` that match `keyword` (all without one), then `shard`'s part of those."""
    chosen = list(items)
    if keyword is not None:
        match = keyword_matcher(keyword)
        chosen = [item for item in chosen if match(names(item))]
    return shard.take(chosen) if shard is not None else chosen
