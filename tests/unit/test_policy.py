"""Table tests for cache.policy, one table per rule, each row naming the RFC text it checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import policy
from cache.policy import (
    UNSATISFIABLE,
    ConditionalResult,
    Freshness,
    RequestAction,
    RequestDirectives,
    Unsatisfiable,
)

H = list[tuple[bytes, bytes]]

# 1994-11-06 08:49:37 UTC, the RFC 9110 §5.6.7 example.
T0 = 784111777.0
D0 = b"Sun, 06 Nov 1994 08:49:37 GMT"


def hdr(*pairs: tuple[str, str | bytes]) -> H:
    return [(n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in pairs]


def date(ts: float) -> bytes:
    return policy.format_http_date(ts)


# --- header_values / Cache-Control ---------------------------------------------------------


def test_header_values_keeps_order_and_does_not_split_lists() -> None:
    headers = hdr(("vary", "a, b"), ("x", "1"), ("vary", "c"))
    assert policy.header_values(headers, b"vary") == [b"a, b", b"c"]
    assert policy.header_values(headers, b"absent") == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # RFC 9111 §5.2: directive names are case-insensitive tokens
        (["Max-Age=60, NO-CACHE"], {"max-age": "60", "no-cache": None}),
        # §5.2: arguments may be token or quoted-string
        (['max-age="60"'], {"max-age": "60"}),
        (
            ['no-cache="set-cookie, x-foo", public'],
            {"no-cache": "set-cookie, x-foo", "public": None},
        ),
        # quoted-pair inside a quoted-string (RFC 9110 §5.6.4)
        (['ext="a\\"b"'], {"ext": 'a"b'}),
        # several field lines are one list (RFC 9110 §5.3)
        (["public", "max-age=5"], {"public": None, "max-age": "5"}),
        # §4.2.1: with duplicate directives the first occurrence is used
        (["max-age=60, max-age=0"], {"max-age": "60"}),
        (["max-age=60", "max-age=0"], {"max-age": "60"}),
        # empty list elements and whitespace are ignored (RFC 9110 §5.6.1)
        ([" , ,private ,, "], {"private": None}),
        (["max-age = 10"], {"max-age": "10"}),
        (["max-age="], {"max-age": ""}),
        ([], {}),
        # unterminated quoted-string: keep what is there, never raise
        (['no-cache="abc'], {"no-cache": "abc"}),
        (['a="x" junk, b'], {"a": "x", "b": None}),
    ],
)
def test_parse_cache_control(fields: list[str], expected: dict[str, str | None]) -> None:
    headers = [(b"cache-control", f.encode()) for f in fields]
    assert policy.parse_cache_control(headers) == expected


def test_parse_cache_control_ignores_other_fields() -> None:
    assert policy.parse_cache_control(hdr(("pragma", "no-cache"), ("x-cache-control", "a"))) == {}


@given(st.lists(st.binary(max_size=60), max_size=4))
def test_parse_cache_control_never_raises(values: list[bytes]) -> None:
    result = policy.parse_cache_control([(b"cache-control", v) for v in values])
    assert all(k == k.lower() and k for k in result)


# --- HTTP-date ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 9110 §5.6.7: the three formats a recipient must accept
        (D0, T0),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", T0),
        (b"Sun Nov  6 08:49:37 1994", T0),
        (b"Sun Nov 06 08:49:37 1994", T0),
        # tolerated variants real servers send
        (b"Sun, 6 Nov 1994 08:49:37 GMT", T0),
        (b"sun, 06 nov 1994 08:49:37 gmt", T0),
        (b"  Sun, 06 Nov 1994 08:49:37 GMT  ", T0),
        (b"Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        # leap second is valid time-of-day
        (b"Sat, 31 Dec 2016 23:59:60 GMT", 1483228800.0),
        # invalid: RFC 9111 §5.3 treats these as "in the past" via None
        (b"0", None),
        (b"-1", None),
        (b"", None),
        (b"Sun, 06 Nov 1994 08:49:37 PST", None),
        (b"Sun, 06 Nov 1994 08:49:37", None),
        (b"Sun, 31 Feb 1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994 24:00:00 GMT", None),
        (b"Sun, 06 Nov 1994 08:60:00 GMT", None),
        (b"Sun, 06 Foo 1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 0000 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT", None),
        ("Sun, \uff10\uff16 Nov 1994 08:49:37 GMT".encode(), None),  # fullwidth digits
    ],
)
def test_parse_http_date(value: bytes, expected: float | None) -> None:
    assert policy.parse_http_date(value) == expected


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_last_century() -> None:
    # RFC 9110 §5.6.7
    now = policy.parse_http_date(b"Wed, 01 Jan 2025 00:00:00 GMT")
    assert now is not None
    y75 = policy.parse_http_date(b"Monday, 01-Jan-75 00:00:00 GMT", now=now)
    y76 = policy.parse_http_date(b"Monday, 01-Jan-76 00:00:00 GMT", now=now)
    y30 = policy.parse_http_date(b"Monday, 01-Jan-30 00:00:00 GMT", now=now)
    assert y75 == policy.parse_http_date(b"Tue, 01 Jan 2075 00:00:00 GMT")
    assert y76 == policy.parse_http_date(b"Thu, 01 Jan 1976 00:00:00 GMT")
    assert y30 == policy.parse_http_date(b"Tue, 01 Jan 2030 00:00:00 GMT")
    # without a clock: the POSIX pivot
    assert policy.parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == T0


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T0, D0),
        (T0 + 0.999, D0),  # fractions dropped, never rounded up into the future
        (0.0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (-5.0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (1e20, b"Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
def test_format_http_date_is_imf_fixdate(ts: float, expected: bytes) -> None:
    assert policy.format_http_date(ts) == expected


@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trips(ts: int) -> None:
    assert policy.parse_http_date(policy.format_http_date(ts)) == ts


@given(st.binary(max_size=40))
def test_parse_http_date_never_raises(value: bytes) -> None:
    policy.parse_http_date(value, now=T0)


# --- classify_request -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        (b"GET", [], RequestAction.LOOKUP),
        (b"HEAD", [], RequestAction.LOOKUP),
        (b"GET", hdr(("range", "bytes=0-1"), ("cookie", "a=b")), RequestAction.LOOKUP),
        (b"GET", hdr(("content-length", "0")), RequestAction.LOOKUP),
        # RFC 9111 §4.4: unsafe methods invalidate
        (b"POST", [], RequestAction.INVALIDATE),
        (b"PUT", [], RequestAction.INVALIDATE),
        (b"DELETE", [], RequestAction.INVALIDATE),
        (b"PATCH", [], RequestAction.INVALIDATE),
        # RFC 9110 §9.1: methods are case-sensitive; unknown ones pass
        (b"get", [], RequestAction.PASS),
        (b"OPTIONS", [], RequestAction.PASS),
        (b"TRACE", [], RequestAction.PASS),
        (b"CONNECT", [], RequestAction.PASS),
        (b"PROPFIND", [], RequestAction.PASS),
        # project rules: upgrades and GET bodies are not representations the key can see
        (b"GET", hdr(("upgrade", "websocket"), ("connection", "upgrade")), RequestAction.PASS),
        (b"GET", hdr(("content-length", "5")), RequestAction.PASS),
        (b"GET", hdr(("transfer-encoding", "chunked")), RequestAction.PASS),
    ],
)
def test_classify_request(method: bytes, headers: H, expected: RequestAction) -> None:
    assert policy.classify_request(method, headers) is expected


# --- request_directives ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], RequestDirectives()),
        # RFC 9111 §5.2.1.*
        (hdr(("cache-control", "no-store")), RequestDirectives(no_store=True)),
        (hdr(("cache-control", "no-cache")), RequestDirectives(no_cache=True)),
        (hdr(("cache-control", "max-age=0")), RequestDirectives(max_age=0.0)),
        (hdr(("cache-control", "max-stale")), RequestDirectives(max_stale=math.inf)),
        (hdr(("cache-control", "max-stale=30")), RequestDirectives(max_stale=30.0)),
        (hdr(("cache-control", "min-fresh=20")), RequestDirectives(min_fresh=20.0)),
        (hdr(("cache-control", "only-if-cached")), RequestDirectives(only_if_cached=True)),
        # §1.2.2: delta-seconds beyond 2^31 are 2^31
        (hdr(("cache-control", "max-age=99999999999999")), RequestDirectives(max_age=2.0**31)),
        # invalid values read as absent
        (hdr(("cache-control", "max-age=abc, min-fresh=-1")), RequestDirectives()),
        (hdr(("cache-control", "max-stale=x")), RequestDirectives()),
        # §5.4: Pragma: no-cache counts only without a Cache-Control field
        (hdr(("pragma", "no-cache")), RequestDirectives(no_cache=True)),
        (hdr(("pragma", "foo, No-Cache")), RequestDirectives(no_cache=True)),
        (
            hdr(("pragma", "no-cache"), ("cache-control", "max-age=5")),
            RequestDirectives(max_age=5.0),
        ),
        (hdr(("pragma", "nocache")), RequestDirectives()),
    ],
)
def test_request_directives(headers: H, expected: RequestDirectives) -> None:
    assert policy.request_directives(headers) == expected


# --- storable -------------------------------------------------------------------------------

OK = hdr(("cache-control", "max-age=60"))


@pytest.mark.parametrize(
    ("method", "status", "req", "resp", "store", "reason"),
    [
        (b"GET", 200, [], OK, True, "explicit freshness"),
        (b"GET", 200, [], [], True, "heuristically cacheable"),  # RFC 9110 §15.1
        (b"GET", 200, [], hdr(("expires", D0.decode())), True, "explicit freshness"),
        # project rule: only GET responses are stored
        (b"HEAD", 200, [], OK, False, "method not GET"),
        (b"POST", 200, [], OK, False, "method not GET"),
        # statuses
        (b"GET", 206, [], OK, False, "partial content"),
        (b"GET", 304, [], OK, False, "status not cacheable"),
        (b"GET", 100, [], OK, False, "status not cacheable"),
        (b"GET", 500, [], OK, False, "status not cacheable"),
        (b"GET", 201, [], OK, False, "status not cacheable"),
        (b"GET", 404, [], [], True, "heuristically cacheable"),
        (b"GET", 301, [], [], True, "heuristically cacheable"),
        (b"GET", 308, [], [], True, "heuristically cacheable"),
        (b"GET", 501, [], [], True, "heuristically cacheable"),
        # 302/303/307 only with explicit freshness
        (b"GET", 302, [], [], False, "no freshness information"),
        (b"GET", 307, [], hdr(("cache-control", "public")), False, "no freshness information"),
        (b"GET", 302, [], OK, True, "explicit freshness"),
        (b"GET", 303, [], hdr(("cache-control", "s-maxage=5")), True, "explicit freshness"),
        (b"GET", 307, [], hdr(("expires", D0.decode())), True, "explicit freshness"),
        # RFC 9111 §3: no-store in request or response
        (b"GET", 200, hdr(("cache-control", "no-store")), OK, False, "request no-store"),
        (
            b"GET",
            200,
            [],
            hdr(("cache-control", "no-store, max-age=60")),
            False,
            "response no-store",
        ),
        # §5.2.2.7: private, qualified or not, is never stored by a shared cache
        (b"GET", 200, [], hdr(("cache-control", "private, max-age=60")), False, "private"),
        (b"GET", 200, [], hdr(("cache-control", 'private="x-user", public')), False, "private"),
        # §5.2.2.4: no-cache responses are storable (revalidated on every use)
        (b"GET", 200, [], hdr(("cache-control", "no-cache")), True, "heuristically cacheable"),
        # project rule: Set-Cookie never stored, even when public
        (b"GET", 200, [], OK + hdr(("set-cookie", "a=b")), False, "Set-Cookie"),
        (
            b"GET",
            200,
            [],
            hdr(("cache-control", "public"), ("set-cookie", "a")),
            False,
            "Set-Cookie",
        ),
        # §4.1: Vary: * never matches
        (b"GET", 200, [], OK + hdr(("vary", "accept, *")), False, "Vary: *"),
        (b"GET", 200, [], OK + hdr(("vary", "accept-encoding")), True, "explicit freshness"),
        # project rule: only full bodies
        (b"GET", 200, [], OK + hdr(("content-range", "bytes 0-1/2")), False, "Content-Range"),
        # §3.5: Authorization needs public, s-maxage or must-revalidate
        (
            b"GET",
            200,
            hdr(("authorization", "Basic x")),
            OK,
            False,
            "Authorization without public/s-maxage/must-revalidate",
        ),
        (
            b"GET",
            200,
            hdr(("authorization", "x")),
            hdr(("cache-control", "public")),
            True,
            "public",
        ),
        (
            b"GET",
            200,
            hdr(("authorization", "x")),
            hdr(("cache-control", "s-maxage=10")),
            True,
            "explicit freshness",
        ),
        (
            b"GET",
            200,
            hdr(("authorization", "x")),
            hdr(("cache-control", "must-revalidate, max-age=10")),
            True,
            "explicit freshness",
        ),
        # project rule: Cookie needs public or s-maxage
        (b"GET", 200, hdr(("cookie", "s=1")), OK, False, "Cookie without public/s-maxage"),
        (
            b"GET",
            200,
            hdr(("cookie", "s=1")),
            hdr(("cache-control", "must-revalidate, max-age=9")),
            False,
            "Cookie without public/s-maxage",
        ),
        (b"GET", 200, hdr(("cookie", "s=1")), hdr(("cache-control", "public")), True, "public"),
        (
            b"GET",
            200,
            hdr(("cookie", "s=1")),
            hdr(("cache-control", "s-maxage=1")),
            True,
            "explicit freshness",
        ),
    ],
)
def test_storable(method: bytes, status: int, req: H, resp: H, store: bool, reason: str) -> None:
    assert policy.storable(method, status, req, resp) == policy.StoreDecision(store, reason)


_any_header = st.tuples(
    st.sampled_from(
        [
            b"cache-control",
            b"expires",
            b"vary",
            b"etag",
            b"last-modified",
            b"date",
            b"age",
            b"pragma",
            b"content-type",
        ]
    ),
    st.sampled_from(
        [
            b"public",
            b"max-age=60",
            b"s-maxage=5",
            b"must-revalidate",
            b"no-cache",
            D0,
            b"*",
            b"accept",
            b'"x"',
            b"",
            b"immutable",
        ]
    ),
)
_poison = st.sampled_from(
    [
        (b"cache-control", b"no-store"),
        (b"cache-control", b"private"),
        (b"cache-control", b'public, private="x"'),
        (b"cache-control", b"max-age=5, no-store"),
        (b"set-cookie", b"id=1"),
    ]
)


@given(
    st.lists(_any_header, max_size=6),
    _poison,
    st.integers(min_value=0, max_value=6),
    st.sampled_from([200, 203, 204, 301, 302, 404]),
    st.lists(
        st.sampled_from([(b"authorization", b"x"), (b"cookie", b"a"), (b"accept", b"*/*")]),
        max_size=3,
    ),
)
def test_no_store_private_set_cookie_never_storable(
    others: H, poison: tuple[bytes, bytes], at: int, status: int, req: H
) -> None:
    resp = list(others)
    resp.insert(min(at, len(resp)), poison)
    assert not policy.storable(b"GET", status, req, resp).store


# --- freshness_lifetime ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        # RFC 9111 §4.2.1: s-maxage, then max-age, then Expires - Date
        (200, hdr(("cache-control", "max-age=60, s-maxage=10")), 10.0),
        (200, hdr(("cache-control", "max-age=60"), ("expires", date(T0 + 9999))), 60.0),
        (200, hdr(("date", D0.decode()), ("expires", date(T0 + 120))), 120.0),
        (200, hdr(("date", D0.decode()), ("expires", date(T0 - 120))), 0.0),
        # Date missing: Expires - date_fallback
        (200, hdr(("expires", date(T0 + 30))), 30.0),
        # §5.3: invalid Expires means already expired, and it suppresses the heuristic
        (200, hdr(("expires", "0"), ("last-modified", date(T0 - 10_000))), 0.0),
        # §4.2.1: invalid max-age is stale, and it wins over Expires
        (200, hdr(("cache-control", "max-age=1.5"), ("expires", date(T0 + 60))), 0.0),
        (200, hdr(("cache-control", "s-maxage=x, max-age=60")), 0.0),
        (200, hdr(("cache-control", "max-age=99999999999")), 2.0**31),
        # §4.2.2: heuristic, 10 % of Date - Last-Modified, capped at one day
        (200, hdr(("date", D0.decode()), ("last-modified", date(T0 - 1000))), 100.0),
        (404, hdr(("date", D0.decode()), ("last-modified", date(T0 - 1000))), 100.0),
        (200, hdr(("date", D0.decode()), ("last-modified", date(T0 - 10**8))), 86400.0),
        (200, hdr(("last-modified", date(T0 - 1000))), 100.0),  # Date from date_fallback
        (200, hdr(("date", D0.decode()), ("last-modified", date(T0 + 1000))), 0.0),
        # heuristic only for heuristically cacheable statuses
        (302, hdr(("date", D0.decode()), ("last-modified", date(T0 - 1000))), 0.0),
        (307, hdr(("date", D0.decode()), ("last-modified", date(T0 - 1000))), 0.0),
        (200, [], 0.0),
        (200, hdr(("cache-control", "public")), 0.0),
    ],
)
def test_freshness_lifetime(status: int, headers: H, expected: float) -> None:
    assert policy.freshness_lifetime(status, headers, date_fallback=T0) == expected


# --- current_age ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "request_time", "response_time", "now", "expected"),
    [
        # RFC 9111 §4.2.3: no Date, no Age: only response_delay + resident_time
        ([], T0, T0, T0, 0.0),
        ([], T0 - 2, T0, T0 + 10, 12.0),
        # apparent_age = response_time - date_value
        (hdr(("date", date(T0 - 30))), T0, T0, T0 + 5, 35.0),
        # Age header + response_delay wins when larger
        (hdr(("date", date(T0 - 30)), ("age", "100")), T0 - 1, T0, T0, 101.0),
        (hdr(("date", date(T0 - 300)), ("age", "100")), T0 - 1, T0, T0, 300.0),
        # Date ahead of us (clock skew): apparent_age clamps to 0
        (hdr(("date", date(T0 + 500))), T0, T0, T0 + 1, 1.0),
        # invalid Age is ignored
        (hdr(("age", "-5")), T0, T0, T0 + 1, 1.0),
        (hdr(("age", "abc")), T0, T0, T0, 0.0),
        (hdr(("age", "99999999999999999")), T0, T0, T0, 2.0**31),
        # now before response_time never gives a negative age
        ([], T0, T0, T0 - 100, 0.0),
        # request_time after response_time: response_delay clamps to 0
        ([], T0 + 10, T0, T0, 0.0),
    ],
)
def test_current_age(
    headers: H, request_time: float, response_time: float, now: float, expected: float
) -> None:
    got = policy.current_age(
        headers, request_time=request_time, response_time=response_time, now=now
    )
    assert got == expected


_times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"date", b"age"]),
            st.one_of(st.binary(max_size=12), _times.map(policy.format_http_date)),
        ),
        max_size=3,
    ),
    _times,
    _times,
    _times,
    st.floats(min_value=0, max_value=1e6),
)
def test_current_age_never_negative_and_monotonic(
    headers: H, request_time: float, response_time: float, now: float, later: float
) -> None:
    kw = {"request_time": request_time, "response_time": response_time}
    a = policy.current_age(headers, now=now, **kw)
    b = policy.current_age(headers, now=now + later, **kw)
    assert 0 <= a <= b


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.0, b"0"),
        (12.9, b"12"),
        (-3.0, b"0"),
        (math.nan, b"0"),
        (math.inf, b"2147483648"),
        (1e30, b"2147483648"),
    ],
)
def test_age_header_value(age: float, expected: bytes) -> None:
    # RFC 9111 §5.1: delta-seconds, 2^31 when too large
    assert policy.age_header_value(age) == expected


# --- evaluate_freshness ---------------------------------------------------------------------

NO = RequestDirectives()


def fresh(resp: H, req: RequestDirectives = NO, *, age: float, status: int = 200) -> Freshness:
    # Response received at T0 with Date T0; evaluated `age` seconds later.
    headers = hdr(("date", D0.decode())) + resp
    return policy.evaluate_freshness(
        status, headers, req, request_time=T0, response_time=T0, now=T0 + age
    )


@pytest.mark.parametrize(
    ("resp", "req", "age", "expected"),
    [
        # RFC 9111 §4.2: fresh iff freshness_lifetime > current_age
        (hdr(("cache-control", "max-age=60")), NO, 59, Freshness.FRESH),
        (hdr(("cache-control", "max-age=60")), NO, 60, Freshness.STALE),
        (hdr(("cache-control", "max-age=0")), NO, 0, Freshness.STALE),
        ([], NO, 0, Freshness.STALE),
        # §5.2.2.4: unqualified no-cache always revalidates
        (hdr(("cache-control", "no-cache, max-age=600")), NO, 0, Freshness.MUST_REVALIDATE),
        (hdr(("cache-control", 'no-cache=""')), NO, 0, Freshness.MUST_REVALIDATE),
        # qualified no-cache: revalidate only when a named field is present
        (
            hdr(("cache-control", 'no-cache="x-user", max-age=60'), ("x-user", "a")),
            NO,
            0,
            Freshness.MUST_REVALIDATE,
        ),
        (hdr(("cache-control", 'no-cache="X-User", max-age=60')), NO, 0, Freshness.FRESH),
        # §5.2.1.4: request no-cache
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(no_cache=True),
            0,
            Freshness.MUST_REVALIDATE,
        ),
        # §5.2.2.2 / .8 / .10: must-revalidate, proxy-revalidate, s-maxage when stale
        (hdr(("cache-control", "max-age=60, must-revalidate")), NO, 10, Freshness.FRESH),
        (hdr(("cache-control", "max-age=60, must-revalidate")), NO, 61, Freshness.MUST_REVALIDATE),
        (hdr(("cache-control", "max-age=60, proxy-revalidate")), NO, 61, Freshness.MUST_REVALIDATE),
        (hdr(("cache-control", "s-maxage=60")), NO, 61, Freshness.MUST_REVALIDATE),
        # §5.2.1.1: request max-age bounds the age
        (
            hdr(("cache-control", "max-age=600")),
            RequestDirectives(max_age=30.0),
            31,
            Freshness.STALE,
        ),
        (
            hdr(("cache-control", "max-age=600")),
            RequestDirectives(max_age=30.0),
            30,
            Freshness.FRESH,
        ),
        (hdr(("cache-control", "max-age=600")), RequestDirectives(max_age=0.0), 1, Freshness.STALE),
        # §5.2.1.3: min-fresh
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(min_fresh=30.0),
            29,
            Freshness.FRESH,
        ),
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(min_fresh=30.0),
            31,
            Freshness.STALE,
        ),
        # §5.2.1.2: max-stale lets a stale response be served ...
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(max_stale=10.0),
            70,
            Freshness.FRESH,
        ),
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(max_stale=10.0),
            71,
            Freshness.STALE,
        ),
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(max_stale=math.inf),
            1e9,
            Freshness.FRESH,
        ),
        # ... but never over must-revalidate / proxy-revalidate / s-maxage / no-cache
        (
            hdr(("cache-control", "max-age=60, must-revalidate")),
            RequestDirectives(max_stale=math.inf),
            61,
            Freshness.MUST_REVALIDATE,
        ),
        (
            hdr(("cache-control", "max-age=60, proxy-revalidate")),
            RequestDirectives(max_stale=math.inf),
            61,
            Freshness.MUST_REVALIDATE,
        ),
        (
            hdr(("cache-control", "s-maxage=60")),
            RequestDirectives(max_stale=math.inf),
            61,
            Freshness.MUST_REVALIDATE,
        ),
        (
            hdr(("cache-control", "no-cache")),
            RequestDirectives(max_stale=math.inf),
            0,
            Freshness.MUST_REVALIDATE,
        ),
        # ... nor past the client's own max-age
        (
            hdr(("cache-control", "max-age=60")),
            RequestDirectives(max_stale=math.inf, max_age=65.0),
            70,
            Freshness.STALE,
        ),
        # §5.3: invalid Expires is already stale
        (hdr(("expires", "0")), NO, 0, Freshness.STALE),
        # heuristic freshness (§4.2.2)
        (hdr(("last-modified", date(T0 - 1000))), NO, 99, Freshness.FRESH),
        (hdr(("last-modified", date(T0 - 1000))), NO, 100, Freshness.STALE),
    ],
)
def test_evaluate_freshness(
    resp: H, req: RequestDirectives, age: float, expected: Freshness
) -> None:
    assert fresh(resp, req, age=age) is expected


def test_evaluate_freshness_no_heuristic_for_temporary_redirect() -> None:
    resp = hdr(("last-modified", date(T0 - 1000)))
    assert fresh(resp, age=1, status=302) is Freshness.STALE


def test_evaluate_freshness_counts_upstream_age() -> None:
    # RFC 9111 §4.2.3: an Age of 50 from upstream eats into a max-age of 60
    resp = hdr(("cache-control", "max-age=60"), ("age", "50"))
    assert fresh(resp, age=9) is Freshness.FRESH
    assert fresh(resp, age=10) is Freshness.STALE


# --- validation_headers / merge_not_modified ------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        # RFC 9111 §4.3.1: both validators when present
        (
            hdr(("etag", '"v1"'), ("last-modified", D0.decode()), ("date", date(T0 + 5))),
            hdr(("if-none-match", '"v1"'), ("if-modified-since", D0.decode())),
        ),
        (hdr(("etag", 'W/"v1"')), hdr(("if-none-match", 'W/"v1"'))),
        (
            hdr(("etag", '"a"'), ("etag", '"b"'), ("etag", '"a"')),
            hdr(("if-none-match", '"a", "b"')),
        ),
        # no Last-Modified: the Date (RFC 9110 §13.1.3)
        (hdr(("date", D0.decode())), hdr(("if-modified-since", D0.decode()))),
        # invalid Last-Modified falls back to Date
        (
            hdr(("last-modified", "yesterday"), ("date", D0.decode())),
            hdr(("if-modified-since", D0.decode())),
        ),
        # obsolete formats are sent as IMF-fixdate (RFC 9110 §5.6.7: senders MUST)
        (
            hdr(("last-modified", "Sun Nov  6 08:49:37 1994")),
            hdr(("if-modified-since", D0.decode())),
        ),
        ([], []),
        (hdr(("last-modified", "garbage")), []),
    ],
)
def test_validation_headers(stored: H, expected: H) -> None:
    assert policy.validation_headers(stored) == expected


def test_merge_not_modified_replaces_in_place_and_appends_new() -> None:
    # RFC 9111 §3.2: fields in the 304 replace the stored ones of the same name
    stored = hdr(
        ("date", "old"),
        ("cache-control", "max-age=10"),
        ("etag", '"1"'),
        ("x-a", "1"),
        ("x-a", "2"),
        ("content-type", "text/plain"),
    )
    not_modified = hdr(
        ("date", "new"), ("x-a", "3"), ("cache-control", "max-age=99"), ("x-new", "n")
    )
    assert policy.merge_not_modified(stored, not_modified) == hdr(
        ("date", "new"),
        ("cache-control", "max-age=99"),
        ("etag", '"1"'),
        ("x-a", "3"),
        ("content-type", "text/plain"),
        ("x-new", "n"),
    )


def test_merge_not_modified_keeps_body_framing_and_never_adds_hop_by_hop() -> None:
    # RFC 9111 §3.2 exceptions: Content-Length, hop-by-hop fields and what Connection names
    stored = hdr(("content-length", "1000"), ("content-encoding", "gzip"), ("etag", '"1"'))
    not_modified = hdr(
        ("content-length", "0"),
        ("content-encoding", "br"),
        ("transfer-encoding", "chunked"),
        ("content-range", "bytes 0-1/2"),
        ("connection", "x-hop, close"),
        ("keep-alive", "timeout=5"),
        ("x-hop", "1"),
        ("proxy-authenticate", "Basic"),
        ("etag", '"1"'),
    )
    assert policy.merge_not_modified(stored, not_modified) == stored


def test_merge_not_modified_never_stores_a_set_cookie() -> None:
    # project rule: the merged list is shared, a 304's Set-Cookie belongs to one client
    stored = hdr(("cache-control", "max-age=60"))
    merged = policy.merge_not_modified(stored, hdr(("set-cookie", "s=1")))
    assert merged == stored


def test_merge_not_modified_result_must_be_rechecked_for_private() -> None:
    stored = hdr(("cache-control", "max-age=60"))
    merged = policy.merge_not_modified(stored, hdr(("cache-control", "private")))
    assert not policy.storable(b"GET", 200, [], merged).store


# --- strip_hop_by_hop -----------------------------------------------------------------------


def test_strip_hop_by_hop() -> None:
    # RFC 9110 §7.6.1
    headers = hdr(
        ("host", "a"),
        ("connection", "Keep-Alive, X-Custom"),
        ("connection", "x-other"),
        ("keep-alive", "5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("proxy-authenticate", "x"),
        ("proxy-authorization", "x"),
        ("x-custom", "1"),
        ("x-other", "2"),
        ("accept", "*/*"),
        ("x-custom-not", "3"),
    )
    assert policy.strip_hop_by_hop(headers) == hdr(
        ("host", "a"), ("accept", "*/*"), ("x-custom-not", "3")
    )


# --- Vary -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], ()),
        (hdr(("vary", "Accept-Encoding")), (b"accept-encoding",)),
        (hdr(("vary", "b, A ,, a"), ("vary", "c")), (b"a", b"b", b"c")),
        (hdr(("vary", "")), ()),
        # RFC 9111 §4.1: "*" never matches
        (hdr(("vary", "accept, *")), None),
        (hdr(("vary", "accept"), ("vary", "*")), None),
    ],
)
def test_vary_names(headers: H, expected: tuple[bytes, ...] | None) -> None:
    assert policy.vary_names(headers) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # RFC 9111 §4.1: whitespace normalised, field lines combined
        (hdr(("accept-encoding", "gzip, br")), hdr(("accept-encoding", "gzip,br")), True),
        (hdr(("accept-encoding", "gzip ,\tbr")), hdr(("accept-encoding", "gzip, br")), True),
        (
            hdr(("accept-encoding", "gzip"), ("accept-encoding", "br")),
            hdr(("accept-encoding", "gzip, br")),
            True,
        ),
        (hdr(("accept-encoding", "gzip")), hdr(("accept-encoding", "br")), False),
        # order within a list is significant (it may be meaningful to the origin)
        (hdr(("accept-encoding", "br, gzip")), hdr(("accept-encoding", "gzip, br")), False),
        # absent only matches absent
        ([], hdr(("accept-encoding", "")), False),
        ([], [], True),
        # case of values kept
        (hdr(("accept-language", "EN")), hdr(("accept-language", "en")), False),
        # unrelated fields do not matter
        (hdr(("accept-encoding", "gzip"), ("cookie", "a")), hdr(("accept-encoding", "gzip")), True),
    ],
)
def test_vary_key(a: H, b: H, same: bool) -> None:
    names = (b"accept-encoding", b"accept-language")
    assert (policy.vary_key(names, a) == policy.vary_key(names, b)) is same


def test_vary_key_cannot_be_forged_across_names() -> None:
    names = (b"a", b"b")
    one = hdr(("a", "x+1:y"))
    two = hdr(("a", "x"), ("b", "y"))
    assert policy.vary_key(names, one) != policy.vary_key(names, two)
    # the order and case of the names do not matter
    assert policy.vary_key((b"B", b"a"), two) == policy.vary_key(names, two)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-;=.*/", min_size=1, max_size=8)
_ows = st.text(alphabet=" \t", max_size=3)


@given(st.lists(_token, min_size=1, max_size=5), st.data())
def test_vary_key_equal_for_whitespace_variants(tokens: list[str], data: st.DataObject) -> None:
    canonical = hdr(("accept", ", ".join(tokens)))
    # re-join with random whitespace around the commas and split into random field lines
    fields: list[str] = []
    current = data.draw(_ows) + tokens[0]
    for token in tokens[1:]:
        if data.draw(st.booleans()):
            fields.append(current + data.draw(_ows))
            current = data.draw(_ows) + token
        else:
            current += data.draw(_ows) + "," + data.draw(_ows) + token
    fields.append(current + data.draw(_ows))
    variant = [(b"accept", f.strip(" \t").encode()) for f in fields]
    assert policy.vary_key([b"accept"], variant) == policy.vary_key([b"accept"], canonical)


# --- invalidation_targets -------------------------------------------------------------------

URL = b"http://example.com/a/b"


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        # RFC 9111 §4.4: unsafe method + non-error status
        (b"POST", 200, [], [URL]),
        (b"PUT", 201, [], [URL]),
        (b"DELETE", 204, [], [URL]),
        (b"PATCH", 303, [], [URL]),
        (b"POST", 404, [], []),
        (b"POST", 500, [], []),
        (b"POST", 100, [], []),
        (b"GET", 200, [], []),
        (b"OPTIONS", 200, [], []),
        # Location / Content-Location resolved against the request URL
        (b"POST", 201, hdr(("location", "/new?x=1#frag")), [URL, b"http://example.com/new?x=1"]),
        (b"POST", 200, hdr(("content-location", "c")), [URL, b"http://example.com/a/c"]),
        (
            b"PUT",
            200,
            hdr(("location", "../d"), ("content-location", "http://EXAMPLE.com:80/a/b")),
            [URL, b"http://example.com/d"],  # the canonical Content-Location is URL itself
        ),
        # same origin only: other host, scheme or port is ignored
        (b"POST", 201, hdr(("location", "http://evil.example/x")), [URL]),
        (b"POST", 201, hdr(("location", "//evil.example/x")), [URL]),
        (b"POST", 201, hdr(("location", "https://example.com/x")), [URL]),
        (b"POST", 201, hdr(("location", "http://example.com:8080/x")), [URL]),
        (
            b"POST",
            201,
            hdr(("location", "http://user@example.com/x")),
            [URL, b"http://example.com/x"],
        ),
        # garbage never raises
        (b"POST", 201, hdr(("location", "http://[::1")), [URL]),
        (b"POST", 201, hdr(("location", "http://example.com:99999/")), [URL]),
        (b"POST", 201, hdr(("location", "mailto:a@b")), [URL]),
    ],
)
def test_invalidation_targets(
    method: bytes, status: int, headers: H, expected: list[bytes]
) -> None:
    assert policy.invalidation_targets(method, status, headers, URL) == expected


def test_invalidation_targets_non_default_port_and_ipv6() -> None:
    url = b"http://[::1]:8080/x"
    got = policy.invalidation_targets(b"POST", 200, hdr(("location", "/y")), url)
    assert got == [url, b"http://[::1]:8080/y"]


def test_invalidation_targets_relative_request_url_only_itself() -> None:
    assert policy.invalidation_targets(b"POST", 200, hdr(("location", "/y")), b"/x") == [b"/x"]


# --- parse_range ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        # RFC 9110 §14.1.2: first-last, first-, -suffix
        (b"bytes=0-499", 10000, ((0, 499),)),
        (b"bytes=500-999", 10000, ((500, 999),)),
        (b"bytes=9500-", 10000, ((9500, 9999),)),
        (b"bytes=-500", 10000, ((9500, 9999),)),
        (b"bytes=0-0,-1", 10000, ((0, 0), (9999, 9999))),
        (b"Bytes = 0-1", 10, ((0, 1),)),
        (b"bytes=0-1, ,", 10, ((0, 1),)),
        # last clamped to size - 1; suffix longer than body is the whole body
        (b"bytes=5-100", 10, ((5, 9),)),
        (b"bytes=-100", 10, ((0, 9),)),
        (b"bytes=0-99999999999999999999999999", 10, ((0, 9),)),
        # coalesce overlapping and adjacent, sort
        (b"bytes=500-600,601-999", 10000, ((500, 999),)),
        (b"bytes=500-700,601-999", 10000, ((500, 999),)),
        (b"bytes=8-9,0-1", 10, ((0, 1), (8, 9))),
        # unsatisfiable ranges are dropped, all unsatisfiable -> 416
        (b"bytes=0-1,20-30", 10, ((0, 1),)),
        (b"bytes=10-20", 10, UNSATISFIABLE),
        (b"bytes=99999999999999999999-", 10, UNSATISFIABLE),
        (b"bytes=-0", 10, UNSATISFIABLE),
        # ignored (send 200): absent, malformed, other unit
        (None, 10, None),
        (b"", 10, None),
        (b"bytes=", 10, None),
        (b"bytes=-", 10, None),
        (b"bytes=5-1", 10, None),
        (b"bytes=a-b", 10, None),
        (b"bytes=1-2-3", 10, None),
        (b"bytes=0-1,x", 10, None),
        (b"bytes 0-1", 10, None),
        (b"items=0-1", 10, None),
        (b"bytes=+1-2", 10, None),
        (b"bytes=0 -1", 10, None),
        # empty body: no byte can be selected, serve the 200
        (b"bytes=0-", 0, None),
        (b"bytes=-5", 0, None),
        # RFC 9110 §14.2: too many ranges, or several overlapping ones
        (
            b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 32, 2)),
            100,
            tuple((i, i) for i in range(0, 32, 2)),
        ),
        (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 34, 2)), 100, None),
        (b"bytes=0-,0-", 10, ((0, 9),)),
        (b"bytes=0-,0-,0-", 10, None),
        (b"bytes=0-5,1-6,2-7", 10, None),
    ],
)
def test_parse_range(
    value: bytes | None, size: int, expected: tuple[tuple[int, int], ...] | Unsatisfiable | None
) -> None:
    assert policy.parse_range(value, size) == expected


def test_unsatisfiable_is_a_type_and_a_singleton_value() -> None:
    result = policy.parse_range(b"bytes=50-", 10)
    assert isinstance(result, Unsatisfiable)
    assert result is UNSATISFIABLE


_range_text = st.one_of(
    st.binary(max_size=40),
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, 120), st.one_of(st.none(), st.integers(0, 120))).map(
                lambda t: b"%d-" % t[0] + (b"" if t[1] is None else b"%d" % t[1])
            ),
            st.integers(0, 120).map(lambda n: b"-%d" % n),
        ),
        min_size=1,
        max_size=20,
    ).map(lambda specs: b"bytes=" + b",".join(specs)),
)


@given(_range_text, st.integers(min_value=0, max_value=100))
def test_parse_range_results_are_sorted_disjoint_and_in_bounds(value: bytes, size: int) -> None:
    result = policy.parse_range(value, size)
    if result is None or isinstance(result, Unsatisfiable):
        return
    assert result
    previous_end = -2
    for first, last in result:
        assert 0 <= first <= last < size
        assert first > previous_end + 1  # neither overlapping nor adjacent
        previous_end = last


# --- if_range_matches -----------------------------------------------------------------------

STRONG_LM = hdr(("etag", '"v1"'), ("last-modified", D0.decode()), ("date", date(T0 + 60)))


@pytest.mark.parametrize(
    ("if_range", "stored", "expected"),
    [
        (None, [], True),
        # RFC 9110 §13.1.5: strong comparison of entity tags
        (b'"v1"', STRONG_LM, True),
        (b'"v2"', STRONG_LM, False),
        (b'W/"v1"', STRONG_LM, False),
        (b'"v1"', hdr(("etag", 'W/"v1"')), False),
        (b'"v1"', [], False),
        (b'"v1", "v2"', STRONG_LM, False),
        # a date matches only an exactly equal, strong Last-Modified (§8.8.2.2)
        (D0, STRONG_LM, True),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", STRONG_LM, True),
        (date(T0 + 1), STRONG_LM, False),
        (date(T0 - 1), STRONG_LM, False),
        (D0, hdr(("last-modified", D0.decode()), ("date", D0.decode())), False),  # weak
        (D0, hdr(("last-modified", D0.decode())), False),  # no Date: cannot tell
        (b"garbage", STRONG_LM, False),
    ],
)
def test_if_range_matches(if_range: bytes | None, stored: H, expected: bool) -> None:
    assert policy.if_range_matches(if_range, stored) is expected


# --- evaluate_client_conditionals -----------------------------------------------------------

STORED = hdr(("etag", '"v1"'), ("last-modified", D0.decode()), ("date", date(T0 + 100)))
NONE, NOT_MODIFIED, FAILED = (
    ConditionalResult.NONE,
    ConditionalResult.NOT_MODIFIED,
    ConditionalResult.PRECONDITION_FAILED,
)


@pytest.mark.parametrize(
    ("method", "req", "stored", "expected"),
    [
        (b"GET", [], STORED, NONE),
        # RFC 9110 §13.1.2: If-None-Match, weak comparison, "*"
        (b"GET", hdr(("if-none-match", '"v1"')), STORED, NOT_MODIFIED),
        (b"HEAD", hdr(("if-none-match", '"v1"')), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", 'W/"v1"')), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"v1"')), hdr(("etag", 'W/"v1"')), NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"a", "v1"')), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"a"'), ("if-none-match", '"v1"')), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"a,b"')), hdr(("etag", '"a,b"')), NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"a"')), hdr(("etag", '"a,b"')), NONE),
        (b"GET", hdr(("if-none-match", "*")), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-none-match", '"v2"')), STORED, NONE),
        (b"GET", hdr(("if-none-match", '"v1"')), [], NONE),
        # §13.2.2 step 4: If-None-Match present => If-Modified-Since ignored
        (
            b"GET",
            hdr(("if-none-match", '"v2"'), ("if-modified-since", date(T0 + 10))),
            STORED,
            NONE,
        ),
        # §13.1.3: If-Modified-Since
        (b"GET", hdr(("if-modified-since", D0.decode())), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-modified-since", date(T0 + 5))), STORED, NOT_MODIFIED),
        (b"GET", hdr(("if-modified-since", date(T0 - 5))), STORED, NONE),
        (b"GET", hdr(("if-modified-since", "garbage")), STORED, NONE),
        (
            b"GET",
            hdr(("if-modified-since", D0.decode()), ("if-modified-since", D0.decode())),
            STORED,
            NONE,
        ),
        # RFC 9111 §4.3.2: no Last-Modified, compare with Date
        (
            b"GET",
            hdr(("if-modified-since", date(T0 + 100))),
            hdr(("date", date(T0 + 100))),
            NOT_MODIFIED,
        ),
        (b"GET", hdr(("if-modified-since", D0.decode())), hdr(("date", date(T0 + 100))), NONE),
        (b"GET", hdr(("if-modified-since", D0.decode())), [], NONE),
        # §13.1.1: If-Match, strong comparison
        (b"GET", hdr(("if-match", '"v1"')), STORED, NONE),
        (b"GET", hdr(("if-match", '"x", "v1"')), STORED, NONE),
        (b"GET", hdr(("if-match", "*")), STORED, NONE),
        (b"GET", hdr(("if-match", '"v2"')), STORED, FAILED),
        (b"GET", hdr(("if-match", 'W/"v1"')), STORED, FAILED),
        (b"GET", hdr(("if-match", '"v1"')), hdr(("etag", 'W/"v1"')), FAILED),
        (b"GET", hdr(("if-match", '"v1"')), [], FAILED),
        # If-Match passes, then If-None-Match decides
        (b"GET", hdr(("if-match", '"v1"'), ("if-none-match", '"v1"')), STORED, NOT_MODIFIED),
        # §13.1.4: If-Unmodified-Since, only without If-Match
        (b"GET", hdr(("if-unmodified-since", date(T0 - 1))), STORED, FAILED),
        (b"GET", hdr(("if-unmodified-since", D0.decode())), STORED, NONE),
        (b"GET", hdr(("if-unmodified-since", "garbage")), STORED, NONE),
        (b"GET", hdr(("if-unmodified-since", date(T0 - 1))), hdr(("etag", '"v1"')), NONE),
        (b"GET", hdr(("if-match", '"v1"'), ("if-unmodified-since", date(T0 - 1))), STORED, NONE),
        # precondition failure outranks not-modified
        (
            b"GET",
            hdr(("if-unmodified-since", date(T0 - 1)), ("if-none-match", '"v1"')),
            STORED,
            FAILED,
        ),
        # only GET and HEAD are answered from the cache
        (b"POST", hdr(("if-match", '"v2"')), STORED, NONE),
        (b"PUT", hdr(("if-none-match", "*")), STORED, NONE),
    ],
)
def test_evaluate_client_conditionals(
    method: bytes, req: H, stored: H, expected: ConditionalResult
) -> None:
    assert policy.evaluate_client_conditionals(method, req, stored) is expected


# --- module surface -------------------------------------------------------------------------


def test_all_is_explicit_and_resolves() -> None:
    for name in policy.__all__:
        assert hasattr(policy, name), name


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"cache-control",
                    b"etag",
                    b"last-modified",
                    b"date",
                    b"age",
                    b"expires",
                    b"vary",
                    b"if-none-match",
                    b"if-match",
                    b"if-modified-since",
                    b"if-unmodified-since",
                    b"connection",
                    b"location",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=6,
    )
)
def test_nothing_raises_on_hostile_headers(headers: H) -> None:
    req = policy.request_directives(headers)
    policy.storable(b"GET", 200, headers, headers)
    policy.evaluate_freshness(200, headers, req, request_time=T0, response_time=T0, now=T0 + 5)
    policy.validation_headers(headers)
    policy.merge_not_modified(headers, headers)
    policy.strip_hop_by_hop(headers)
    names = policy.vary_names(headers)
    policy.vary_key(names or (), headers)
    policy.invalidation_targets(b"POST", 200, headers, URL)
    policy.evaluate_client_conditionals(b"GET", headers, headers)
    for _, v in headers:
        policy.if_range_matches(v, headers)
        policy.parse_range(v, 100)
