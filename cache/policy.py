"""HTTP caching rules for a *shared* cache (RFC 9111, with RFC 9110 for validators and ranges).

Why it is built this way: every caching decision the gateway makes (may this be stored, may this
be served without asking the origin, what does a conditional or Range request get) is a pure
function of header lists, a few timestamps and a status code. Keeping them here, with no
sockets, no store and no clock (callers pass ``now``), means the rules can be tested
exhaustively in tables and fuzzed with hypothesis, and the serving path can call them on the hot
path without hidden costs. Nothing here mutates its arguments.

Conventions shared by every function:

* Headers are ``Sequence[tuple[bytes, bytes]]`` with lowercase names and stripped values, in
  wire order; the same name may appear several times.
* Times are float POSIX seconds.
* Parsers never raise on hostile input: a malformed field is treated the way the RFCs say a
  recipient must treat it (usually "ignore it", but "already expired" for ``Expires`` and
  "stale" for an invalid ``max-age``), so an origin or a subscriber cannot crash the daemon or
  widen what gets shared.

Where this module is stricter than RFC 9111, it is on purpose, because a transparent ISP cache
sees traffic whose authors never expected a shared cache in the path (see architecture §3a):
only GET responses are stored, ``Set-Cookie`` is never stored, a request carrying ``Cookie`` is
only stored when the origin says ``public`` or ``s-maxage``, and partial (206) responses are
never stored.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urljoin, urlsplit, urlunsplit

__all__ = [
    "UNSATISFIABLE",
    "ConditionalResult",
    "Freshness",
    "Header",
    "RequestAction",
    "RequestDirectives",
    "StoreDecision",
    "Unsatisfiable",
    "age_header_value",
    "classify_request",
    "current_age",
    "evaluate_client_conditionals",
    "evaluate_freshness",
    "format_http_date",
    "freshness_lifetime",
    "header_values",
    "if_range_matches",
    "invalidation_targets",
    "merge_not_modified",
    "parse_cache_control",
    "parse_http_date",
    "parse_range",
    "request_directives",
    "storable",
    "strip_hop_by_hop",
    "validation_headers",
    "vary_key",
    "vary_names",
]

Header = tuple[bytes, bytes]
Headers = Sequence[Header]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is sent as 2^31; recipients use it
# as "effectively infinite" without overflowing anything downstream.
MAX_DELTA = 2**31

# RFC 9110 §15.1 "heuristically cacheable" status codes, minus 206: the store only ever holds
# full bodies, so a 206 is never stored (ranges are cut from the full body when served).
_HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Temporary redirects are storable only with explicit freshness: caching them heuristically
# pins subscribers to a stale target (the reason Lancache refuses to cache 302 at all).
_EXPLICIT_ONLY_STATUSES = frozenset({302, 303, 307})

# RFC 9110 §7.6.1 plus Proxy-Connection (never standard, still sent by old clients) and
# Keep-Alive; these describe one connection and must never cross the proxy or be stored.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# RFC 9111 §3.2 lets a cache keep header fields its stored body depends on. The body on disk
# was framed and encoded under these values; taking a 304's Content-Length (often 0) would
# truncate every later hit. Set-Cookie is addressed to the one client that revalidated; the
# merged list is what gets stored and shared, so it must never carry one.
_KEPT_ON_304 = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"content-range",
        b"set-cookie",
        b"set-cookie2",
    }
)

_INVALIDATING_METHODS = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})
_LOOKUP_METHODS = frozenset({b"GET", b"HEAD"})

# Bounds the work a single Range header can cause; RFC 9110 §14.2 lets a server ignore
# requests with many ranges or several overlapping ones (a known amplification vector).
MAX_RANGES = 16
_MAX_OVERLAPS = 1

_DEFAULT_PORTS = {"http": 80, "https": 443}


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of the fields called ``name``, in order; comma lists are not split."""
    return [v for n, v in headers if n == name]


def _first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _split_list(values: Iterable[bytes]) -> list[bytes]:
    """Elements of a #list field (RFC 9110 §5.6.1) that has no quoted strings."""
    out: list[bytes] = []
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if element:
                out.append(element)
    return out


# --- Cache-Control --------------------------------------------------------------------------


def parse_cache_control(headers: Headers) -> dict[str, str | None]:
    """Directives of every Cache-Control field, merged (RFC 9111 §5.2).

    Names are lowercased; values keep their case, quoted-strings are unquoted. When a directive
    appears twice the first occurrence wins (RFC 9111 §4.2.1 allows that or treating the
    response as stale; first-wins keeps ``max-age=60, max-age=0`` predictable). Never raises.
    """
    text = ",".join(v.decode("latin-1") for v in header_values(headers, b"cache-control"))
    out: dict[str, str | None] = {}
    if '"' not in text:
        # Nearly every real field has no quoted-string: splitting is several times faster than
        # the scanner below and gives the same result for such input.
        for part in text.split(","):
            raw_name, eq, raw_value = part.partition("=")
            name = raw_name.strip(" \t").lower()
            if name and name not in out:
                out[name] = raw_value.strip(" \t") if eq else None
        return out
    i, end = 0, len(text)
    while i < end:
        while i < end and text[i] in " \t,":
            i += 1
        if i >= end:
            break
        j = i
        while j < end and text[j] not in "=,":
            j += 1
        name = text[i:j].strip(" \t").lower()
        value: str | None = None
        i = j
        if i < end and text[i] == "=":
            i += 1
            while i < end and text[i] in " \t":
                i += 1
            if i < end and text[i] == '"':
                i += 1
                chars: list[str] = []
                while i < end and text[i] != '"':
                    if text[i] == "\\" and i + 1 < end:
                        i += 1
                    chars.append(text[i])
                    i += 1
                value = "".join(chars)
                # Anything between the closing quote and the next comma is junk.
                while i < end and text[i] != ",":
                    i += 1
            else:
                j = i
                while j < end and text[j] != ",":
                    j += 1
                value = text[i:j].strip(" \t")
                i = j
        if name and name not in out:
            out[name] = value
    return out


def _delta_seconds(value: str | None) -> float | None:
    """RFC 9111 §1.2.2 delta-seconds; None when absent or not 1*DIGIT."""
    if not value or not all("0" <= c <= "9" for c in value):
        return None
    digits = value.lstrip("0") or "0"
    # Also sidesteps int()'s 4300-digit guard on hostile input.
    if len(digits) > 10:
        return float(MAX_DELTA)
    return float(min(int(digits), MAX_DELTA))


# --- HTTP-date ------------------------------------------------------------------------------

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.lower().encode("ascii"): i + 1 for i, m in enumerate(_MONTH_NAMES)}
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

_MON = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"(\d{2}):(\d{2}):(\d{2})"
# Slightly more liberal than the ABNF (one-digit days, runs of spaces, any letter case) because
# real servers send that and reading it as "expired" would only cost hit rate; the weekday is
# not cross-checked against the date, as browsers do not either.
_IMF_RE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), +(\d{1,2}) +" + _MON + rb" +(\d{4}) +" + _TIME + rb" +GMT",
    re.IGNORECASE,
)
_RFC850_RE = re.compile(
    rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), +(\d{1,2})-"
    + _MON
    + rb"-(\d{2}) +"
    + _TIME
    + rb" +GMT",
    re.IGNORECASE,
)
_ASCTIME_RE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +" + _MON + rb" +(\d{1,2}) +" + _TIME + rb" +(\d{4})",
    re.IGNORECASE,
)


def _parse_date_kind(value: bytes, now: float | None) -> tuple[float, bool] | None:
    """(timestamp, is_imf_fixdate) or None."""
    # Only RFC 850 dates (the only format with "-") depend on ``now``; the rest are cached
    # because the hit path parses the same stored Date and Last-Modified values over and over.
    if now is not None and b"-" in value:
        return _parse_date_uncached(value, now)
    return _parse_date_cached(value)


@functools.lru_cache(maxsize=4096)
def _parse_date_cached(value: bytes) -> tuple[float, bool] | None:
    return _parse_date_uncached(value, None)


def _parse_date_uncached(value: bytes, now: float | None) -> tuple[float, bool] | None:
    value = value.strip(b" \t")
    imf = True
    m = _IMF_RE.fullmatch(value)
    if m is not None:
        day, mon, year, hh, mm, ss = m.groups()
        y = int(year)
    else:
        imf = False
        m = _RFC850_RE.fullmatch(value)
        if m is not None:
            day, mon, year, hh, mm, ss = m.groups()
            y = _two_digit_year(int(year), now)
        else:
            m = _ASCTIME_RE.fullmatch(value)
            if m is None:
                return None
            mon, day, hh, mm, ss, year = m.groups()
            y = int(year)
    month = _MONTH_NUMBER[mon.lower()]
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or s > 60:  # 60: a leap second is a valid time-of-day (RFC 9110)
        return None
    try:
        datetime.date(y, month, d)
    except ValueError:
        return None
    return float(calendar.timegm((y, month, d, h, mi, s, 0, 0, 0))), imf


def _two_digit_year(yy: int, now: float | None) -> int:
    if now is None:
        # Without a clock, the POSIX strptime pivot: 69-99 -> 19xx, 00-68 -> 20xx.
        return 1900 + yy if yy >= 69 else 2000 + yy
    # RFC 9110 §5.6.7: a year more than 50 years in the future means the most recent past
    # year with those two digits, so the answer is the latest such year up to now + 50.
    limit = time.gmtime(max(0.0, min(now, 253402300799.0))).tm_year + 50
    return limit - (limit - yy) % 100


def parse_http_date(value: bytes, *, now: float | None = None) -> float | None:
    """IMF-fixdate, RFC 850 or asctime (RFC 9110 §5.6.7) to POSIX seconds; None if invalid.

    ``now`` only matters for RFC 850's two-digit years; without it a fixed pivot is used.
    """
    parsed = _parse_date_kind(value, now)
    return None if parsed is None else parsed[0]


def format_http_date(ts: float) -> bytes:
    """IMF-fixdate for ``ts`` (fractions dropped, clamped to years 1970-9999)."""
    t = time.gmtime(int(max(0.0, min(ts, 253402300799.0))))
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode("ascii")


def _date_header(headers: Headers, name: bytes, now: float | None = None) -> float | None:
    value = _first(headers, name)
    return None if value is None else parse_http_date(value, now=now)


# --- requests -------------------------------------------------------------------------------


class RequestAction(Enum):
    LOOKUP = "lookup"  # may be answered from the cache
    PASS = "pass"  # forward untouched, nothing stored
    INVALIDATE = "invalidate"  # forward; on a 2xx/3xx drop the affected entries (RFC 9111 §4.4)


def classify_request(method: bytes, headers: Headers) -> RequestAction:
    """What the cache does with a request, before looking anything up.

    Methods are case-sensitive (RFC 9110 §9.1), so ``get`` is an unknown method and passes.
    A GET or HEAD is passed rather than looked up when it asks for a protocol upgrade
    (WebSocket, h2c: the answer is a connection, not a representation) or carries a body:
    RFC 9110 §9.3.1 gives a GET body no meaning, yet some APIs select content with it, and the
    cache key cannot see it.
    """
    if method in _INVALIDATING_METHODS:
        return RequestAction.INVALIDATE
    if method not in _LOOKUP_METHODS:
        return RequestAction.PASS
    if _first(headers, b"upgrade") is not None:
        return RequestAction.PASS
    if _first(headers, b"transfer-encoding") is not None:
        return RequestAction.PASS
    for value in header_values(headers, b"content-length"):
        if value.strip(b" \t") not in (b"0", b""):
            return RequestAction.PASS
    return RequestAction.LOOKUP


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """What the client asked of the cache (RFC 9111 §5.2.1). Invalid values read as absent."""

    no_store: bool = False
    no_cache: bool = False
    max_age: float | None = None
    max_stale: float | None = None  # math.inf when given without a value: any staleness
    min_fresh: float | None = None
    only_if_cached: bool = False


_NO_DIRECTIVES = RequestDirectives()


def request_directives(headers: Headers) -> RequestDirectives:
    """Parse a request's Cache-Control, honouring ``Pragma: no-cache`` (RFC 9111 §5.4)."""
    if not any(n == b"cache-control" or n == b"pragma" for n, _ in headers):
        return _NO_DIRECTIVES  # the common case on the hit path: skip parsing and construction
    cc = parse_cache_control(headers)
    no_cache = "no-cache" in cc
    if not no_cache and _first(headers, b"cache-control") is None:
        no_cache = any(
            e.lower() == b"no-cache" for e in _split_list(header_values(headers, b"pragma"))
        )
    max_stale: float | None = None
    if "max-stale" in cc:
        raw = cc["max-stale"]
        max_stale = float("inf") if raw is None else _delta_seconds(raw)
    return RequestDirectives(
        no_store="no-store" in cc,
        no_cache=no_cache,
        max_age=_delta_seconds(cc.get("max-age")),
        max_stale=max_stale,
        min_fresh=_delta_seconds(cc.get("min-fresh")),
        only_if_cached="only-if-cached" in cc,
    )


# --- storing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreDecision:
    store: bool
    reason: str  # short phrase for logs and the access log's cache column


def _has_explicit_freshness(cc: dict[str, str | None], resp_headers: Headers) -> bool:
    return "s-maxage" in cc or "max-age" in cc or _first(resp_headers, b"expires") is not None


def storable(
    method: bytes, status: int, req_headers: Headers, resp_headers: Headers
) -> StoreDecision:
    """May a shared cache store this response (RFC 9111 §3, plus this project's rules)?

    A ``no-cache`` response is storable: it is simply revalidated before every use.
    """
    if method != b"GET":
        # HEAD is answered from a stored GET; storing a HEAD response would need a body-less
        # entry type for little gain. Other methods' responses are not reusable for GET here.
        return StoreDecision(False, "method not GET")
    if status == 206:
        return StoreDecision(False, "partial content")
    if status not in _HEURISTIC_STATUSES and status not in _EXPLICIT_ONLY_STATUSES:
        return StoreDecision(False, "status not cacheable")
    req_cc = parse_cache_control(req_headers)
    if "no-store" in req_cc:
        return StoreDecision(False, "request no-store")
    cc = parse_cache_control(resp_headers)
    if "no-store" in cc:
        return StoreDecision(False, "response no-store")
    if "private" in cc:
        # Qualified private="field" could be stored without the field (RFC 9111 §5.2.2.7), but a
        # shared cache that gets this wrong leaks one subscriber's data to another.
        return StoreDecision(False, "private")
    if _first(resp_headers, b"set-cookie") is not None or (
        _first(resp_headers, b"set-cookie2") is not None
    ):
        return StoreDecision(False, "Set-Cookie")
    if vary_names(resp_headers) is None:
        return StoreDecision(False, "Vary: *")
    if _first(resp_headers, b"content-range") is not None:
        return StoreDecision(False, "Content-Range")
    if _first(req_headers, b"authorization") is not None and not (
        "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    ):
        return StoreDecision(False, "Authorization without public/s-maxage/must-revalidate")
    if _first(req_headers, b"cookie") is not None and not ("public" in cc or "s-maxage" in cc):
        return StoreDecision(False, "Cookie without public/s-maxage")
    if _has_explicit_freshness(cc, resp_headers):
        return StoreDecision(True, "explicit freshness")
    if status in _EXPLICIT_ONLY_STATUSES:
        return StoreDecision(False, "no freshness information")
    if "public" in cc:
        return StoreDecision(True, "public")
    return StoreDecision(True, "heuristically cacheable")


# --- freshness ------------------------------------------------------------------------------


def freshness_lifetime(status: int, resp_headers: Headers, *, date_fallback: float) -> float:
    """RFC 9111 §4.2.1, shared cache: s-maxage, max-age, Expires - Date, then a heuristic.

    ``date_fallback`` stands in for a missing or invalid ``Date`` (the time the response was
    received). An invalid max-age or s-maxage, or an invalid Expires, means "already stale"
    (RFC 9111 §4.2.1 and §5.3). The heuristic (§4.2.2) is 10 % of the time since Last-Modified,
    capped at a day, and only for heuristically cacheable statuses without explicit expiry.
    """
    return _lifetime(status, resp_headers, parse_cache_control(resp_headers), date_fallback)


def _lifetime(
    status: int, resp_headers: Headers, cc: dict[str, str | None], date_fallback: float
) -> float:
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            delta = _delta_seconds(cc[directive])
            return 0.0 if delta is None else delta
    date = _date_header(resp_headers, b"date", date_fallback)
    if date is None:
        date = date_fallback
    expires_raw = _first(resp_headers, b"expires")
    if expires_raw is not None:
        expires = parse_http_date(expires_raw, now=date_fallback)
        return 0.0 if expires is None else max(0.0, expires - date)
    if status not in _HEURISTIC_STATUSES:
        return 0.0
    last_modified = _date_header(resp_headers, b"last-modified", date_fallback)
    if last_modified is None:
        return 0.0
    return min(max(0.0, (date - last_modified) * 0.1), 86400.0)


def current_age(
    resp_headers: Headers, *, request_time: float, response_time: float, now: float
) -> float:
    """RFC 9111 §4.2.3 current_age; never negative, non-decreasing in ``now``.

    An invalid or absent Age counts as 0 and an absent or invalid Date contributes no apparent
    age: both only ever make a response look younger by what the origin failed to tell us.
    """
    date_value = _date_header(resp_headers, b"date", response_time)
    apparent_age = 0.0 if date_value is None else max(0.0, response_time - date_value)
    raw_age = _first(resp_headers, b"age")
    age_value = _delta_seconds(raw_age.decode("latin-1")) if raw_age is not None else None
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (age_value or 0.0) + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    return max(0.0, corrected_initial_age + resident_time)


def age_header_value(age: float) -> bytes:
    """An ``Age`` field value: whole seconds, clamped to [0, 2^31] (RFC 9111 §5.1)."""
    if not age > 0:  # also catches NaN
        return b"0"
    return str(int(min(age, float(MAX_DELTA)))).encode("ascii")


class Freshness(Enum):
    FRESH = "fresh"  # serve without contacting the origin
    STALE = "stale"  # revalidate; a stale copy may still be served if the origin is unreachable
    MUST_REVALIDATE = "must-revalidate"  # revalidate and never serve this copy stale


def _no_cache_applies(cc: dict[str, str | None], resp_headers: Headers) -> bool:
    if "no-cache" not in cc:
        return False
    names = [n.strip(" \t").lower() for n in (cc["no-cache"] or "").split(",")]
    names = [n for n in names if n]
    if not names:
        return True
    # Qualified no-cache (RFC 9111 §5.2.2.4) forbids reusing the listed fields without
    # revalidation. Rather than serve an edited copy, revalidate whenever one is present.
    present = {n for n, _ in resp_headers}
    return any(n.encode("latin-1") in present for n in names)


def evaluate_freshness(
    status: int,
    resp_headers: Headers,
    req: RequestDirectives,
    *,
    request_time: float,
    response_time: float,
    now: float,
) -> Freshness:
    """May a stored response be served now without contacting the origin (RFC 9111 §4.2)?

    Request max-age and min-fresh can only make a response less acceptable. Request max-stale
    lets a stale response be served, but never one whose origin said must-revalidate,
    proxy-revalidate or s-maxage (§5.2.2.2, §5.2.2.8, §5.2.2.10), and never past request
    max-age or min-fresh.
    """
    cc = parse_cache_control(resp_headers)
    if req.no_cache or _no_cache_applies(cc, resp_headers):
        return Freshness.MUST_REVALIDATE
    lifetime = _lifetime(status, resp_headers, cc, response_time)
    age = current_age(resp_headers, request_time=request_time, response_time=response_time, now=now)
    client_refuses = (req.max_age is not None and age > req.max_age) or (
        req.min_fresh is not None and lifetime - age < req.min_fresh
    )
    if lifetime > age:
        return Freshness.STALE if client_refuses else Freshness.FRESH
    if "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc:
        return Freshness.MUST_REVALIDATE
    if not client_refuses and req.max_stale is not None and age - lifetime <= req.max_stale:
        return Freshness.FRESH
    return Freshness.STALE


# --- validation -----------------------------------------------------------------------------


def validation_headers(stored_resp_headers: Headers) -> list[Header]:
    """Conditional request fields to revalidate a stored response (RFC 9111 §4.3.1).

    Every stored ETag goes into one If-None-Match (several ETag fields are a broken origin, and
    asking with all of them still gets a 304 for whichever is current). If-Modified-Since is
    the Last-Modified value, else the Date (RFC 9110 §13.1.3), sent as received when it is an
    IMF-fixdate so that origins comparing strings still match.
    """
    out: list[Header] = []
    tags: list[bytes] = []
    for value in header_values(stored_resp_headers, b"etag"):
        if value and value not in tags:
            tags.append(value)
    if tags:
        out.append((b"if-none-match", b", ".join(tags)))
    for name in (b"last-modified", b"date"):
        raw = _first(stored_resp_headers, name)
        if raw is None:
            continue
        parsed = _parse_date_kind(raw, None)
        if parsed is None:
            continue
        ts, imf = parsed
        out.append((b"if-modified-since", raw if imf else format_http_date(ts)))
        break
    return out


def merge_not_modified(stored_resp_headers: Headers, not_modified_headers: Headers) -> list[Header]:
    """Stored fields updated from a 304 (RFC 9111 §3.2, §4.3.4).

    Each field in the 304 replaces all stored fields of that name, in the place of the first
    of them; new names are appended in the 304's order. Never taken from the 304: hop-by-hop
    fields and those its Connection names, and the fields the stored body depends on
    (Content-Length, Content-Encoding, Transfer-Encoding, Content-Range), which stay as stored.
    Set-Cookie from a 304 is dropped, because the result is meant to be stored and shared; a
    caller that wants to hand it to the revalidating client must do so itself. The 304 may also
    carry ``private`` or ``no-store``: callers must run :func:`storable` on the result before
    writing it back.
    """
    updates: dict[bytes, list[bytes]] = {}
    for name, value in strip_hop_by_hop(not_modified_headers):
        if name in _KEPT_ON_304:
            continue
        updates.setdefault(name, []).append(value)
    out: list[Header] = []
    placed: set[bytes] = set()
    for name, value in stored_resp_headers:
        if name not in updates:
            out.append((name, value))
        elif name not in placed:
            placed.add(name)
            out.extend((name, v) for v in updates[name])
    for name, values in updates.items():
        if name not in placed:
            out.extend((name, v) for v in values)
    return out


def strip_hop_by_hop(headers: Headers) -> list[Header]:
    """Without the fields that describe only one connection (RFC 9110 §7.6.1).

    Fields listed in Connection go too, whatever they are: a client can thereby strip, say,
    Cookie from what is forwarded, so callers must decide cacheability on the same stripped
    list they forward.
    """
    listed = {e.lower() for e in _split_list(header_values(headers, b"connection"))}
    return [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n not in listed]


# --- Vary -----------------------------------------------------------------------------------


def vary_names(resp_headers: Headers) -> tuple[bytes, ...] | None:
    """The request fields a response varies on: lowercase, sorted, deduplicated.

    None for ``Vary: *`` (never matches another request, RFC 9111 §4.1); () without Vary.
    """
    names = {e.lower() for e in _split_list(header_values(resp_headers, b"vary"))}
    if b"*" in names:
        return None
    return tuple(sorted(names))


_WS_RUN = re.compile(rb"[ \t]+")
_WS_COMMA = re.compile(rb" ?, ?")
_EMPTY_ELEMENTS = re.compile(rb",{2,}")


def _normalise_field(values: list[bytes]) -> bytes:
    # RFC 9111 §4.1 allows normalising whitespace and combining field lines; empty list
    # elements carry no meaning (RFC 9110 §5.6.1). Case is kept: it matters for some fields.
    joined = b",".join(values)
    joined = _WS_COMMA.sub(b",", _WS_RUN.sub(b" ", joined))
    return _EMPTY_ELEMENTS.sub(b",", joined).strip(b" ,")


def vary_key(names: Sequence[bytes], req_headers: Headers) -> bytes:
    """Canonical bytes for the request's values of ``names``: equal iff the values match.

    Length-prefixed so that no value can forge another's encoding; an absent field differs
    from an empty one (RFC 9111 §4.1).
    """
    parts: list[bytes] = []
    for name in sorted({n.lower() for n in names}):
        values = header_values(req_headers, name)
        parts.append(b"%d:%s" % (len(name), name))
        if not values:
            parts.append(b"-")
        else:
            value = _normalise_field(values)
            parts.append(b"+%d:%s" % (len(value), value))
    return b"".join(parts)


# --- invalidation ---------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lowercased, brackets and userinfo removed
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _canonical_url(url: str) -> str | None:
    """Scheme and host lowercased, default port and userinfo dropped, no fragment: the form
    the request path uses for cache keys, so an invalidation finds what a lookup stored."""
    origin = _origin(url)
    if origin is None:
        return None
    scheme, host, port = origin
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    parts = urlsplit(url)
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def invalidation_targets(
    method: bytes, status: int, resp_headers: Headers, request_url: bytes
) -> list[bytes]:
    """URLs whose stored responses an unsafe request made stale (RFC 9111 §4.4).

    Only for POST/PUT/DELETE/PATCH answered 2xx/3xx: the request URL, then Location and
    Content-Location resolved against it when they share its origin (scheme, host, port), which
    stops one site from evicting another's entries. The request URL is returned as given; the
    resolved ones in canonical form (lowercase scheme and host, no default port, no userinfo,
    no fragment). Duplicates are removed.
    """
    if method not in _INVALIDATING_METHODS or not 200 <= status < 400:
        return []
    out = [request_url]
    base = request_url.decode("latin-1")
    origin = _origin(base)
    if origin is None:
        return out
    for name in (b"location", b"content-location"):
        for value in header_values(resp_headers, name):
            try:
                target = _canonical_url(urljoin(base, value.decode("latin-1")))
            except ValueError:
                continue
            if target is None or _origin(target) != origin:
                continue
            encoded = target.encode("latin-1")
            if encoded not in out:
                out.append(encoded)
    return out


# --- ranges ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Returned by :func:`parse_range` when no range overlaps the body: answer 416.

    A value, not an exception: "unsatisfiable" is an ordinary outcome of a valid request. Test
    it with ``isinstance(result, Unsatisfiable)`` or ``result is UNSATISFIABLE``.
    """


UNSATISFIABLE = Unsatisfiable()

_DIGITS = re.compile(rb"[0-9]+")
_HUGE = 1 << 63


def _position(digits: bytes) -> int | None:
    if not _DIGITS.fullmatch(digits):
        return None
    digits = digits.lstrip(b"0") or b"0"
    return _HUGE if len(digits) > 18 else int(digits)


def parse_range(
    value: bytes | None, size: int
) -> tuple[tuple[int, int], ...] | Unsatisfiable | None:
    """A Range field against a body of ``size`` bytes (RFC 9110 §14.1.2, §14.2).

    Returns sorted, non-overlapping, non-adjacent inclusive ``(first, last)`` pairs within
    ``[0, size)``; None to ignore the field and send the full 200 (absent, malformed, a unit
    other than bytes, more than 16 ranges, more than two mutually overlapping ranges, or an
    empty body, where no range can select a byte); :data:`UNSATISFIABLE` when the field is valid
    but selects nothing (416).
    """
    if value is None or size <= 0:
        return None
    unit, sep, spec = value.strip(b" \t").partition(b"=")
    if not sep or unit.strip(b" \t").lower() != b"bytes":
        return None
    elements = [e.strip(b" \t") for e in spec.split(b",")]
    elements = [e for e in elements if e]
    if not elements or len(elements) > MAX_RANGES:
        return None
    wanted: list[tuple[int, int]] = []
    for element in elements:
        first_raw, dash, last_raw = element.partition(b"-")
        if not dash:
            return None
        if not first_raw:
            suffix = _position(last_raw)
            if suffix is None:
                return None
            if suffix > 0:
                wanted.append((max(0, size - suffix), size - 1))
            continue
        first = _position(first_raw)
        if first is None:
            return None
        if last_raw:
            last = _position(last_raw)
            if last is None or last < first:
                return None
        else:
            last = size - 1
        if first < size:
            wanted.append((first, min(last, size - 1)))
    if not wanted:
        return UNSATISFIABLE
    wanted.sort()
    merged: list[tuple[int, int]] = []
    overlaps = 0
    for first, last in wanted:
        if merged and first <= merged[-1][1] + 1:
            if first <= merged[-1][1]:
                overlaps += 1
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    if overlaps > _MAX_OVERLAPS:
        return None
    return tuple(merged)


# --- entity tags and client conditionals ----------------------------------------------------


def _entity_tags(values: Iterable[bytes]) -> list[tuple[bool, bytes]]:
    """(weak, opaque-tag) pairs of entity-tag lists; commas inside quotes are kept.

    An unquoted element is kept as a strong tag: origins that send bare ETags get them echoed
    back bare by clients, and comparing the bytes is still safe.
    """
    out: list[tuple[bool, bytes]] = []
    for value in values:
        i, end = 0, len(value)
        while i < end:
            while i < end and value[i : i + 1] in (b" ", b"\t", b","):
                i += 1
            if i >= end:
                break
            weak = value[i : i + 2] in (b"W/", b"w/")
            if weak:
                i += 2
            if value[i : i + 1] == b'"':
                close = value.find(b'"', i + 1)
                close = end - 1 if close < 0 else close
                out.append((weak, value[i : close + 1]))
                i = close + 1
                while i < end and value[i : i + 1] != b",":
                    i += 1
            else:
                comma = value.find(b",", i)
                comma = end if comma < 0 else comma
                tag = value[i:comma].strip(b" \t")
                if tag:
                    out.append((weak, tag))
                i = comma
    return out


def _stored_etag(stored_resp_headers: Headers) -> tuple[bool, bytes] | None:
    raw = _first(stored_resp_headers, b"etag")
    if raw is None:
        return None
    tags = _entity_tags([raw])
    return tags[0] if tags else None


def _is_star(values: list[bytes]) -> bool:
    return len(values) == 1 and values[0].strip(b" \t") == b"*"


def _single_date(headers: Headers, name: bytes) -> float | None:
    # RFC 9110 §13.1.3/§13.1.4: a list of dates (several fields) is invalid and ignored.
    values = header_values(headers, name)
    return parse_http_date(values[0]) if len(values) == 1 else None


def _strong_last_modified(stored_resp_headers: Headers) -> float | None:
    # RFC 9110 §8.8.2.2: a cache may treat Last-Modified as strong only when the stored Date is
    # at least a second later, i.e. the resource could not change twice in that second unseen.
    last_modified = _date_header(stored_resp_headers, b"last-modified")
    date = _date_header(stored_resp_headers, b"date")
    if last_modified is None or date is None or date - last_modified < 1:
        return None
    return last_modified


def if_range_matches(if_range: bytes | None, stored_resp_headers: Headers) -> bool:
    """Does If-Range let the Range be honoured (RFC 9110 §13.1.5)? True without If-Range.

    Strong comparison only: a weak ETag never matches, and a date matches only a strong
    Last-Modified it equals exactly. When False the full representation is sent.
    """
    if if_range is None:
        return True
    value = if_range.strip(b" \t")
    if value.startswith((b'"', b"W/", b"w/")):
        tags = _entity_tags([value])
        stored = _stored_etag(stored_resp_headers)
        if len(tags) != 1 or stored is None:
            return False
        (weak, tag), (stored_weak, stored_tag) = tags[0], stored
        return not weak and not stored_weak and tag == stored_tag
    date = parse_http_date(value)
    last_modified = _strong_last_modified(stored_resp_headers)
    return date is not None and last_modified is not None and date == last_modified


_CONDITIONAL_FIELDS = frozenset(
    {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"}
)


class ConditionalResult(Enum):
    NONE = "none"  # no precondition applies: serve normally
    NOT_MODIFIED = "not-modified"  # 304
    PRECONDITION_FAILED = "precondition-failed"  # 412


def evaluate_client_conditionals(
    method: bytes, req_headers: Headers, stored_resp_headers: Headers
) -> ConditionalResult:
    """A client's preconditions against a stored response (RFC 9110 §13.2.2, GET/HEAD only).

    Order: If-Match (strong), else If-Unmodified-Since; then If-None-Match (weak, ``*`` matches
    the stored representation), else If-Modified-Since against Last-Modified or, lacking it,
    Date (RFC 9111 §4.3.2). Invalid dates and date lists are ignored. Other methods are never
    answered from the cache, so they get NONE.
    """
    if method not in _LOOKUP_METHODS:
        return ConditionalResult.NONE
    if not any(n in _CONDITIONAL_FIELDS for n, _ in req_headers):
        return ConditionalResult.NONE
    stored_tag = _stored_etag(stored_resp_headers)
    if_match = header_values(req_headers, b"if-match")
    if if_match:
        if not _is_star(if_match):
            matched = (
                stored_tag is not None
                and not stored_tag[0]
                and any(not weak and tag == stored_tag[1] for weak, tag in _entity_tags(if_match))
            )
            if not matched:
                return ConditionalResult.PRECONDITION_FAILED
    else:
        unmodified_since = _single_date(req_headers, b"if-unmodified-since")
        last_modified = _date_header(stored_resp_headers, b"last-modified")
        if (
            unmodified_since is not None
            and last_modified is not None
            and last_modified > unmodified_since
        ):
            return ConditionalResult.PRECONDITION_FAILED
    if_none_match = header_values(req_headers, b"if-none-match")
    if if_none_match:
        if _is_star(if_none_match):
            return ConditionalResult.NOT_MODIFIED
        if stored_tag is not None and any(
            tag == stored_tag[1] for _, tag in _entity_tags(if_none_match)
        ):
            return ConditionalResult.NOT_MODIFIED
        return ConditionalResult.NONE
    modified_since = _single_date(req_headers, b"if-modified-since")
    if modified_since is None:
        return ConditionalResult.NONE
    reference = _date_header(stored_resp_headers, b"last-modified")
    if reference is None:
        reference = _date_header(stored_resp_headers, b"date")
    if reference is not None and reference <= modified_since:
        return ConditionalResult.NOT_MODIFIED
    return ConditionalResult.NONE
