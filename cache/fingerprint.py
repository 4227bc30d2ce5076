"""Content fingerprints: recognise a large body already in the store while it is still arriving.

Why it is built this way (brief §6.2): the same file reaches subscribers under URLs that differ
per user (signed query strings, session tokens, mirror hosts), so its URL key is new every
time, but its bytes are not. A *fingerprint* (SHA-256 of the first ``prefix_bytes`` of the
body and its total length) is computed once that prefix has arrived and looked up in an LMDB
table beside the URL index. A match is only a **candidate**: installers and containers share
headers, so equal prefixes and lengths say nothing about the rest. Before anything is served
from the stored blob the match is confirmed against the origin itself, with byte ranges of
this URL compared to the stored blob (:func:`sample_ranges`, :func:`judge_sample`); the
asyncio side (``swarmcache/http/dedup.py``) fetches them. A mismatch, an origin that ignores
Range, or any doubt leaves the normal transfer running untouched.

The table maps fingerprint → (blob digest, size), duplicates sorted, so two different files
that share a prefix and a length both stay candidates. Entries are written only for
storable, shareable responses, when their blob is indexed, and point at blobs, not URLs:
the blob's refcount says whether it still exists, and an entry whose blob is gone is ignored
and removed (lazily on lookup, or by :meth:`FingerprintIndex.prune`).

Everything but :class:`FingerprintIndex` is pure.
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from cache.store import BlobRef, Store

__all__ = [
    "FingerprintIndex",
    "SampleVerdict",
    "fingerprint",
    "judge_sample",
    "parse_content_range",
    "sample_ranges",
    "scope_id",
    "strong_validator",
]

_TABLE: Final = b"fingerprints"
_U64 = struct.Struct("<Q")
# The body length leads the key (big-endian, so keys sort by length): "is any stored body this
# long" is one cursor seek, asked at the response head before a prefix exists.
_LENGTH_KEY = struct.Struct(">Q")
_ENTRY = struct.Struct("<32sQ16s")  # blob digest, blob size, trust scope (see scope_id)
# Versioned so that a change of definition can never match an old entry.
_DOMAIN: Final = b"swarmcache-fingerprint-2\x00"
_CONTENT_RANGE = re.compile(rb"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")

Header = tuple[bytes, bytes]


def fingerprint(prefix: bytes | memoryview, length: int) -> bytes:
    """The 40-byte fingerprint of a body of ``length`` bytes that starts with ``prefix``:
    the length, then a SHA-256 over the length, the prefix span and the prefix.

    The prefix length is part of it, so a changed ``fingerprint_prefix_bytes`` never compares
    fingerprints taken over different spans.
    """
    if length < len(prefix):
        raise ValueError("the prefix is longer than the body")
    h = hashlib.sha256(_DOMAIN)
    h.update(_U64.pack(length))
    h.update(_U64.pack(len(prefix)))
    h.update(prefix)
    return _LENGTH_KEY.pack(length) + h.digest()


def sample_ranges(
    length: int, *, skip: int, count: int, size: int, rng: random.Random
) -> list[tuple[int, int]]:
    """Inclusive byte ranges of a body to compare with a candidate, sorted.

    Always the last ``size`` bytes (formats keep their directory, checksums and signatures at
    the end: a zip's central directory, an installer's signature), plus ``count - 1`` ranges
    at offsets drawn from ``rng`` past ``skip`` (the prefix, already compared whole). The
    offsets must be unpredictable to the origin: pass a :class:`random.SystemRandom`. When
    the rest of the body is no bigger than what the samples would cover, it is one range.
    """
    if count < 1 or size < 1 or skip < 0:
        raise ValueError("count and size must be >= 1, skip >= 0")
    span = length - skip
    if span <= 0:
        return []
    if span <= count * size:
        return [(skip, length - 1)]
    ranges = {(length - size, length - 1)}
    for _ in range(count - 1):
        start = skip + rng.randrange(span - size + 1)
        ranges.add((start, start + size - 1))
    return sorted(ranges)


def parse_content_range(value: bytes) -> tuple[int, int, int] | None:
    """``bytes first-last/complete`` → (first, last, complete); None for anything else.

    ``*`` for the complete length (unknown) and an unsatisfied range (``bytes */n``) are
    None: neither can confirm anything.
    """
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        return None
    first, last, complete = (int(g) for g in m.groups())
    if not first <= last < complete:
        return None
    return first, last, complete


def strong_validator(headers: Iterable[Header]) -> bytes | None:
    """The response's ETag when it is strong (weak ones do not vouch for bytes)."""
    etags = [v.strip() for n, v in headers if n == b"etag"]
    if len(etags) != 1 or etags[0][:2] == b"W/" or not etags[0]:
        return None
    return etags[0]


class SampleVerdict(enum.Enum):
    SAME = "same"  # the origin's bytes are the stored blob's
    DIFFERENT = "different"  # a proper answer with other bytes: a different file
    UNUSABLE = "unusable"  # not a usable partial response: proves nothing either way


def judge_sample(
    status: int,
    headers: Sequence[Header],
    body: bytes,
    want: tuple[int, int],
    length: int,
    expected: bytes,
    *,
    validator: bytes | None,
) -> SampleVerdict:
    """Compare one origin answer to ``Range: bytes=want`` with the stored blob's ``expected``.

    Only a 206 whose single Content-Range is exactly ``want`` of a body of ``length`` bytes,
    with exactly that many body bytes and (when the full response had a strong ETag) the
    same ETag, is evidence; anything else is UNUSABLE (an origin that ignores Range answers
    200, one that changed the file answers a different length or ETag).
    """
    if status != 206 or len(expected) != want[1] - want[0] + 1:
        return SampleVerdict.UNUSABLE
    ranges = [v for n, v in headers if n == b"content-range"]
    if len(ranges) != 1 or parse_content_range(ranges[0]) != (want[0], want[1], length):
        return SampleVerdict.UNUSABLE
    if validator is not None:
        etag = strong_validator(headers)
        if etag is not None and etag != validator:
            return SampleVerdict.UNUSABLE
    if len(body) != len(expected):
        return SampleVerdict.UNUSABLE
    return SampleVerdict.SAME if body == expected else SampleVerdict.DIFFERENT


def scope_id(scope: bytes) -> bytes:
    """The 16 bytes an entry stores for the trust scope its body was fetched in (an origin,
    or a service of key rules): a sampled match is only trusted within one scope."""
    return hashlib.sha256(b"swarmcache-scope\x00" + scope).digest()[:16]


def _encode(ref: BlobRef, scope: bytes) -> bytes:
    return _ENTRY.pack(bytes.fromhex(ref.digest), ref.size, scope_id(scope))


def _decode(raw: bytes) -> tuple[BlobRef, bytes] | None:
    if len(raw) != _ENTRY.size:
        return None
    digest, size, scope = _ENTRY.unpack(raw)
    return BlobRef(digest.hex(), size), scope


class FingerprintIndex:
    """fingerprint → blobs, a dupsort table in the store's LMDB environment.

    Methods are short LMDB transactions (a write one fdatasyncs): :meth:`add` and
    :meth:`prune` belong in a worker thread; :meth:`candidates` only writes when it finds
    entries whose blob is gone.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._table = store.open_table(_TABLE, dupsort=True)

    def add(self, fp: bytes, ref: BlobRef, scope: bytes) -> None:
        """Note that a body with fingerprint ``fp`` fetched in ``scope`` is blob ``ref``."""
        with self._store.transaction(write=True) as txn:
            # An identical (fingerprint, blob, scope) entry is stored once: LMDB keeps dups
            # unique.
            txn.put(fp, _encode(ref, scope), db=self._table, dupdata=True)

    def has_length(self, length: int) -> bool:
        """Whether any body of exactly ``length`` bytes has a fingerprint here (a hint: the
        blob may be gone since). One read transaction; fine on the event loop."""
        key = _LENGTH_KEY.pack(length)
        with self._store.transaction() as txn:
            cursor = txn.cursor(db=self._table)
            return bool(cursor.set_range(key)) and bytes(cursor.key()[:8]) == key

    def candidates(self, fp: bytes, length: int, scope: bytes | None = None) -> list[BlobRef]:
        """Blobs still in the store whose body has this fingerprint and ``length`` bytes (and,
        unless ``scope`` is None, was fetched in that trust scope)."""
        wanted = None if scope is None else scope_id(scope)
        with self._store.transaction() as txn:
            cursor = txn.cursor(db=self._table)
            raws = list(cursor.iternext_dup()) if cursor.set_key(fp) else []
        live: list[BlobRef] = []
        dead: list[bytes] = []
        for raw in raws:
            entry = _decode(raw)
            if entry is None or not self._store.has_blob(entry[0]):
                dead.append(raw)
            elif entry[0].size == length and wanted in (None, entry[1]) and entry[0] not in live:
                live.append(entry[0])
        if dead:
            with self._store.transaction(write=True) as txn:
                for raw in dead:
                    txn.delete(fp, raw, db=self._table)
        return live

    def prune(self) -> int:
        """Remove every entry whose blob is gone; returns how many. Slow: a worker thread."""
        with self._store.transaction() as txn:
            entries = list(txn.cursor(db=self._table).iternext())
        dead = []
        for fp, raw in entries:
            entry = _decode(raw)
            if entry is None or not self._store.has_blob(entry[0]):
                dead.append((fp, raw))
        if dead:
            with self._store.transaction(write=True) as txn:
                for fp, raw in dead:
                    txn.delete(fp, raw, db=self._table)
        return len(dead)

    def __len__(self) -> int:
        with self._store.transaction() as txn:
            return int(txn.stat(self._table)["entries"])
