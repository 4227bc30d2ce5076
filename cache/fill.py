"""In-flight fills: one upstream body written to a blob while any number of clients read it.

Why it is built this way: collapsed forwarding must not pace clients by the slowest one, and
must not hold a body in memory per client. The upstream writer appends to the blob's temp file
(the page cache holds the hot part) and each reader keeps only an offset into that file, so a
reader's pace changes nothing for the writer or the other readers. Readers wait on futures that
the writer resolves on every append: woken by events, never by polling.

The :class:`Coalescer` lets concurrent misses for one key find the fetch already under way.
A pending fetch first announces its *head*: when the response turns out not to be storable the
waiters get ``None`` and go to the origin themselves (a private or uncacheable response is never
shared between clients).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

__all__ = ["Coalescer", "Fill", "FillAborted", "FillHead", "PendingFetch"]


class FillAborted(Exception):
    """The upstream transfer behind a fill failed; readers must cut their clients off."""


@dataclass(frozen=True, slots=True)
class FillHead:
    """The upstream response head a fill's readers send (hop-by-hop fields already removed)."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    length: int | None  # None: the origin did not say (chunked or close-delimited)
    request_time: float
    response_time: float
    vary: tuple[bytes, ...]
    vary_key: bytes


class Fill:
    """A growing body. The writer calls :meth:`grow`, :meth:`complete`, then :meth:`finish`
    (or :meth:`abort` at any point).

    *Complete* (every body byte landed, the length checked) comes before *done* (hashed,
    fsync'd, indexed) so readers end their responses as soon as the bytes are there: hashing
    and syncing a large blob take longer than sending it, and no client should wait for them.
    """

    def __init__(self, head: FillHead, path: str) -> None:
        self.head = head
        # Opened now, while the temp file surely exists: the writer renames it on commit, and a
        # reader that joins later duplicates this descriptor instead of reopening a path.
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = 0
        self.complete = False
        self.done = False
        self.error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def open_reader(self) -> int:
        """A private read descriptor on the body, or -1 once the fill has ended.

        Call it before any ``await`` after learning of the fill; after the end, readers serve
        the committed object from the store instead.
        """
        if self._fd is None:
            return -1
        return os.dup(self._fd)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def grow(self, new_size: int) -> None:
        self.size = new_size
        self._wake()

    def mark_complete(self) -> None:
        """Every body byte is in the file and the size is final; only the commit remains."""
        self.complete = True
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self.done = True
        self._close()
        self._wake()

    def abort(self, error: BaseException) -> None:
        self.error = error
        self._close()
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_past(self, offset: int) -> int:
        """Wait until more than ``offset`` bytes exist (or the fill ends); return the size.

        Raises :class:`FillAborted` once the upstream failed, even for bytes already written:
        a truncated body must not look complete to a client. A body that was complete stays
        servable if only its commit failed: its bytes are all there and correct.
        """
        while True:
            if self.error is not None and not self.complete:
                raise FillAborted(str(self.error))
            if self.size > offset or self.complete:
                return self.size
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class PendingFetch:
    """A miss under way: its head is announced once, then the fill (or ``None``)."""

    def __init__(self) -> None:
        self._head: asyncio.Future[Fill | None] = asyncio.get_running_loop().create_future()

    def publish(self, fill: Fill | None) -> None:
        if not self._head.done():
            self._head.set_result(fill)

    async def wait(self) -> Fill | None:
        # shield: one waiter being cancelled (its client left) must not cancel the others.
        return await asyncio.shield(self._head)


class Coalescer:
    """Key → the fetch under way for it."""

    def __init__(self) -> None:
        self._pending: dict[bytes, PendingFetch] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def join(self, key: bytes) -> PendingFetch | None:
        return self._pending.get(key)

    def start(self, key: bytes) -> PendingFetch:
        pending = PendingFetch()
        self._pending[key] = pending
        return pending

    def end(self, key: bytes, pending: PendingFetch) -> None:
        pending.publish(None)
        if self._pending.get(key) is pending:
            del self._pending[key]
