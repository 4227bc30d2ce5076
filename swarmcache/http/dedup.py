"""Fingerprint dedup on the miss path: confirm a candidate with the origin, then serve from disk.

Why it is built this way: :mod:`cache.fingerprint` decides (pure); this module does the I/O a
decision needs. The fill's pump (``handler._pump``) reads the first ``prefix_bytes`` of a large
body into the blob file as usual, calls :meth:`ContentDedup.look_up`, and meanwhile stops
reading the origin (the socket's receive window closes, so the origin stops sending too).

- No candidate: the pump goes on; the blob's fingerprint is recorded once it is indexed.
- A candidate: its blob is opened (so eviction cannot pull it away) and hash-verified, its
  first ``prefix_bytes`` compared byte for byte with what this origin sent, then a few byte
  ranges at offsets no one can predict (``SystemRandom``), always including the last bytes,
  are fetched from the *same* origin and URL with ``Range`` on their own connections, in
  parallel, and compared with the blob. Every one must be a proper 206 of the right range
  and length with the same bytes. Then the pump closes the upstream connection and copies
  the rest of the stored blob into the fill's file with ``copy_file_range`` (in the kernel,
  a worker thread per chunk); readers of the fill, coalesced waiters included, keep reading
  that one file at their own offsets, and see this origin's response head. The commit then
  finds the identical blob already stored (same digest), drops the copy without syncing it,
  and the new URL key references the existing blob.
- A DIFFERENT sample is a mismatch (counted), an unusable one (no 206, a changed ETag, a
  timeout) proves nothing: either way the pump resumes the transfer exactly where it stopped.

Cost per confirmed match: ``samples`` extra connections and requests to the origin and
``samples * sample_bytes`` of body, about one round trip, plus a local copy of the body.
The residual risk, a crafted near-duplicate, is discussed in docs/architecture.md; mode
``full`` never serves from a candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cache.fingerprint import (
    FingerprintIndex,
    SampleVerdict,
    fingerprint,
    judge_sample,
    sample_ranges,
    strong_validator,
)
from cache.store import BlobRef, BlobWriter, CorruptBlob, Store, StoreError
from swarmcache.config import CacheConfig
from swarmcache.http.parser import Data, EndOfMessage, Header, Request, Response
from swarmcache.http.target import Target, trust_scope
from swarmcache.http.upstream import UpstreamConnection, UpstreamError
from swarmcache.metrics import Metrics

__all__ = ["Confirmed", "ContentDedup", "DedupAttempt"]

log = logging.getLogger("swarmcache.http")

# How long the fill may wait for the samples before it gives up and goes on with the origin.
_CONFIRM_TIMEOUT = 10.0
# Candidates tried per fill (several blobs may share a fingerprint; each costs a round trip).
_MAX_TRIED = 2
# Bytes copied from the stored blob per worker-thread call (readers are woken in between).
_COPY_CHUNK = 8 << 20
# Entries whose blob was evicted are dropped when looked up; the rest (files nobody fetched
# again) are swept after this many new entries, so the table stays about as big as the store.
_PRUNE_EVERY = 4096
# Request fields that would make the origin answer something other than plain ranges.
_CONDITIONALS = frozenset(
    {b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match"}
    | {b"if-unmodified-since"}
)

OpenUpstream = Callable[..., Awaitable[UpstreamConnection]]  # (target, *, high_water=...)


@dataclass(slots=True)
class DedupAttempt:
    """One fill that may be served from a stored blob (see :meth:`ContentDedup.attempt`)."""

    target: Target
    fields: list[Header]  # request fields for the range fetches (no conditionals)
    length: int
    validator: bytes | None
    fingerprint: bytes | None = None
    candidates: list[BlobRef] = field(default_factory=list)
    confirmed: BlobRef | None = None
    # Set for a body the admission filter refused: it is fetched through a fill only so that a
    # stored copy can be found and confirmed; unmatched, it is served and then dropped.
    dedup_only: bool = False


@dataclass(slots=True)
class Confirmed:
    """A candidate the origin vouched for, with a descriptor on its blob (caller closes)."""

    ref: BlobRef
    fd: int


class ContentDedup:
    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        config: CacheConfig,
        open_upstream: OpenUpstream,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._config = config
        self._open_upstream = open_upstream
        self.index = None if config.fingerprint == "off" else FingerprintIndex(store)
        self._rng = random.SystemRandom()
        self._recorded = 0

    @property
    def prefix_bytes(self) -> int:
        return self._config.fingerprint_prefix_bytes

    @property
    def read_ahead(self) -> int:
        """How far a fill connection that may be fingerprinted reads ahead of its consumer."""
        return 1 << 20 if self.index is None else self._config.fingerprint_prefix_bytes

    def narrow_window(self, upstream: UpstreamConnection) -> None:
        """Keep the receive window of a fill that may be fingerprinted near its initial size.

        What the origin sends before a match is confirmed is what the match cannot save, and
        that is one receive window. Linux grows the window as soon as the reader keeps up
        (two reads within a round trip took it from 64 KiB to megabytes on a LAN), so the
        buffer is pinned small until :meth:`widen_window`.
        """
        if self.index is not None:
            _set_rcvbuf(upstream, self._config.fingerprint_prefix_bytes, force=False)

    def widen_window(self, upstream: UpstreamConnection) -> None:
        """Give a fill its full receive buffer back (no match, or no fingerprint at all).

        Pinning turned autotuning off for this connection, so it gets the largest buffer
        autotuning could have reached (``tcp_rmem`` max); memory is only used while the
        kernel holds unread bytes, which the splice keeps near zero.
        """
        if self.index is not None:
            _set_rcvbuf(upstream, _autotune_max() // 2, force=True)

    def attempt(
        self,
        request: Request,
        response: Response,
        length: int | None,
        target: Target,
        fields: list[Header],
    ) -> DedupAttempt | None:
        """A fingerprint attempt for ``response``, or None; decided at the head.

        Only shareable GETs of a whole (200) body of known length past ``min_bytes``. The
        caller drops the attempt unless the response is stored: whatever is private or not
        stored never reads or writes the fingerprint table (only the pump does, in
        :meth:`look_up` and :meth:`record`).
        """
        if (
            self.index is None
            or length is None
            or length < self._config.fingerprint_min_bytes
            or request.method != b"GET"
            or response.status != 200
            or request.get(b"authorization") is not None
            or request.get(b"cookie") is not None
        ):
            return None
        return DedupAttempt(
            target=target,
            fields=[(n, v) for n, v in fields if n not in _CONDITIONALS],
            length=length,
            validator=strong_validator(response.headers),
        )

    def may_match(self, length: int) -> bool:
        """Whether a body of ``length`` bytes could be confirmed against a stored one: the
        index knows that length and matches are confirmed by samples (in "full" mode a match
        is only known once the whole body is in, too late to spare new disk)."""
        if self.index is None or self._config.fingerprint != "sample":
            return False
        try:
            return self.index.has_length(length)
        except StoreError as exc:
            log.warning("fingerprint lookup failed: %s", exc)
            return False

    async def look_up(self, attempt: DedupAttempt, prefix: bytes) -> Confirmed | None:
        """Fingerprint ``prefix``; return a blob confirmed to hold this very body, or None."""
        assert self.index is not None
        attempt.fingerprint = fingerprint(prefix, attempt.length)
        try:
            attempt.candidates = self.index.candidates(
                attempt.fingerprint, attempt.length, self._scope_filter(attempt)
            )
        except StoreError as exc:
            log.warning("fingerprint lookup failed: %s", exc)
            return None
        if not attempt.candidates:
            return None
        self._metrics.fingerprint_candidates.inc()
        if self._config.fingerprint != "sample":
            return None  # "full": judged when the whole body has been hashed (record())
        for ref in attempt.candidates[:_MAX_TRIED]:
            verdict, fd = await self._confirm(attempt, ref, prefix)
            if verdict is SampleVerdict.SAME:
                self._metrics.fingerprint_confirmed.inc()
                attempt.confirmed = ref
                return Confirmed(ref, fd)
            if verdict is SampleVerdict.DIFFERENT:
                self._metrics.fingerprint_mismatches.inc()
            else:
                break  # the origin cannot vouch (no Range): no other candidate would fare better
        return None

    async def _confirm(
        self, attempt: DedupAttempt, ref: BlobRef, prefix: bytes
    ) -> tuple[SampleVerdict, int]:
        try:
            fd = self._store.open_blob(ref)
        except CorruptBlob as exc:
            if self._store.has_blob(ref):  # else evicted since the lookup: not corrupt
                self._drop_corrupt(ref, str(exc))
            return SampleVerdict.UNUSABLE, -1
        except StoreError as exc:
            log.warning("cannot open fingerprint candidate %s: %s", ref.digest, exc)
            return SampleVerdict.UNUSABLE, -1
        verdict = SampleVerdict.UNUSABLE
        try:
            verdict = await self._compare(attempt, ref, fd, prefix)
        finally:
            if verdict is not SampleVerdict.SAME:
                os.close(fd)
        return verdict, fd

    async def _compare(
        self, attempt: DedupAttempt, ref: BlobRef, fd: int, prefix: bytes
    ) -> SampleVerdict:
        loop = asyncio.get_running_loop()
        verified = self._store.is_verified(ref) or await loop.run_in_executor(
            None, self._store.verify_blob, ref
        )
        if not verified:
            self._drop_corrupt(ref, "content hash mismatch")
            return SampleVerdict.UNUSABLE
        # Exact, not through the fingerprint's hash: the prefix this client is already
        # reading must be the stored blob's.
        if os.pread(fd, len(prefix), 0) != prefix:
            return SampleVerdict.DIFFERENT
        ranges = sample_ranges(
            attempt.length,
            skip=len(prefix),
            count=self._config.fingerprint_samples,
            size=self._config.fingerprint_sample_bytes,
            rng=self._rng,
        )
        try:
            async with asyncio.timeout(_CONFIRM_TIMEOUT):
                verdicts = await asyncio.gather(*(self._sample(attempt, fd, r) for r in ranges))
        except TimeoutError:
            return SampleVerdict.UNUSABLE
        if SampleVerdict.DIFFERENT in verdicts:
            return SampleVerdict.DIFFERENT
        if SampleVerdict.UNUSABLE in verdicts:
            return SampleVerdict.UNUSABLE
        return SampleVerdict.SAME

    async def _sample(self, attempt: DedupAttempt, fd: int, want: tuple[int, int]) -> SampleVerdict:
        expected = os.pread(fd, want[1] - want[0] + 1, want[0])
        fields = [*attempt.fields, (b"range", b"bytes=%d-%d" % want)]
        if attempt.validator is not None:
            # The ranges must come from the version whose head the client already has.
            fields.append((b"if-range", attempt.validator))
        try:
            # Small read-ahead and window: an origin that ignores Range answers with the whole
            # body, and only its head is wanted.
            upstream = await self._open_upstream(attempt.target, high_water=len(expected))
        except (UpstreamError, PermissionError):
            return SampleVerdict.UNUSABLE
        _set_rcvbuf(upstream, len(expected), force=False)
        try:
            await upstream.send_head(b"GET", attempt.target.path, fields)
            while True:
                event = await upstream.next_event()
                if isinstance(event, Response) and event.status >= 200:
                    response = event
                    break
                if not isinstance(event, Response):
                    return SampleVerdict.UNUSABLE
            if response.status != 206:
                return SampleVerdict.UNUSABLE  # not reading a whole body we do not want
            parts: list[bytes] = []
            size = 0
            while size <= len(expected):
                event = await upstream.next_event()
                if isinstance(event, EndOfMessage):
                    break
                if isinstance(event, Data):
                    parts.append(bytes(event.data))
                    size += len(event.data)
            return judge_sample(
                response.status,
                response.headers,
                b"".join(parts),
                want,
                attempt.length,
                expected,
                validator=attempt.validator,
            )
        except UpstreamError:
            return SampleVerdict.UNUSABLE
        finally:
            self._metrics.upstream_bytes.inc(upstream.received_bytes)
            upstream.close()

    async def copy_rest(
        self, confirmed: Confirmed, writer: BlobWriter, grow: Callable[[int], None]
    ) -> int:
        """Append the stored blob's bytes past ``writer.size`` to ``writer``; returns them."""
        loop = asyncio.get_running_loop()
        copied = 0
        end = confirmed.ref.size
        while writer.size < end:
            count = min(_COPY_CHUNK, end - writer.size)
            n = await loop.run_in_executor(
                None, _copy_range, confirmed.fd, writer.fileno(), writer.size, count
            )
            writer.account_written(n)
            copied += n
            grow(writer.size)
        self._metrics.fingerprint_saved_bytes.inc(copied)
        return copied

    def record(self, attempt: DedupAttempt, ref: BlobRef) -> None:
        """Right after the fill's blob is indexed: note its fingerprint (judge mode "full").

        One short LMDB write on the loop, like the put it follows.
        """
        if attempt.fingerprint is None or self.index is None:
            return
        if self._config.fingerprint == "full" and attempt.candidates:
            if ref in attempt.candidates:
                self._metrics.fingerprint_confirmed.inc()
            else:
                self._metrics.fingerprint_mismatches.inc()
        if attempt.confirmed is not None:
            if attempt.confirmed != ref:
                # Cannot happen: the prefix was compared byte for byte and the rest copied.
                log.error(
                    "fingerprint copy of %s hashed to %s", attempt.confirmed.digest, ref.digest
                )
            # Only an origin that sent the whole body vouches for it: a sampled match adds no
            # entry (its scope already has one, or "any" was chosen).
            return
        try:
            self.index.add(attempt.fingerprint, ref, trust_scope(attempt.target))
        except StoreError as exc:
            log.warning("cannot record the fingerprint of %s: %s", ref.digest, exc)
            return
        self._recorded += 1

    def _scope_filter(self, attempt: DedupAttempt) -> bytes | None:
        """Candidates for a sampled match come from this request's trust scope only (unless
        the operator chose "any"): samples catch a different file, not a crafted one that
        differs in a few bytes, so only the origin that served the stored body may vouch for
        it. In "full" mode every body is read and hashed, so any scope will do."""
        if self._config.fingerprint != "sample" or self._config.fingerprint_scope == "any":
            return None
        return trust_scope(attempt.target)

    async def maybe_prune(self) -> None:
        """Every ``_PRUNE_EVERY`` records, sweep entries of evicted blobs (a worker thread)."""
        if self.index is None or self._recorded < _PRUNE_EVERY:
            return
        self._recorded = 0
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.index.prune)
        except StoreError as exc:
            log.warning("fingerprint prune failed: %s", exc)

    def _drop_corrupt(self, ref: BlobRef, why: str) -> None:
        log.error("dropping corrupt blob %s (fingerprint candidate): %s", ref.digest, why)
        self._metrics.corrupt_blobs.inc()
        with contextlib.suppress(StoreError):
            self._store.drop_blob(ref)


_TCP_RMEM = "/proc/sys/net/ipv4/tcp_rmem"
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not exported by the socket module on 3.11


@functools.cache
def _autotune_max() -> int:
    try:
        with open(_TCP_RMEM) as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 6 << 20  # the kernel's default tcp_rmem max


def _set_rcvbuf(upstream: UpstreamConnection, size: int, *, force: bool) -> None:
    sock = upstream.transport.get_extra_info("socket")
    if sock is None:
        return
    # The kernel doubles the value (bookkeeping overhead). FORCE may exceed net.core.rmem_max
    # (the daemon runs with CAP_NET_ADMIN for TPROXY); without it the value is capped there.
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE if force else socket.SO_RCVBUF, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    """Copy ``count`` bytes of ``src`` from ``offset`` to ``dst``'s position (a worker thread).

    ``copy_file_range`` keeps the bytes in the kernel (and shares extents where the file
    system can); a file system that refuses it gets a plain read/write loop.
    """
    done = 0
    try:
        while done < count:
            n = os.copy_file_range(src, dst, count - done, offset + done)
            if n == 0:
                raise StoreError("stored blob is shorter than its size")
            done += n
        return done
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < count:
        data = os.pread(src, min(1 << 20, count - done), offset + done)
        if not data:
            raise StoreError("stored blob is shorter than its size")
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view) :]
        done += len(data)
    return done
