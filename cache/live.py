"""Live fan-out, sans-IO: one writer, any number of readers, memory bounded by a ring of blocks.

Why it is built this way (brief §5, "live HTTP fan-out"):

- **The slowest reader must not pace the writer** (Squid's read-ahead gap couples them). The
  upstream bytes go into a FIFO of fixed-size blocks at upstream speed; each reader keeps only
  an absolute offset (:class:`Cursor`) into the stream. A reader's pace changes nothing for
  the writer or the other readers.
- **Memory is bounded by the ring, whatever the number of readers.** When the ring is full the
  oldest block is dropped. A reader whose offset points before the oldest byte still held has
  fallen behind: by policy it is skipped to the live edge (a radio listener hears a gap) or cut
  off. Nobody gets unlimited buffering.
- **Blocks are never reused or resized.** Each block is a fresh ``bytearray`` written once,
  front to back; a view handed to a reader covers bytes that will never change, so a caller
  may hold it (a transport buffer, say) after the ring has moved on. Dropping a block only
  drops the ring's reference.
- **Joining is aligned.** A new reader starts at the live edge, or ``back_buffer`` bytes before
  it (players fill their buffer faster, as Icecast's burst-on-connect does), rounded down to a
  multiple of ``align`` (188 keeps an MPEG-TS stream on packet boundaries).
- **The ring holds whole units only.** The writer's bytes are committed ``align`` bytes at a
  time; the end of an unfinished unit waits (at most ``align - 1`` bytes). So the live edge is
  always a unit boundary, and when the upstream breaks mid-unit and the stream carries on from
  a new connection (a *seam*), the broken unit is dropped (:meth:`Ring.drop_partial`) instead
  of leaving every later reader out of step.

Nothing here knows about sockets, HTTP or time; :mod:`swarmcache.http.live` moves the bytes.
The matching rules (which responses become live streams) are here too, as pure functions.
"""

from __future__ import annotations

import collections
import enum
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cache import policy

__all__ = [
    "Cursor",
    "LagPolicy",
    "LiveRules",
    "Read",
    "Ring",
    "continues_stream",
    "shareable_response",
    "stream_may_continue",
]


class LagPolicy(enum.Enum):
    """What happens to a reader whose offset fell behind the ring's tail."""

    SKIP = "skip"  # jump to the live edge (counted in the cursor)
    DISCONNECT = "disconnect"  # the reader is to be cut off


@dataclass(slots=True)
class Cursor:
    """One reader's position: an absolute offset into the stream the writer produced."""

    offset: int
    skips: int = 0
    skipped_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Read:
    """What :meth:`Ring.read` found for a reader.

    ``views`` are consecutive stream bytes from the cursor's offset (after any skip);
    ``skipped`` is how many bytes the reader jumped over first (SKIP policy); ``behind`` means
    the reader fell behind under the DISCONNECT policy and got nothing.
    """

    views: tuple[memoryview, ...]
    nbytes: int
    skipped: int = 0
    behind: bool = False


_NOTHING = Read((), 0)


class Ring:
    """A FIFO of ``blocks`` blocks of ``block_bytes`` each, written by one writer.

    Offsets are absolute (bytes since the stream began). ``head`` is the live edge (bytes
    written); ``tail`` is the oldest byte still held. Blocks are allocated as the writer needs
    them, so a short stream holds only what it wrote.
    """

    def __init__(self, *, block_bytes: int, blocks: int, align: int = 1) -> None:
        if block_bytes <= 0 or blocks <= 0 or align <= 0:
            raise ValueError("block_bytes, blocks and align must be positive")
        self.block_bytes = block_bytes
        self.max_blocks = blocks
        self.align = align
        self.head = 0
        self.closed = False
        self._blocks: collections.deque[bytearray] = collections.deque()
        self._first = 0  # absolute index of _blocks[0]
        self._partial = bytearray()  # the start of an unfinished align unit, not yet readable

    @property
    def capacity(self) -> int:
        return self.block_bytes * self.max_blocks

    @property
    def held_bytes(self) -> int:
        """Memory the ring holds (allocated blocks, full or not)."""
        return len(self._blocks) * self.block_bytes

    @property
    def tail(self) -> int:
        return self._first * self.block_bytes

    @property
    def pending(self) -> int:
        """Bytes written but held back until their align unit is complete."""
        return len(self._partial)

    # --- the writer -----------------------------------------------------------------------
    def append(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise ValueError("append to a closed ring")
        view = memoryview(data).cast("B")
        align, partial = self.align, self._partial
        if align > 1:
            if partial:
                take = min(align - len(partial), view.nbytes)
                partial += view[:take]
                view = view[take:]
                if len(partial) < align:
                    return
                with memoryview(partial) as unit:
                    self._commit(unit)
                partial.clear()
            whole = view.nbytes - view.nbytes % align
            partial += view[whole:]
            view = view[:whole]
        self._commit(view)

    def drop_partial(self) -> int:
        """A seam: the unfinished unit will never be finished. Returns the bytes dropped."""
        dropped = len(self._partial)
        self._partial.clear()
        return dropped

    def _commit(self, view: memoryview) -> None:
        size = self.block_bytes
        pos, total = 0, view.nbytes
        while pos < total:
            used = self.head % size
            if used == 0:
                if len(self._blocks) == self.max_blocks:
                    self._blocks.popleft()
                    self._first += 1
                if not self._blocks:
                    self._first = self.head // size
                self._blocks.append(bytearray(size))
            take = min(size - used, total - pos)
            self._blocks[-1][used : used + take] = view[pos : pos + take]
            self.head += take
            pos += take

    def close(self) -> None:
        """The stream ended: readers get what is left (an unfinished unit too), then the end."""
        if self._partial:
            with memoryview(self._partial) as unit:
                self._commit(unit)
            self._partial.clear()
        self.closed = True

    # --- readers --------------------------------------------------------------------------
    def edge(self, back_buffer: int = 0) -> int:
        """Where a reader joins: ``back_buffer`` bytes before the live edge, aligned, held."""
        tail = self.tail
        start = max(self.head - back_buffer, tail)
        start -= start % self.align
        if start < tail:
            start += self.align
        return min(start, self.head)

    def join(self, back_buffer: int = 0) -> Cursor:
        return Cursor(self.edge(back_buffer))

    def behind(self, cursor: Cursor) -> bool:
        return cursor.offset < self.tail

    def available(self, cursor: Cursor) -> int:
        return self.head - cursor.offset

    def read(self, cursor: Cursor, max_bytes: int, lag: LagPolicy = LagPolicy.SKIP) -> Read:
        """Up to ``max_bytes`` from the cursor on; the cursor moves past what is returned."""
        skipped = 0
        if cursor.offset < self.tail:
            if lag is LagPolicy.DISCONNECT:
                return Read((), 0, behind=True)
            target = self.edge()
            skipped = target - cursor.offset
            cursor.skips += 1
            cursor.skipped_bytes += skipped
            cursor.offset = target
        offset = cursor.offset
        end = min(self.head, offset + max_bytes)
        if end <= offset:
            return Read((), 0, skipped) if skipped else _NOTHING
        size = self.block_bytes
        views: list[memoryview] = []
        while offset < end:
            block = self._blocks[offset // size - self._first]
            start = offset % size
            stop = min(size, start + end - offset)
            views.append(memoryview(block)[start:stop])
            offset += stop - start
        nbytes = end - cursor.offset
        cursor.offset = end
        return Read(tuple(views), nbytes, skipped)


# --- which responses are live streams -------------------------------------------------------


class LiveRules:
    """Which URLs and media types are live streams (configured by the operator).

    ``url_patterns``: shell globs matched against the whole URL (``http://radio.example/*``),
    or regular expressions written ``re:…`` (searched, so anchor them yourself).
    ``content_types``: media types (``audio/mpeg``) or globs (``audio/*``), matched against the
    response's Content-Type without parameters, case-insensitively.
    A response is live when either list matches. Bad patterns raise ValueError naming them.
    """

    def __init__(self, url_patterns: Sequence[str], content_types: Sequence[str]) -> None:
        self._urls: list[re.Pattern[str]] = []
        for pattern in url_patterns:
            source = pattern[3:] if pattern.startswith("re:") else fnmatch.translate(pattern)
            try:
                self._urls.append(re.compile(source))
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid pattern: {exc}") from None
        self._types = [
            re.compile(fnmatch.translate(t.strip().lower())) for t in content_types if t.strip()
        ]

    @property
    def empty(self) -> bool:
        return not self._urls and not self._types

    def matches(self, url: bytes, content_type: bytes | None) -> bool:
        if self._urls:
            text = url.decode("latin-1")
            if any(p.search(text) for p in self._urls):
                return True
        if self._types and content_type is not None:
            media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
            return any(p.match(media) for p in self._types)
        return False


def shareable_response(headers: policy.Headers) -> bool:
    """May one response go to several clients? Not when private, no-store, or setting cookies.

    Request-side conditions (Authorization, Cookie) are the caller's; Vary is handled by
    keying the stream on the request's values of the named fields.
    """
    cc = policy.parse_cache_control(headers)
    if "private" in cc or "no-store" in cc:
        return False
    names = {n for n, _ in headers}
    if b"set-cookie" in names or b"set-cookie2" in names:
        return False
    return policy.vary_names(headers) is not None


def continues_stream(
    first_status: int, first: policy.Headers, status: int, headers: policy.Headers
) -> bool:
    """May a reconnect's response (``status``, ``headers``) carry on the stream whose first
    response was ``first_status``/``first``? Its bytes go to the same clients in the same
    response, so it must be the same kind of stream: same status and media type, still without
    a length, still shareable. Never a stream with in-band ICY metadata: its metadata blocks
    come every ``icy-metaint`` bytes counted from the start of a response, so the seam would
    put every client's parser out of step.
    """
    return (
        status == first_status
        and policy.header_values(headers, b"content-length") == []
        and shareable_response(headers)
        and _media(first) == _media(headers)
        and stream_may_continue(first)
        and not policy.header_values(headers, b"icy-metaint")
    )


def stream_may_continue(first: policy.Headers) -> bool:
    """Whether a stream that began with these headers may ever be continued after a seam:
    not one with in-band ICY metadata (see :func:`continues_stream`), so for those no
    reconnect is even tried."""
    return not policy.header_values(first, b"icy-metaint")


def _media(headers: policy.Headers) -> bytes:
    return b",".join(v.strip().lower() for v in policy.header_values(headers, b"content-type"))
