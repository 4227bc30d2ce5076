"""Tests for swarmcache.http.parser: rejection rules, framing, fuzzing, and the stdlib."""

from __future__ import annotations

import contextlib
import gc
import http.client
import http.server
import queue
import socket
import threading
import weakref
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmcache.http.parser import (
    LAST_CHUNK,
    NEED_DATA,
    BodyFraming,
    Data,
    EndOfMessage,
    Event,
    Header,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    chunk,
    reason_phrase,
    serialize_request_head,
    serialize_response_head,
)

# --- helpers ------------------------------------------------------------------------------

Reader = RequestReader | ResponseReader


def drain(
    reader: Reader, methods: Sequence[bytes] = (), *, next_message: bool = True
) -> list[Event]:
    """All events available now, Data merged per message; starts the next message after EOM.

    ``methods`` are fed to ``expect()`` of a ResponseReader, one per exchange.
    """
    out: list[Event] = []
    pending = list(methods)
    if isinstance(reader, ResponseReader) and pending and reader.framing is None:
        reader.expect(pending.pop(0))
    for _ in range(10_000):
        event = reader.next_event()
        if event is NEED_DATA:
            return out
        assert not isinstance(event, type(NEED_DATA))
        if isinstance(event, Data):
            assert len(event.data) > 0, "empty Data events are noise"
            if out and isinstance(out[-1], Data):
                out[-1] = Data(bytes(out[-1].data) + bytes(event.data))
            else:
                out.append(Data(bytes(event.data)))
            continue
        out.append(event)
        if isinstance(event, EndOfMessage):
            if not next_message:
                return out
            reader.start_next_message()
            if isinstance(reader, ResponseReader):
                if not pending:
                    return out
                reader.expect(pending.pop(0))
    raise AssertionError("reader did not settle")


def read_all(
    reader: Reader, pieces: Sequence[bytes], methods: Sequence[bytes] = (), eof: bool = False
) -> list[Event]:
    for piece in pieces:
        reader.feed(piece)
    if eof:
        reader.feed(b"")
    return drain(reader, methods)


def reject(reader: Reader, raw: bytes, *, eof: bool = False, method: bytes = b"GET") -> str:
    """Feed ``raw`` and return the RemoteProtocolError message it must cause."""
    if isinstance(reader, ResponseReader):
        reader.expect(method)
    reader.feed(raw)
    if eof:
        reader.feed(b"")
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(100):
            event = reader.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, EndOfMessage):
                reader.start_next_message()
    return f"{info.value}|{info.value.status_hint}"


GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


# --- rejection rules ----------------------------------------------------------------------

H = b"POST / HTTP/1.1\r\nHost: a\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"

REQUEST_REJECTS: list[tuple[str, bytes, str, int]] = [
    # framing and smuggling
    (
        "cl+te",
        H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        "both Content-Length and Transfer-Encoding",
        400,
    ),
    (
        "te+cl",
        H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        "both Content-Length and Transfer-Encoding",
        400,
    ),
    (
        "cl-dup-differ",
        H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "conflicting Content-Length",
        400,
    ),
    ("cl-list-differ", H + b"Content-Length: 3, 4\r\n\r\n", "conflicting Content-Length", 400),
    ("cl-negative", H + b"Content-Length: -1\r\n\r\n", "invalid Content-Length", 400),
    ("cl-plus", H + b"Content-Length: +1\r\n\r\n", "invalid Content-Length", 400),
    ("cl-hex", H + b"Content-Length: 0x10\r\n\r\n", "invalid Content-Length", 400),
    ("cl-alpha", H + b"Content-Length: abc\r\n\r\n", "invalid Content-Length", 400),
    ("cl-empty", H + b"Content-Length: \r\n\r\n", "invalid Content-Length", 400),
    ("cl-space-inside", H + b"Content-Length: 1 2\r\n\r\n", "invalid Content-Length", 400),
    ("cl-empty-element", H + b"Content-Length: 5,\r\n\r\n", "invalid Content-Length", 400),
    (
        "cl-19-digits",
        H + b"Content-Length: 1234567890123456789\r\n\r\n",
        "Content-Length value too long",
        400,
    ),
    ("te-gzip", H + b"Transfer-Encoding: gzip\r\n\r\n", "not chunked", 400),
    ("te-chunked-gzip", H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", "not chunked", 400),
    (
        "te-chunked-twice",
        H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "chunked more than once",
        400,
    ),
    ("te-empty", H + b"Transfer-Encoding: \r\n\r\n", "empty Transfer-Encoding", 400),
    ("te-bad-token", H + b'Transfer-Encoding: chun"ked\r\n\r\n', "invalid transfer coding", 400),
    (
        "te-http10",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding in an HTTP/1.0 message",
        400,
    ),
    # line endings and field syntax
    ("bare-lf-endings", b"GET / HTTP/1.1\nHost: a\n\n", "bare LF", 400),
    ("bare-lf-one-line", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "bare LF", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", "bare LF", 400),
    ("bare-cr-value", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", "bare CR", 400),
    ("bare-cr-request-line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", "bare CR", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n  z\r\n\r\n", "obsolete line folding", 400),
    (
        "obs-fold-tab",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n",
        "obsolete line folding",
        400,
    ),
    ("ws-after-start-line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", "obsolete line folding", 400),
    ("ws-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace between", 400),
    ("tab-before-colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", "whitespace between", 400),
    ("cl-ws-before-colon", H + b"Content-Length : 3\r\n\r\nabc", "whitespace between", 400),
    (
        "name-space",
        b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n",
        "invalid header field name",
        400,
    ),
    ("name-at", b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: z\r\n\r\n", "invalid header field name", 400),
    ("name-empty", b"GET / HTTP/1.1\r\nHost: a\r\n: z\r\n\r\n", "invalid header field name", 400),
    (
        "name-utf8",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: z\r\n\r\n",
        "invalid header field name",
        400,
    ),
    (
        "name-ctl",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: z\r\n\r\n",
        "invalid header field name",
        400,
    ),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", "without a colon", 400),
    (
        "value-nul",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        "control character 0x00 in header field value",
        400,
    ),
    (
        "value-esc",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x1bb\r\n\r\n",
        "control character 0x1b in header field value",
        400,
    ),
    (
        "value-del",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
        "control character 0x7f in header field value",
        400,
    ),
    (
        "value-vt",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n",
        "control character 0x0b in header field value",
        400,
    ),
    # request line
    ("http09", b"GET /\r\n\r\n", "malformed request line", 400),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "malformed request line", 400),
    ("four-parts", b"GET / x HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line", 400),
    ("method-paren", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "invalid method", 400),
    ("method-empty", b" / HTTP/1.1\r\nHost: a\r\n\r\n", "invalid method", 400),
    ("target-tab", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", "invalid request target", 400),
    (
        "target-ctl",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "control character 0x01 in request line",
        400,
    ),
    ("version-2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "unsupported HTTP version", 505),
    ("version-1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "unsupported HTTP version", 505),
    ("version-lower", b"GET / http/1.1\r\nHost: a\r\n\r\n", "malformed HTTP version", 400),
    ("version-junk", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", "malformed HTTP version", 400),
    ("host-missing", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing Host", 400),
    ("host-twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host", 400),
    ("host-twice-10", b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", "more than one Host", 400),
    (
        "too-many-headers",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n",
        "too many header fields",
        431,
    ),
    ("leading-empty-lines", b"\r\n" * 5 + GET, "too many empty lines", 400),
    # chunked framing
    ("chunk-size-alpha", CHUNKED + b"zz\r\n", "invalid chunk size", 400),
    ("chunk-size-negative", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-size-0x", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-size-leading-space", CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-size-trailing-space", CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-size-empty", CHUNKED + b"\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-size-17-digits", CHUNKED + b"1" + b"0" * 16 + b"\r\n", "chunk size too large", 400),
    ("chunk-size-bare-lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", "bare LF in chunk size line", 400),
    ("chunk-ext-ctl", CHUNKED + b"5;a=\x00\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    ("chunk-ext-bare-cr", CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n", "invalid chunk size", 400),
    (
        "chunk-data-no-crlf",
        CHUNKED + b"5\r\nhelloX\r\n0\r\n\r\n",
        "missing CRLF after chunk data",
        400,
    ),
    (
        "chunk-data-lf-only",
        CHUNKED + b"5\r\nhello\n0\r\n\r\n",
        "missing CRLF after chunk data",
        400,
    ),
    (
        "chunk-data-too-long",
        CHUNKED + b"3\r\nhello\r\n0\r\n\r\n",
        "missing CRLF after chunk data",
        400,
    ),
    ("trailer-obs-fold", CHUNKED + b"0\r\nT: v\r\n w\r\n\r\n", "obsolete line folding", 400),
    ("trailer-bare-lf", CHUNKED + b"0\r\nT: v\n\r\n\r\n", "bare LF", 400),
    ("trailer-no-colon", CHUNKED + b"0\r\nbroken\r\n\r\n", "without a colon", 400),
    ("trailer-nul", CHUNKED + b"0\r\nT: \x00\r\n\r\n", "control character", 400),
]


@pytest.mark.parametrize(
    ("raw", "problem", "hint"),
    [pytest.param(raw, problem, hint, id=name) for name, raw, problem, hint in REQUEST_REJECTS],
)
def test_request_rejections(raw: bytes, problem: str, hint: int) -> None:
    message = reject(RequestReader(), raw)
    assert problem in message
    assert message.endswith(f"|{hint}")


@pytest.mark.parametrize(
    ("raw", "problem", "hint"),
    [pytest.param(raw, problem, hint, id=name) for name, raw, problem, hint in REQUEST_REJECTS],
)
def test_request_rejections_byte_by_byte(raw: bytes, problem: str, hint: int) -> None:
    """The same verdicts when bytes trickle in: no rule depends on how reads were split."""
    reader = RequestReader()
    with pytest.raises(RemoteProtocolError) as info:
        for i in range(len(raw)):
            reader.feed(raw[i : i + 1])
            drain(reader)
    assert problem in str(info.value)
    assert info.value.status_hint == hint


R = b"HTTP/1.1 200 OK\r\n"

RESPONSE_REJECTS: list[tuple[str, bytes, str]] = [
    ("status-2-digits", b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
    ("status-no-space", b"HTTP/1.1 200OK\r\n\r\n", "malformed status line"),
    ("status-http2", b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
    ("status-http12", b"HTTP/1.2 200 OK\r\n\r\n", "malformed status line"),
    ("status-icy", b"ICY 200 OK\r\n\r\n", "malformed status line"),
    ("status-lowercase", b"http/1.1 200 OK\r\n\r\n", "malformed status line"),
    ("status-double-space", b"HTTP/1.1  200 OK\r\n\r\n", "malformed status line"),
    ("status-099", b"HTTP/1.1 099 Odd\r\n\r\n", "invalid status code"),
    ("reason-ctl", b"HTTP/1.1 200 O\x01K\r\n\r\n", "control character 0x01 in status line"),
    (
        "cl+te",
        R + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "cl-differ",
        R + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\n",
        "conflicting Content-Length",
    ),
    ("cl-bad", R + b"Content-Length: 3a\r\n\r\n", "invalid Content-Length"),
    (
        "te-http10",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "Transfer-Encoding in an HTTP/1.0 message",
    ),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "bare LF"),
    ("obs-fold", R + b"X: a\r\n b\r\n\r\n", "obsolete line folding"),
    ("ws-before-colon", R + b"Content-Length : 0\r\n\r\n", "whitespace between"),
    ("too-many-headers", R + b"X: y\r\n" * 101 + b"\r\n", "too many header fields"),
    ("chunk-size", R + b"Transfer-Encoding: chunked\r\n\r\nxyz\r\n", "invalid chunk size"),
    (
        "chunk-crlf",
        R + b"Transfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        "missing CRLF after chunk data",
    ),
]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [pytest.param(raw, problem, id=name) for name, raw, problem in RESPONSE_REJECTS],
)
def test_response_rejections(raw: bytes, problem: str) -> None:
    message = reject(ResponseReader(), raw)
    assert problem in message
    assert message.endswith("|502")


def test_head_too_large() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 2000 + b"\r\n\r\n"
    assert "request head too large|431" in reject(RequestReader(max_head_bytes=1024), big)
    # Without its end in sight: rejected as soon as the limit is passed, not at EOF.
    assert "too large|431" in reject(RequestReader(max_head_bytes=1024), big[:1500])
    resp = b"HTTP/1.1 200 OK\r\nX: " + b"y" * 2000 + b"\r\n\r\n"
    assert "response head too large|502" in reject(ResponseReader(max_head_bytes=1024), resp)
    trailer = CHUNKED + b"0\r\nT: " + b"v" * 2000 + b"\r\n\r\n"
    assert "trailer section too large" in reject(RequestReader(max_head_bytes=1024), trailer)


def test_header_count_limit_is_inclusive() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 9 + b"\r\n"
    assert isinstance(read_all(RequestReader(max_headers=10), [raw])[0], Request)
    assert "too many header fields" in reject(RequestReader(max_headers=9), raw)


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n", "incomplete request head"),
        (b"G", "incomplete request head"),
        (H + b"Content-Length: 10\r\n\r\nabc", "incomplete body"),
        (CHUNKED + b"5\r\nhel", "incomplete chunked body"),
        (CHUNKED + b"5\r\nhello", "incomplete chunked body"),
        (CHUNKED + b"5\r\nhello\r", "incomplete chunked body"),
        (CHUNKED + b"5\r\nhello\r\n", "incomplete chunked body"),
        (CHUNKED + b"5\r\nhello\r\n0\r\n", "incomplete chunked body"),
        (CHUNKED + b"5\r\nhello\r\n0\r\nT: v\r\n", "incomplete chunked body"),
    ],
)
def test_eof_inside_request(raw: bytes, what: str) -> None:
    assert what in reject(RequestReader(), raw, eof=True)


def test_eof_inside_response() -> None:
    assert "incomplete response head|502" in reject(ResponseReader(), R + b"X: 1", eof=True)
    assert "incomplete body" in reject(
        ResponseReader(), R + b"Content-Length: 9\r\n\r\nab", eof=True
    )
    assert "incomplete exchange|502" in reject(ResponseReader(), b"", eof=True)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert "incomplete exchange" in reject(ResponseReader(), interim, eof=True)


def test_incomplete_body_data_comes_first() -> None:
    """Bytes that did arrive are delivered before the error, so a relay can pass them on."""
    reader = RequestReader()
    reader.feed(H + b"Content-Length: 10\r\n\r\nabc")
    reader.feed(b"")
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() == Data(b"abc")
    with pytest.raises(RemoteProtocolError, match="incomplete"):
        reader.next_event()


def test_reader_stays_dead_after_error() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    for _ in range(3):
        with pytest.raises(RemoteProtocolError, match="whitespace between") as info:
            reader.next_event()
        assert info.value.status_hint == 400
    reader.feed(GET)
    with pytest.raises(RemoteProtocolError):
        reader.next_event()
    with pytest.raises(LocalProtocolError):
        reader.start_next_message()


def test_local_misuse() -> None:
    reader = RequestReader()
    reader.feed(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        reader.feed(b"x")

    reader = RequestReader()
    reader.feed(H + b"Content-Length: 5\r\n\r\nab")
    assert isinstance(reader.next_event(), Request)
    with pytest.raises(LocalProtocolError, match="before the message was read"):
        reader.start_next_message()

    reader = RequestReader()
    reader.feed(GET)
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() == EndOfMessage()
    with pytest.raises(LocalProtocolError, match="start_next_message"):
        reader.next_event()

    response_reader = ResponseReader()
    response_reader.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="expect"):
        response_reader.next_event()
    response_reader.expect(b"GET")  # still usable: misuse is not the peer's fault
    assert isinstance(response_reader.next_event(), Response)
    with pytest.raises(LocalProtocolError, match="expect"):
        response_reader.expect(b"GET")

    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/", [(b"x", b"a\r\nevil: 1")])
    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/", [(b"x y", b"a")])
    with pytest.raises(LocalProtocolError):
        serialize_request_head(b"GET", b"/ HTTP/1.1\r\n", [])
    with pytest.raises(LocalProtocolError):
        serialize_response_head(200, b"OK\r\nevil: 1", [])
    with pytest.raises(LocalProtocolError):
        serialize_response_head(1000, b"", [])
    with pytest.raises(LocalProtocolError, match="invalid start line"):
        serialize_request_head(b"G T", b"/", [])
    with pytest.raises(LocalProtocolError, match="invalid start line"):
        serialize_response_head(200, b"O\x00K", [])
    with pytest.raises(LocalProtocolError):
        RequestReader(max_head_bytes=1)


def test_start_next_message_rules() -> None:
    reader = RequestReader()
    reader.start_next_message()  # nothing read yet: harmless
    reader.feed(GET)
    assert isinstance(reader.next_event(), Request)
    reader.start_next_message()  # the message is complete even though EOM was not collected
    reader.feed(GET)
    assert isinstance(reader.next_event(), Request)

    response_reader = ResponseReader()
    response_reader.expect(b"GET")
    response_reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert isinstance(response_reader.next_event(), Response)
    with pytest.raises(LocalProtocolError):
        response_reader.start_next_message()  # the final response is still owed


def test_readers_are_freed_without_the_cyclic_gc() -> None:
    gc.disable()
    try:
        for cls in (RequestReader, ResponseReader):
            reader = cls()
            reader.feed(GET)
            ref = weakref.ref(reader)
            del reader
            assert ref() is None
    finally:
        gc.enable()


def test_chunk_size_line_is_bounded() -> None:
    raw = CHUNKED + b"5;" + b"x" * 2000
    assert "chunk size line too long" in reject(RequestReader(max_head_bytes=1024), raw)


# --- valid requests -----------------------------------------------------------------------


def test_get_without_body() -> None:
    reader = RequestReader()
    reader.feed(b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \t\r\nX-Empty:\r\n\r\n")
    request = reader.next_event()
    assert request == Request(
        b"GET",
        b"/a?b=c",
        b"1.1",
        ((b"host", b"example.com"), (b"accept", b"*/*"), (b"x-empty", b"")),
    )
    assert reader.framing is BodyFraming.NONE
    assert reader.body_length is None
    assert reader.next_event() == EndOfMessage()
    reader.start_next_message()
    assert reader.framing is None
    assert reader.next_event() is NEED_DATA
    assert not reader.eof


def test_content_length_body_and_get() -> None:
    reader = RequestReader()
    events = read_all(reader, [H + b"Content-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"])
    request = events[0]
    assert isinstance(request, Request)
    assert request.get(b"x-a") == b"1, 2"
    assert request.get_all(b"x-a") == [b"1", b"2"]
    assert request.get(b"missing") is None
    assert request.get_all(b"missing") == []
    assert request.get(b"content-length") == b"5"
    assert events[1:] == [Data(b"hello"), EndOfMessage()]


def test_content_length_zero_and_identical_duplicates() -> None:
    reader = RequestReader()
    reader.feed(H + b"Content-Length: 0\r\n\r\n")
    assert isinstance(reader.next_event(), Request)
    assert (reader.framing, reader.body_length) == (BodyFraming.LENGTH, 0)
    assert reader.next_event() == EndOfMessage()
    events = read_all(
        RequestReader(), [H + b"Content-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc"]
    )
    assert events[1:] == [Data(b"abc"), EndOfMessage()]


def test_chunked_request_with_extensions_and_trailers() -> None:
    body = (
        b"5;name=value\r\nhello\r\n"
        b'6 ; a ; b="q s"\r\n world\r\n'
        b"A\r\n0123456789\r\n"
        b"0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n"
    )
    reader = RequestReader()
    events = read_all(reader, [CHUNKED + body + GET])
    assert reader.framing is None  # already on the pipelined GET
    assert events[1] == Data(b"hello world0123456789")
    assert events[2] == EndOfMessage()
    assert isinstance(events[3], Request) and events[3].method == b"GET"


def test_transfer_encoding_forms() -> None:
    for te in (
        b"chunked",
        b"CHUNKED",
        b"gzip, chunked",
        b", chunked",
        b"gzip\r\nTransfer-Encoding: chunked",
    ):
        events = read_all(RequestReader(), [H + b"Transfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n"])
        assert events[1:] == [EndOfMessage()], te


def test_pipelined_requests() -> None:
    raw = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        + H
        + b"Content-Length: 3\r\n\r\nabc"
        + b"\r\n"  # a stray CRLF between messages is tolerated (RFC 9112 §2.2)
        + CHUNKED
        + b"2\r\nde\r\n0\r\n\r\n"
        + b"GET /4 HTTP/1.0\r\n\r\n"
    )
    events = read_all(RequestReader(), [raw])
    requests = [e for e in events if isinstance(e, Request)]
    assert [r.target for r in requests] == [b"/1", b"/", b"/", b"/4"]
    assert [e for e in events if isinstance(e, Data)] == [Data(b"abc"), Data(b"de")]
    assert events.count(EndOfMessage()) == 4


def test_leading_empty_lines_are_tolerated() -> None:
    events = read_all(RequestReader(), [b"\r\n" * 4 + GET])
    assert isinstance(events[0], Request)


def test_eof_between_messages() -> None:
    reader = RequestReader()
    reader.feed(GET)
    reader.feed(b"")
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() == EndOfMessage()
    reader.start_next_message()
    for _ in range(3):
        assert reader.next_event() is NEED_DATA
    assert reader.eof


def test_eof_on_fresh_reader_and_after_empty_lines() -> None:
    for raw in (b"", b"\r\n"):
        reader = RequestReader()
        reader.feed(raw)
        reader.feed(b"")
        assert reader.next_event() is NEED_DATA
        assert reader.eof


def test_request_targets_and_versions() -> None:
    raw = (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n"
        b"GET / HTTP/1.0\r\n\r\n"
        b"M-SEARCH /\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n"
    )
    requests = [e for e in read_all(RequestReader(), [raw]) if isinstance(e, Request)]
    assert [(r.method, r.target, r.version) for r in requests] == [
        (b"CONNECT", b"example.com:443", b"1.1"),
        (b"OPTIONS", b"*", b"1.1"),
        (b"GET", b"http://example.com/x?y", b"1.1"),
        (b"GET", b"/", b"1.0"),
        (b"M-SEARCH", b"/\xc3\xa9", b"1.1"),
    ]
    assert requests[4].get(b"x") == b"caf\xc3\xa9"  # obs-text is allowed in values


def test_connect_then_raw_tunnel() -> None:
    reader = RequestReader()
    reader.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
    reader.feed(b"\x02\x00")
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() == EndOfMessage()
    assert reader.take_buffered() == b"\x16\x03\x01\x02\x00"
    assert reader.take_buffered() == b""


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.1", b"keep-alive, CLOSE", False),
        (b"1.1", b"upgrade", True),
        (b"1.1", b"closed", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive, foo", True),
        (b"1.0", b"keep-alive, close", False),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive(version: bytes, connection: bytes | None, expected: bool) -> None:
    headers: tuple[Header, ...] = ((b"host", b"a"),)
    if connection is not None:
        headers += ((b"connection", connection),)
    assert Request(b"GET", b"/", version, headers).keep_alive is expected
    assert Response(200, b"OK", version, headers).keep_alive is expected
    raw = serialize_request_head(b"GET", b"/", headers, version)
    request = read_all(RequestReader(), [raw])[0]
    assert isinstance(request, Request)
    assert request.keep_alive is expected
    # Several Connection fields count as one list.
    if connection is not None:
        split = Request(
            b"GET", b"/", version, ((b"connection", b"foo"), (b"connection", connection))
        )
        assert split.keep_alive is expected


# --- zero-copy body path ------------------------------------------------------------------


def test_body_chunk_is_handed_out_without_copy() -> None:
    reader = RequestReader()
    reader.feed(H + b"Content-Length: 300000\r\n\r\n")
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() is NEED_DATA
    part = bytes(200000)
    reader.feed(part)
    event = reader.next_event()
    assert isinstance(event, Data)
    assert event.data is part  # the very object: no copy at all
    tail_and_next = b"t" * 100000 + GET
    reader.feed(tail_and_next)
    event = reader.next_event()
    assert isinstance(event, Data)
    assert isinstance(event.data, memoryview)
    assert event.data.obj is tail_and_next
    assert len(event.data) == 100000
    assert reader.next_event() == EndOfMessage()
    reader.start_next_message()
    assert isinstance(reader.next_event(), Request)


def test_close_delimited_body_chunks_pass_through() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nfirst")
    assert isinstance(reader.next_event(), Response)
    assert reader.framing is BodyFraming.CLOSE
    assert reader.next_event() == Data(b"first")
    parts = [bytes([i]) * 1000 for i in range(5)]
    for part in parts:
        reader.feed(part)
    for part in parts:
        event = reader.next_event()
        assert isinstance(event, Data) and event.data is part
    assert reader.next_event() is NEED_DATA
    reader.feed(b"")
    assert reader.next_event() == EndOfMessage()


def test_large_chunk_streams_before_it_is_complete() -> None:
    reader = RequestReader()
    reader.feed(CHUNKED + b"100000\r\n")  # 1 MiB chunk
    assert isinstance(reader.next_event(), Request)
    seen = 0
    for _ in range(4):
        part = b"x" * 65536
        reader.feed(part)
        event = reader.next_event()
        assert isinstance(event, Data) and event.data is part
        seen += len(event.data)
        assert reader.next_event() is NEED_DATA
    assert seen == 4 * 65536


def test_bytearray_input_is_not_aliased() -> None:
    reader = RequestReader()
    reader.feed(H + b"Content-Length: 3\r\n\r\n")
    assert isinstance(reader.next_event(), Request)
    buffer = bytearray(b"abc")
    reader.feed(buffer)  # type: ignore[arg-type]  # callers may pass one; it must be copied
    buffer[:] = b"zzz"
    assert reader.next_event() == Data(b"abc")


# --- responses ----------------------------------------------------------------------------


def response_events(raw: bytes, method: bytes = b"GET", eof: bool = False) -> list[Event]:
    reader = ResponseReader()
    return read_all(reader, [raw], [method], eof)


def test_response_with_length_chunked_and_close() -> None:
    events = response_events(R + b"Content-Length: 2\r\n\r\nok")
    assert events == [
        Response(200, b"OK", b"1.1", ((b"content-length", b"2"),)),
        Data(b"ok"),
        EndOfMessage(),
    ]
    events = response_events(R + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert events[1:] == [Data(b"ok"), EndOfMessage()]
    events = response_events(b"HTTP/1.0 200 OK\r\n\r\nuntil close", eof=True)
    assert events[1:] == [Data(b"until close"), EndOfMessage()]
    assert isinstance(events[0], Response) and not events[0].keep_alive


def test_response_final_coding_not_chunked_reads_until_close() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(R + b"Transfer-Encoding: gzip\r\n\r\n\x1f\x8b")
    reader.feed(b"")
    assert isinstance(reader.next_event(), Response)
    assert reader.framing is BodyFraming.CLOSE
    assert drain(reader) == [Data(b"\x1f\x8b"), EndOfMessage()]


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK", 200, b"OK"),
        (b"HTTP/1.1 200 ", 200, b""),
        (b"HTTP/1.1 200", 200, b""),
        (b"HTTP/1.0 404 Not  Found\t!", 404, b"Not  Found\t!"),
        (b"HTTP/1.1 999 Request denied", 999, b"Request denied"),
        (b"HTTP/1.1 200 \xc3\xa9", 200, b"\xc3\xa9"),
    ],
)
def test_status_lines(status_line: bytes, status: int, reason: bytes) -> None:
    events = response_events(status_line + b"\r\nContent-Length: 0\r\n\r\n")
    response = events[0]
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (status, reason)


@pytest.mark.parametrize(
    ("method", "status", "framing"),
    [
        (b"HEAD", 200, BodyFraming.NONE),
        (b"GET", 204, BodyFraming.NONE),
        (b"GET", 304, BodyFraming.NONE),
        (b"CONNECT", 200, BodyFraming.NONE),
        (b"CONNECT", 407, BodyFraming.LENGTH),
        (b"GET", 200, BodyFraming.LENGTH),
    ],
)
def test_bodyless_responses(method: bytes, status: int, framing: BodyFraming) -> None:
    reader = ResponseReader()
    reader.expect(method)
    head = serialize_response_head(status, reason_phrase(status), [(b"content-length", b"5")])
    reader.feed(head + b"hello")
    response = reader.next_event()
    assert isinstance(response, Response) and response.status == status
    assert reader.framing is framing
    if framing is BodyFraming.NONE:
        assert reader.body_length is None
        assert reader.next_event() == EndOfMessage()
        assert reader.take_buffered() == b"hello"  # not consumed as a body
    else:
        assert reader.body_length == 5
        assert drain(reader, next_message=False) == [Data(b"hello"), EndOfMessage()]


def test_head_response_then_next_response_on_same_connection() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding-X: y\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    )
    events = read_all(ResponseReader(), [raw], [b"HEAD", b"GET"])
    assert [type(e).__name__ for e in events] == [
        "Response",
        "EndOfMessage",
        "Response",
        "Data",
        "EndOfMessage",
    ]
    assert events[3] == Data(b"abc")


def test_interim_responses() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    reader = ResponseReader()
    reader.expect(b"POST")
    reader.feed(raw)
    first = reader.next_event()
    assert isinstance(first, Response) and first.status == 100
    assert reader.framing is BodyFraming.NONE
    second = reader.next_event()
    assert isinstance(second, Response) and second.status == 103
    assert second.get(b"link") == b"</s.css>; rel=preload"
    final = reader.next_event()
    assert isinstance(final, Response) and final.status == 200
    assert drain(reader, next_message=False) == [Data(b"ok"), EndOfMessage()]


def test_switching_protocols_and_connect_tunnel() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    response = reader.next_event()
    assert isinstance(response, Response) and response.status == 101
    assert reader.next_event() == EndOfMessage()
    assert reader.take_buffered() == b"\x81\x05hello"

    reader = ResponseReader()
    reader.expect(b"CONNECT")
    reader.feed(b"HTTP/1.1 200 Connection established\r\n\r\n")
    reader.feed(b"\x16\x03")
    assert isinstance(reader.next_event(), Response)
    assert reader.next_event() == EndOfMessage()
    assert reader.take_buffered() == b"\x16\x03"


def test_response_reader_idle_eof_without_expectation() -> None:
    reader = ResponseReader()
    reader.feed(b"")
    assert reader.next_event() is NEED_DATA
    assert reader.eof


# --- serializing --------------------------------------------------------------------------


def test_serializers_and_helpers() -> None:
    assert (
        serialize_request_head(b"GET", b"/x", [(b"host", b"a"), (b"x-y", b"")])
        == b"GET /x HTTP/1.1\r\nhost: a\r\nx-y: \r\n\r\n"
    )
    assert (
        serialize_response_head(404, b"Not Found", [], b"1.0") == b"HTTP/1.0 404 Not Found\r\n\r\n"
    )
    assert serialize_response_head(200, b"", []) == b"HTTP/1.1 200 \r\n\r\n"
    assert chunk(b"") == b""
    assert chunk(b"hello world, this is 31 bytes!!") == b"1f\r\nhello world, this is 31 bytes!!\r\n"
    assert chunk(memoryview(b"abc")) == b"3\r\nabc\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(404) == b"Not Found"
    assert reason_phrase(431) == b"Request Header Fields Too Large"
    assert reason_phrase(799) == b""
    assert repr(NEED_DATA) == "NEED_DATA"


# --- property tests -----------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
field_names = tokens.filter(
    lambda n: n.lower() not in {b"host", b"content-length", b"transfer-encoding", b"connection"}
)
field_values = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip(b" \t")
)
targets = st.text("abcxyz0123456789/?=&%-._~", min_size=0, max_size=20).map(
    lambda s: b"/" + s.encode()
)
bodies = st.lists(st.binary(min_size=0, max_size=40), max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A valid request on the wire and the events it must produce."""
    method = draw(tokens)
    target = draw(targets)
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    headers: list[Header] = [(b"Host", b"example.com")]
    headers += draw(st.lists(st.tuples(field_names, field_values), max_size=5))
    parts = draw(bodies)
    body = b"".join(parts)
    framing = draw(
        st.sampled_from(["none", "length", "chunked"] if version == b"1.1" else ["none", "length"])
    )
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
        wire_body = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        wire_body = b"".join(chunk(p) for p in parts) + LAST_CHUNK
    else:
        body = wire_body = b""
    raw = serialize_request_head(method, target, headers, version) + wire_body
    expected: list[Event] = [
        Request(method, target, version, tuple((n.lower(), v) for n, v in headers))
    ]
    if body:
        expected.append(Data(body))
    expected.append(EndOfMessage())
    return raw, expected


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, list[Event], bytes, bool]:
    """A valid response, its events, the request method, and whether EOF must follow."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 404, 500, 599]))
    headers: list[Header] = draw(st.lists(st.tuples(field_names, field_values), max_size=5))
    parts = draw(bodies)
    body = b"".join(parts)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    bodyless = method == b"HEAD" or status in (204, 304)
    if bodyless:
        wire_body = b""
        framing = "length" if framing == "close" else framing
    elif framing == "chunked":
        wire_body = b"".join(chunk(p) for p in parts) + LAST_CHUNK
    else:
        wire_body = body
    raw = serialize_response_head(status, reason_phrase(status), headers) + wire_body
    expected: list[Event] = [
        Response(status, reason_phrase(status), b"1.1", tuple((n.lower(), v) for n, v in headers))
    ]
    if body and not bodyless:
        expected.append(Data(body))
    expected.append(EndOfMessage())
    return raw, expected, method, framing == "close"


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(raw[start:p])
        start = p
    pieces.append(raw[start:])
    return [p for p in pieces if p]


def feed_incrementally(
    reader: Reader, pieces: list[bytes], methods: list[bytes], eof: bool
) -> list[Event]:
    """Drain after every piece, as a real connection would, and merge Data across pieces."""
    events: list[Event] = []
    pending = list(methods)
    if isinstance(reader, ResponseReader) and pending:
        reader.expect(pending.pop(0))
    for piece in [*pieces, b""] if eof else pieces:
        reader.feed(piece)
        while True:
            new = drain(reader, next_message=False)
            for event in new:
                if isinstance(event, Data) and events and isinstance(events[-1], Data):
                    events[-1] = Data(bytes(events[-1].data) + bytes(event.data))
                else:
                    events.append(event)
            if new and isinstance(new[-1], EndOfMessage):
                reader.start_next_message()
                if isinstance(reader, ResponseReader) and pending:
                    reader.expect(pending.pop(0))
                continue
            break
    return events


fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=8))
def test_requests_survive_any_split(
    messages: list[tuple[bytes, list[Event]]], cuts: list[int]
) -> None:
    raw = b"".join(m[0] for m in messages)
    expected = [e for m in messages for e in m[1]]
    assert read_all(RequestReader(), [raw]) == expected
    assert feed_incrementally(RequestReader(), split_at(raw, cuts), [], False) == expected
    one_byte = [raw[i : i + 1] for i in range(len(raw))]
    assert feed_incrementally(RequestReader(), one_byte, [], False) == expected


@fast
@given(st.lists(responses(), min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=8))
def test_responses_survive_any_split(
    messages: list[tuple[bytes, list[Event], bytes, bool]], cuts: list[int]
) -> None:
    # A close-delimited response can only be the last one on a connection.
    for i, message in enumerate(messages):
        if message[3]:
            messages = messages[: i + 1]
            break
    raw = b"".join(m[0] for m in messages)
    expected = [e for m in messages for e in m[1]]
    methods = [m[2] for m in messages]
    eof = messages[-1][3]
    assert read_all(ResponseReader(), [raw], methods, eof) == expected
    assert feed_incrementally(ResponseReader(), split_at(raw, cuts), methods, eof) == expected
    one_byte = [raw[i : i + 1] for i in range(len(raw))]
    assert feed_incrementally(ResponseReader(), one_byte, methods, eof) == expected


FRAGMENTS = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"/",
    b" ",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/1.1 200 OK",
    b"\r\n",
    b"\r",
    b"\n",
    b"\r\n\r\n",
    b"Host: a",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"chunked",
    b"5",
    b"0",
    b"ff",
    b";x=y",
    b"hello",
    b":",
    b"\t",
    b"\x00",
    b",",
    b"\xff",
    b"-1",
    b"Connection: close",
]
junk = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join),
)


def survive(reader: Reader, pieces: list[bytes], methods: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        feed_incrementally(reader, pieces, methods, True)


@settings(max_examples=300, deadline=None)
@given(
    junk,
    st.lists(st.integers(0, 300), max_size=6),
    st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT"]), min_size=5, max_size=5),
)
def test_random_bytes_only_raise_remote_protocol_error(
    raw: bytes, cuts: list[int], methods: list[bytes]
) -> None:
    survive(RequestReader(max_head_bytes=256, max_headers=8), split_at(raw, cuts), [])
    survive(ResponseReader(max_head_bytes=256, max_headers=8), split_at(raw, cuts), methods * 20)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=6),
    st.lists(st.integers(0, 3000), max_size=6),
    st.booleans(),
)
def test_chunk_round_trip(parts: list[bytes], cuts: list[int], as_view: bool) -> None:
    encoded = b"".join(chunk(memoryview(p) if as_view else p) for p in parts) + LAST_CHUNK
    raw = CHUNKED + encoded
    events = feed_incrementally(RequestReader(), split_at(raw, cuts), [], False)
    body = b"".join(parts)
    assert events[1:] == ([Data(body)] if body else []) + [EndOfMessage()]


# --- against the standard library ---------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _head(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"chunked ", b"reply"):
                self.wfile.write(chunk(part))
            self.wfile.write(LAST_CHUNK)
            return
        body = b"hello from " + self.path.encode()
        self._head(body)
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._head(b"x" * 1234)


@pytest.fixture
def stdlib_server() -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_against_stdlib_server(stdlib_server: tuple[str, int]) -> None:
    exchanges = [
        (b"GET", b"/a", b""),
        (b"HEAD", b"/b", b""),
        (b"GET", b"/chunked", b"chunked reply"),
        (b"GET", b"/last", b"hello from /last"),
    ]
    with socket.create_connection(stdlib_server, timeout=5) as sock:
        reader = ResponseReader()
        for i, (method, target, _) in enumerate(exchanges):
            headers = [(b"host", b"127.0.0.1")]
            if i == len(exchanges) - 1:
                headers.append((b"connection", b"close"))
            sock.sendall(serialize_request_head(method, target, headers))
        results: list[tuple[int, bytes, bool]] = []
        for method, _, _ in exchanges:
            reader.expect(method)
            body = b""
            while True:
                event = reader.next_event()
                if event is NEED_DATA:
                    reader.feed(sock.recv(65536))
                    continue
                if isinstance(event, Response):
                    status = event.status
                    keep = event.keep_alive
                elif isinstance(event, Data):
                    body += bytes(event.data)
                elif isinstance(event, EndOfMessage):
                    break
            results.append((status, body, keep))
            reader.start_next_message()
        # The server honours "Connection: close" by closing (it need not echo the header).
        while not reader.eof:
            reader.feed(sock.recv(65536))
        assert reader.next_event() is NEED_DATA
    assert results == [
        (200, b"hello from /a", True),
        (200, b"", True),
        (200, b"chunked reply", True),
        (200, b"hello from /last", True),
    ]


def _capture_one_request(server: socket.socket, out: queue.Queue[object]) -> None:
    try:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            reader = RequestReader()
            events: list[Event] = []
            while not events or not isinstance(events[-1], EndOfMessage):
                event = reader.next_event()
                if event is NEED_DATA:
                    reader.feed(conn.recv(65536))
                    continue
                assert not isinstance(event, type(NEED_DATA))
                events.append(event)
            conn.sendall(serialize_response_head(200, b"OK", [(b"content-length", b"2")]) + b"ok")
            out.put(events)
    except Exception as exc:  # handed to the test thread, which re-raises it
        out.put(exc)


@pytest.mark.parametrize("mode", ["get", "length", "chunked"])
def test_parses_stdlib_client_requests(mode: str) -> None:
    results: queue.Queue[object] = queue.Queue()
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_capture_one_request, args=(server, results), daemon=True)
        thread.start()
        port = server.getsockname()[1]
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            if mode == "get":
                client.request("GET", "/path?q=1", headers={"X-Test": "yes"})
            elif mode == "length":
                client.request("POST", "/upload", body=b"payload", headers={"X-Test": "yes"})
            else:
                client.request(
                    "PUT",
                    "/stream",
                    body=iter([b"pay", b"", b"load"]),
                    encode_chunked=True,
                    headers={"X-Test": "yes"},
                )
            reply = client.getresponse()
            assert (reply.status, reply.read()) == (200, b"ok")
        finally:
            client.close()
        thread.join(5)
    events = results.get(timeout=5)
    if isinstance(events, Exception):
        raise events
    assert isinstance(events, list)
    request = events[0]
    assert isinstance(request, Request)
    assert request.version == b"1.1"
    assert request.get(b"host") == f"127.0.0.1:{port}".encode()
    assert request.get(b"x-test") == b"yes"
    body = b"".join(bytes(e.data) for e in events if isinstance(e, Data))
    if mode == "get":
        assert (request.method, request.target, body) == (b"GET", b"/path?q=1", b"")
    elif mode == "length":
        assert (request.method, request.get(b"content-length"), body) == (b"POST", b"7", b"payload")
    else:
        assert (request.method, request.get(b"transfer-encoding"), body) == (
            b"PUT",
            b"chunked",
            b"payload",
        )
