"""Building the responses the cache itself answers with: hits, 304s, 206s, errors.

Pure functions from stored metadata and the request to header lists and byte ranges, so the
hit path's decisions are unit-testable without sockets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cache import policy
from swarmcache.http.parser import Header, Request

__all__ = [
    "CacheStatus",
    "HitPlan",
    "annotate",
    "not_modified_headers",
    "plan_hit",
]

# Fields the cache rewrites on every response it sends.
_OWN_FIELDS = frozenset(
    {b"content-length", b"age", b"x-cache", b"cache-status", b"transfer-encoding", b"connection"}
)
# RFC 9110 §15.4.5: what a 304 carries from the 200 it stands for.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


class CacheStatus:
    """RFC 9211 Cache-Status values (``swarmcache; hit`` …) with the legacy X-Cache."""

    def __init__(self, via_name: str) -> None:
        self.via = via_name.encode()
        self.hit = b"%s; hit" % self.via
        self.miss = b"%s; fwd=uri-miss; stored" % self.via
        self.miss_not_stored = b"%s; fwd=uri-miss" % self.via
        self.stale = b"%s; fwd=stale" % self.via
        self.revalidated = b"%s; fwd=stale; fwd-status=304" % self.via
        self.bypass = b"%s; fwd=bypass" % self.via
        self.coalesced = b"%s; hit; detail=coalesced" % self.via


def annotate(
    headers: Iterable[Header],
    *,
    via: bytes,
    version: bytes,
    cache_status: bytes,
    hit: bool,
    age: bytes | None,
    keep_alive: bool,
    extra: Sequence[Header] = (),
) -> list[Header]:
    """Stored/upstream fields minus the ones we own, plus Via, Age and the cache status."""
    out = [(n, v) for n, v in headers if n not in _OWN_FIELDS and n != b"via"]
    previous_via = [v for n, v in headers if n == b"via"]
    our_via = b"1.1 " + via if version == b"1.1" else b"1.0 " + via
    out.append((b"via", b", ".join([*previous_via, our_via])))
    if age is not None:
        out.append((b"age", age))
    out.append((b"x-cache", b"HIT" if hit else b"MISS"))
    out.append((b"cache-status", cache_status))
    out.extend(extra)
    if not keep_alive:
        out.append((b"connection", b"close"))
    return out


def not_modified_headers(stored: Iterable[Header]) -> list[Header]:
    return [(n, v) for n, v in stored if n in _NOT_MODIFIED_FIELDS]


@dataclass(frozen=True, slots=True)
class HitPlan:
    """What to send for a hit: status, extra fields, and body byte ranges (inclusive)."""

    status: int
    fields: tuple[Header, ...]
    ranges: tuple[tuple[int, int], ...]  # empty: no body
    multipart_boundary: bytes = b""


def plan_hit(request: Request, status: int, stored: Sequence[Header], size: int) -> HitPlan:
    """Decide 304 / 412 / 416 / 206 / 200 for a stored full response."""
    outcome = policy.evaluate_client_conditionals(request.method, request.headers, stored)
    if outcome is policy.ConditionalResult.NOT_MODIFIED:
        return HitPlan(304, (), ())
    if outcome is policy.ConditionalResult.PRECONDITION_FAILED:
        return HitPlan(412, ((b"content-length", b"0"),), ())
    body = () if size == 0 else ((0, size - 1),)
    full = HitPlan(status, ((b"content-length", str(size).encode()),), body)
    range_field = request.get(b"range")
    if status != 200 or range_field is None:
        return full
    if not policy.if_range_matches(request.get(b"if-range"), stored):
        return full
    ranges = policy.parse_range(range_field, size)
    if ranges is None:
        return full
    if isinstance(ranges, policy.Unsatisfiable):
        return HitPlan(
            416,
            ((b"content-range", b"bytes */%d" % size), (b"content-length", b"0")),
            (),
        )
    if len(ranges) == 1:
        start, end = ranges[0]
        return HitPlan(
            206,
            (
                (b"content-range", b"bytes %d-%d/%d" % (start, end, size)),
                (b"content-length", str(end - start + 1).encode()),
            ),
            ranges,
        )
    boundary = os.urandom(12).hex().encode()
    content_type = next((v for n, v in stored if n == b"content-type"), None)
    length = sum(len(p) for p in multipart_parts(boundary, content_type, ranges, size)) + sum(
        end - start + 1 for start, end in ranges
    )
    return HitPlan(
        206,
        (
            (b"content-type", b"multipart/byteranges; boundary=" + boundary),
            (b"content-length", str(length).encode()),
        ),
        ranges,
        boundary,
    )


def multipart_parts(
    boundary: bytes,
    content_type: bytes | None,
    ranges: Sequence[tuple[int, int]],
    size: int,
) -> list[bytes]:
    """The framing around each range of a multipart/byteranges body, and the closing part.

    Returns len(ranges) + 1 byte strings: part i goes before range i, the last after all.
    """
    parts = []
    for start, end in ranges:
        head = b"\r\n--" + boundary + b"\r\n"
        if content_type is not None:
            head += b"content-type: " + content_type + b"\r\n"
        head += b"content-range: bytes %d-%d/%d\r\n\r\n" % (start, end, size)
        parts.append(head)
    parts.append(b"\r\n--" + boundary + b"--\r\n")
    return parts
