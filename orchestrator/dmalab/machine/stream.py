"""The asyncio machinery every request/reply client over one byte stream needs.

A `StreamClient` owns the stream, a reader task, and the table of requests still waiting for a
reply. When the stream ends (the peer went away, sent something that is not its protocol, or
`close()` was called) every pending request fails with the same error at once, and so does every
later one: nobody waits forever for a reply that cannot come.

Subclasses keep only their framing: `_read_reply()` reads one message and settles the future it
answers (found with `_take(key)` or `_take_oldest()`), `_connection_lost(exc)` says what error
the callers see. The agent client matches replies by sequence number, the qtest client by order.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Generic, Self, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class StreamClient(ABC, Generic[K, R]):
    """Reader task, pending replies (keyed by `K`, resolved to `R`), failure of everything
    pending when the stream ends, and close. Usable as `async with client:`."""

    #: The reader task's name (in asyncio's debug output and task dumps).
    READER_NAME: str | None = None

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        # Insertion-ordered: the oldest request first (qtest replies come in that order).
        self._pending: dict[K, asyncio.Future[R]] = {}
        self._lost: Exception | None = None
        self._reader_task: asyncio.Task[None] | None = None

    # -- to be provided by the framing -----------------------------------------------------------

    @abstractmethod
    async def _read_reply(self) -> None:
        """Read one message from `self._reader` and settle the pending future it answers."""

    @abstractmethod
    def _connection_lost(self, exc: Exception | None) -> Exception:
        """The error pending and later requests fail with: `exc` ended the reader, or, when it
        is None, `close()` did."""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading replies (idempotent); needs a running event loop."""
        if self._reader_task is None:
            self._reader_task = asyncio.create_task(self._read_replies(), name=self.READER_NAME)

    async def close(self) -> None:
        """Stop reading, close the stream and fail whatever is still pending."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._fail_pending(self._connection_lost(None))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def lost(self) -> Exception | None:
        """Why the stream ended (None while it is up)."""
        return self._lost

    # -- the pending table -----------------------------------------------------------------------

    def _expect(self, key: K) -> asyncio.Future[R]:
        """A future for the reply to the request sent (or about to be sent) under `key`."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        return future

    def _take(self, key: K) -> asyncio.Future[R] | None:
        """The pending future under `key`, no longer pending (None: nobody waits for it)."""
        return self._pending.pop(key, None)

    def _take_oldest(self) -> tuple[K, asyncio.Future[R]] | None:
        """The oldest pending request and its future, no longer pending."""
        if not self._pending:
            return None
        key = next(iter(self._pending))
        return key, self._pending.pop(key)

    def _fail_pending(self, error: Exception) -> None:
        if self._lost is None:
            self._lost = error
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def _read_replies(self) -> None:
        lost = self._connection_lost(None)
        try:
            while True:
                await self._read_reply()
        except Exception as exc:
            lost = self._connection_lost(exc)
        finally:
            # Whatever ended the reader (cancellation included), nobody may wait forever.
            self._fail_pending(lost)
