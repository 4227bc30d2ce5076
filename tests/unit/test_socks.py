"""Tests for swarmcache.socks: handshakes, every refusal and its reply bytes, fuzzing, curl."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import shutil
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmcache.socks import (
    NEED_DATA,
    AddressType,
    AuthMethod,
    ConnectRequest,
    Credentials,
    Event,
    LocalSocksError,
    MethodChosen,
    RemoteSocksError,
    ReplyCode,
    SocksServer,
    SocksState,
)

NO_AUTH = (AuthMethod.NO_AUTH,)
USER_PASS = (AuthMethod.USERNAME_PASSWORD,)
BOTH = (AuthMethod.NO_AUTH, AuthMethod.USERNAME_PASSWORD)

GREET_NOAUTH = b"\x05\x01\x00"
GREET_USERPASS = b"\x05\x01\x02"
AUTH_UP = b"\x01\x04user\x06secret"
REQ_V4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"  # 127.0.0.1:8080
REQ_DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x00\x50"  # example.com:80
V6 = ipaddress.IPv6Address("2001:db8::1")
REQ_V6 = b"\x05\x01\x00\x04" + V6.packed + b"\x01\xbb"  # [2001:db8::1]:443
# reply_success("10.0.0.1", 4000)
OK_REPLY = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x0f\xa0"
FAIL_TAIL = b"\x00\x01\x00\x00\x00\x00\x00\x00"
HTTP_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    buffered: bytes | None = None


def drive(
    server: SocksServer,
    chunks: Iterable[bytes],
    *,
    creds_ok: bool = True,
    connect_code: ReplyCode = ReplyCode.SUCCEEDED,
) -> Run:
    """Feed ``chunks`` one at a time, answering events the way a listener would."""
    run = Run()

    def pump() -> bool:
        while server.state not in (SocksState.DONE, SocksState.CLOSED):
            event = server.next_event()
            run.sent += server.data_to_send()
            if event is NEED_DATA:
                return True
            run.events.append(event)
            if isinstance(event, Credentials):
                server.accept_credentials(creds_ok)
            elif isinstance(event, ConnectRequest):
                if connect_code is ReplyCode.SUCCEEDED:
                    server.reply_success("10.0.0.1", 4000)
                else:
                    server.reply_failure(connect_code)
            run.sent += server.data_to_send()
        return False

    for chunk in chunks:
        if server.state is SocksState.DONE:
            # Bytes past the handshake belong to the relay, as in a real listener.
            run.buffered = (run.buffered or b"") + chunk
            continue
        server.feed(chunk)
        pump()
    if server.state is SocksState.DONE:
        run.buffered = server.take_buffered() + (run.buffered or b"")
    return run


def refusal(methods: Sequence[AuthMethod], data: bytes, *, eof: bool = False) -> tuple[str, bytes]:
    """Feed ``data`` (in one piece, then byte by byte) and return the error and the reply.

    Both feeding patterns must fail the same way, so the rejection cannot depend on how the
    bytes were split.
    """
    results = []
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        server = SocksServer(methods)
        sent = bytearray()
        with pytest.raises(RemoteSocksError) as info:
            drive_raw(server, chunks, sent, eof=eof)
        sent += server.data_to_send()
        # The reader is dead: the same error again, and nothing more to send.
        with pytest.raises(RemoteSocksError, match="socks:"):
            server.next_event()
        assert server.state is SocksState.ERROR
        assert server.data_to_send() == b""
        results.append((str(info.value), bytes(sent)))
    assert results[0] == results[1]
    return results[0]


def drive_raw(server: SocksServer, chunks: Iterable[bytes], sent: bytearray, *, eof: bool) -> None:
    chunks = list(chunks)
    if eof:
        chunks.append(b"")
    for chunk in chunks:
        server.feed(chunk)
        while True:
            event = server.next_event()
            sent += server.data_to_send()
            if event is NEED_DATA:
                break
            if isinstance(event, Credentials):
                server.accept_credentials(True)
            elif isinstance(event, ConnectRequest):
                server.reply_success("10.0.0.1", 4000)
                return
            sent += server.data_to_send()


# --- happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (REQ_V4, ConnectRequest("127.0.0.1", 8080, AddressType.IPV4)),
        (REQ_DOMAIN, ConnectRequest("example.com", 80, AddressType.DOMAIN)),
        (REQ_V6, ConnectRequest("2001:db8::1", 443, AddressType.IPV6)),
    ],
)
def test_no_auth_connect(request_bytes: bytes, expected: ConnectRequest) -> None:
    server = SocksServer(NO_AUTH)
    run = drive(server, [GREET_NOAUTH, request_bytes])
    assert run.events == [MethodChosen(AuthMethod.NO_AUTH), expected]
    assert bytes(run.sent) == b"\x05\x00" + OK_REPLY
    assert run.buffered == b""
    assert server.method is AuthMethod.NO_AUTH
    assert server.request == expected


def test_method_chosen_reply_is_queued_with_the_event() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH)
    assert server.next_event() == MethodChosen(AuthMethod.NO_AUTH)
    assert server.data_to_send() == b"\x05\x00"
    assert server.data_to_send() == b""
    assert server.next_event() is NEED_DATA


def test_user_pass_accepted() -> None:
    server = SocksServer(USER_PASS)
    run = drive(server, [GREET_USERPASS, AUTH_UP, REQ_DOMAIN])
    assert run.events == [
        MethodChosen(AuthMethod.USERNAME_PASSWORD),
        Credentials(b"user", b"secret"),
        ConnectRequest("example.com", 80, AddressType.DOMAIN),
    ]
    assert bytes(run.sent) == b"\x05\x02" + b"\x01\x00" + OK_REPLY


def test_user_pass_rejected_closes() -> None:
    server = SocksServer(USER_PASS)
    run = drive(server, [GREET_USERPASS, AUTH_UP + REQ_V4], creds_ok=False)
    assert run.events == [
        MethodChosen(AuthMethod.USERNAME_PASSWORD),
        Credentials(b"user", b"secret"),
    ]
    assert bytes(run.sent) == b"\x05\x02\x01\x01"
    assert server.state is SocksState.CLOSED
    # The pipelined request after rejected credentials is never parsed.
    with pytest.raises(LocalSocksError, match="refused"):
        server.next_event()
    with pytest.raises(LocalSocksError):
        server.take_buffered()


def test_credentials_repr_hides_password() -> None:
    assert "secret" not in repr(Credentials(b"user", b"secret"))
    assert "user" in repr(Credentials(b"user", b"secret"))


def test_prefers_user_pass_when_both_configured_and_offered() -> None:
    server = SocksServer(BOTH)
    server.feed(b"\x05\x02\x00\x02")
    assert server.next_event() == MethodChosen(AuthMethod.USERNAME_PASSWORD)
    assert server.data_to_send() == b"\x05\x02"


def test_both_configured_client_offers_only_no_auth() -> None:
    server = SocksServer(BOTH)
    server.feed(b"\x05\x01\x00")
    assert server.next_event() == MethodChosen(AuthMethod.NO_AUTH)
    assert server.data_to_send() == b"\x05\x00"


def test_unknown_methods_among_offered_are_ignored() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(b"\x05\x03\x01\x80\x00")  # GSSAPI, a private method, no-auth
    assert server.next_event() == MethodChosen(AuthMethod.NO_AUTH)


@pytest.mark.parametrize(
    ("code", "reply_byte"), [(c, int(c)) for c in ReplyCode if c is not ReplyCode.SUCCEEDED]
)
def test_reply_failure_codes(code: ReplyCode, reply_byte: int) -> None:
    server = SocksServer(NO_AUTH)
    run = drive(server, [GREET_NOAUTH + REQ_V4], connect_code=code)
    assert bytes(run.sent) == b"\x05\x00" + bytes((5, reply_byte)) + FAIL_TAIL
    assert server.state is SocksState.CLOSED


def test_reply_failure_accepts_plain_int() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH + REQ_V4)
    server.next_event()
    server.next_event()
    server.data_to_send()
    server.reply_failure(5)
    assert server.data_to_send() == b"\x05\x05" + FAIL_TAIL


@pytest.mark.parametrize(
    ("bound", "encoded"),
    [
        ("192.0.2.7", b"\x01\xc0\x00\x02\x07"),
        (ipaddress.IPv4Address("192.0.2.7"), b"\x01\xc0\x00\x02\x07"),
        ("2001:db8::1", b"\x04" + V6.packed),
        (V6, b"\x04" + V6.packed),
        ("cache.example", b"\x03\x0dcache.example"),
    ],
)
def test_reply_success_bound_address_encoding(
    bound: str | ipaddress.IPv4Address | ipaddress.IPv6Address, encoded: bytes
) -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH + REQ_V4)
    server.next_event()
    server.next_event()
    server.data_to_send()
    server.reply_success(bound, 0x1234)
    assert server.data_to_send() == b"\x05\x00\x00" + encoded + b"\x12\x34"


# --- pipelining -----------------------------------------------------------------------------


def test_pipelined_greeting_request_and_http_in_one_feed() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH + REQ_DOMAIN + HTTP_GET)
    assert server.next_event() == MethodChosen(AuthMethod.NO_AUTH)
    assert server.next_event() == ConnectRequest("example.com", 80, AddressType.DOMAIN)
    server.reply_success("10.0.0.1", 4000)
    assert server.data_to_send() == b"\x05\x00" + OK_REPLY
    assert server.take_buffered() == HTTP_GET
    assert server.take_buffered() == b""
    assert server.state is SocksState.DONE


def test_pipelined_with_credentials() -> None:
    server = SocksServer(USER_PASS)
    run = drive(server, [b"\x05\x01\x02" + AUTH_UP + REQ_V6 + HTTP_GET])
    assert [type(e) for e in run.events] == [MethodChosen, Credentials, ConnectRequest]
    assert bytes(run.sent) == b"\x05\x02\x01\x00" + OK_REPLY
    assert run.buffered == HTTP_GET


def test_bytes_arriving_while_waiting_for_the_answer_are_kept() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH + REQ_V4)
    server.next_event()
    server.next_event()
    server.feed(b"GET ")
    server.feed(b"/ HTTP/1.1\r\n\r\n")
    server.reply_success("10.0.0.1", 4000)
    assert server.take_buffered() == b"GET / HTTP/1.1\r\n\r\n"


# --- refusals ---------------------------------------------------------------------------------

NO_METHOD = b"\x05\xff"
AUTH_FAIL = b"\x05\x02\x01\x01"  # method 0x02 chosen, then RFC 1929 failure
GENERAL = b"\x05\x00\x05\x01" + FAIL_TAIL  # no-auth chosen, then general failure
NOT_ALLOWED = b"\x05\x00\x05\x02" + FAIL_TAIL
NO_CMD = b"\x05\x00\x05\x07" + FAIL_TAIL
NO_ATYP = b"\x05\x00\x05\x08" + FAIL_TAIL
UP = GREET_USERPASS
CONNECT = GREET_NOAUTH + b"\x05\x01\x00"  # up to ATYP


def dom(name: bytes) -> bytes:
    """A no-auth conversation requesting domain ``name``, port 80."""
    return CONNECT + b"\x03" + bytes((len(name),)) + name + b"\x00\x50"


@pytest.mark.parametrize(
    ("methods", "data", "message", "reply"),
    [
        (NO_AUTH, b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", "0x04, expected 0x05 (a SOCKS4", b""),
        (NO_AUTH, b"GET / HTTP/1.1\r\n", "0x47, expected 0x05 (looks like plain text", b""),
        (NO_AUTH, b"\x16\x03\x01", "(looks like a TLS handshake)", b""),
        (NO_AUTH, b"\x05\x00", "no authentication method (NMETHODS 0)", NO_METHOD),
        (NO_AUTH, b"\x05\x01\x02", "client offered 02, allowed 0x00", NO_METHOD),
        (USER_PASS, b"\x05\x02\x00\x01", "client offered 00 01, allowed 0x02", NO_METHOD),
        (USER_PASS, UP + b"\x05\x04user", "password request has version 0x05", AUTH_FAIL),
        (USER_PASS, UP + b"\x01\x00\x01p", "empty username (ULEN 0)", AUTH_FAIL),
        (USER_PASS, UP + b"\x01\x01u\x00", "empty password (PLEN 0)", AUTH_FAIL),
        (NO_AUTH, GREET_NOAUTH + b"\x04\x01\x00\x01", "request has version 0x04", GENERAL),
        (NO_AUTH, GREET_NOAUTH + b"\x05\x02\x00\x01", "BIND (0x02) not supported", NO_CMD),
        (NO_AUTH, GREET_NOAUTH + b"\x05\x03\x00\x01", "UDP ASSOCIATE (0x03) not supported", NO_CMD),
        (NO_AUTH, GREET_NOAUTH + b"\x05\x09\x00\x01", "unknown command (0x09) not", NO_CMD),
        (NO_AUTH, GREET_NOAUTH + b"\x05\x01\x01\x01", "reserved byte is 0x01", GENERAL),
        (NO_AUTH, CONNECT + b"\x02", "unknown address type 0x02", NO_ATYP),
        (NO_AUTH, CONNECT + b"\x03\x00\x00\x50", "empty domain name", GENERAL),
        (NO_AUTH, dom(b"ab\x00c"), "control character 0x00 at offset 2", GENERAL),
        (NO_AUTH, dom(b"ab\nc"), "control character 0x0a", GENERAL),
        (NO_AUTH, dom(b"ab\x7f"), "control character 0x7f", GENERAL),
        (NO_AUTH, dom("bücher".encode()), "not ASCII (IDN must be sent in punycode)", GENERAL),
        (NO_AUTH, dom(b"a b"), "invalid label b'a b'", GENERAL),
        (NO_AUTH, dom(b"a..b"), "invalid label b''", GENERAL),
        (NO_AUTH, dom(b"-ab-"), "invalid label b'-ab-'", GENERAL),
        (NO_AUTH, dom(b"."), "invalid label b''", GENERAL),
        (NO_AUTH, dom(b"host:1"), "contains ':' but is not an IPv6", GENERAL),
        (NO_AUTH, CONNECT + b"\x01\x7f\x00\x00\x01\x00\x00", "port 0 of 127.0.0.1", NOT_ALLOWED),
        (NO_AUTH, dom(b"example.com")[:-2] + b"\x00\x00", "port 0 of example.com", NOT_ALLOWED),
    ],
)
def test_refusals(methods: Sequence[AuthMethod], data: bytes, message: str, reply: bytes) -> None:
    error, sent = refusal(methods, data)
    assert message in error
    assert sent == reply


def test_domain_label_too_long_refused() -> None:
    name = b"a" * 64 + b".example"
    data = GREET_NOAUTH + b"\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x00\x50"
    error, sent = refusal(NO_AUTH, data)
    assert "invalid label" in error
    assert sent == GENERAL


@pytest.mark.parametrize(
    ("name", "host"),
    [
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"example.com.", "example.com."),
        (b"_srv.example", "_srv.example"),
        (b"::1", "::1"),
        (b"a" * 63 + b"." + b"b" * 63, "a" * 63 + "." + "b" * 63),
    ],
)
def test_domain_names_accepted(name: bytes, host: str) -> None:
    data = b"\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x00\x50"
    run = drive(SocksServer(NO_AUTH), [GREET_NOAUTH, data])
    assert run.events[-1] == ConnectRequest(host, 80, AddressType.DOMAIN)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "greeting (0 of 2 bytes)"),
        (b"\x05", "greeting (1 of 2 bytes)"),
        (b"\x05\x02\x00", "greeting (3 of 4 bytes)"),
        (GREET_NOAUTH + b"\x05\x01\x00", "request (3 of 4 bytes)"),
        (GREET_NOAUTH + b"\x05\x01\x00\x03", "request (4 of 5 bytes)"),
        (GREET_NOAUTH + REQ_DOMAIN[:-1], "request (17 of 18 bytes)"),
        (GREET_NOAUTH + REQ_V6[:-3], "request (19 of 22 bytes)"),
        (GREET_USERPASS + AUTH_UP[:-1], "username/password request (12 of 13 bytes)"),
    ],
)
def test_eof_inside_handshake(data: bytes, what: str) -> None:
    error, _ = refusal(NO_AUTH if data[2:3] != b"\x02" else USER_PASS, data, eof=True)
    assert error == f"socks: connection closed inside the {what}"


def test_eof_after_complete_message_waits_for_answer() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(GREET_NOAUTH + REQ_V4)
    server.feed(b"")
    assert isinstance(server.next_event(), MethodChosen)
    assert isinstance(server.next_event(), ConnectRequest)
    assert server.eof
    server.reply_success("10.0.0.1", 1)
    assert server.take_buffered() == b""


def test_buffer_is_bounded() -> None:
    """A client that floods while we wait for an upstream cannot grow memory without bound."""
    server = SocksServer(NO_AUTH, max_buffered=1024)
    server.feed(GREET_NOAUTH + REQ_V4)
    server.next_event()
    server.next_event()
    server.feed(b"x" * 1000)
    with pytest.raises(
        RemoteSocksError, match=r"1100 bytes buffered during the handshake \(limit 1024\)"
    ):
        server.feed(b"y" * 100)
    with pytest.raises(RemoteSocksError, match="limit 1024"):
        server.next_event()
    server.feed(b"z" * 100_000)  # ignored: the connection is being closed
    with pytest.raises(LocalSocksError):
        server.reply_success("10.0.0.1", 1)


def test_flood_before_greeting_is_bounded() -> None:
    server = SocksServer(NO_AUTH, max_buffered=1024)
    with pytest.raises(RemoteSocksError, match="limit 1024"):
        server.feed(b"\x05" * 2000)


# --- misuse -------------------------------------------------------------------------------


def test_misuse_raises_local_errors() -> None:
    with pytest.raises(LocalSocksError, match="at least one"):
        SocksServer(())
    with pytest.raises(LocalSocksError, match="max_buffered"):
        SocksServer(NO_AUTH, max_buffered=100)
    with pytest.raises(LocalSocksError, match="unsupported authentication method"):
        SocksServer([0x01])  # type: ignore[list-item]  # GSSAPI is not supported

    server = SocksServer(USER_PASS)
    with pytest.raises(LocalSocksError, match="in state GREETING"):
        server.accept_credentials(True)
    with pytest.raises(LocalSocksError, match="in state GREETING"):
        server.reply_success("10.0.0.1", 1)
    with pytest.raises(LocalSocksError, match="before reply_success"):
        server.take_buffered()
    server.feed(GREET_USERPASS + AUTH_UP)
    server.next_event()
    server.next_event()
    with pytest.raises(LocalSocksError, match="accept_credentials"):
        server.next_event()
    server.accept_credentials(True)
    server.feed(REQ_V4)
    server.next_event()
    with pytest.raises(LocalSocksError, match="reply_success"):
        server.next_event()
    with pytest.raises(LocalSocksError, match="out of range"):
        server.reply_success("10.0.0.1", 70000)
    with pytest.raises(LocalSocksError, match="neither an IP nor a host name"):
        server.reply_success("bad name!", 1)
    with pytest.raises(LocalSocksError, match="use reply_success"):
        server.reply_failure(ReplyCode.SUCCEEDED)
    with pytest.raises(LocalSocksError, match="unknown SOCKS5 reply code 9"):
        server.reply_failure(9)
    server.reply_success("10.0.0.1", 1)
    with pytest.raises(LocalSocksError, match="handshake complete"):
        server.next_event()
    with pytest.raises(LocalSocksError, match="relay"):
        server.feed(b"more")


def test_feed_after_eof_is_misuse() -> None:
    server = SocksServer(NO_AUTH)
    server.feed(b"\x05")
    server.feed(b"")
    with pytest.raises(LocalSocksError, match="after EOF"):
        server.feed(b"\x01")


# --- properties ---------------------------------------------------------------------------

CONVERSATIONS = [
    (NO_AUTH, GREET_NOAUTH + REQ_V4 + HTTP_GET),
    (NO_AUTH, GREET_NOAUTH + REQ_DOMAIN),
    (NO_AUTH, GREET_NOAUTH + REQ_V6 + b"\x00\x01binary"),
    (USER_PASS, GREET_USERPASS + AUTH_UP + REQ_DOMAIN + HTTP_GET),
    (BOTH, b"\x05\x02\x00\x02" + AUTH_UP + REQ_V6),
]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@given(
    index=st.integers(0, len(CONVERSATIONS) - 1),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
)
def test_chunking_does_not_change_events(index: int, cuts: list[int]) -> None:
    methods, data = CONVERSATIONS[index]
    whole = drive(SocksServer(methods), [data])
    chunked = drive(SocksServer(methods), split(data, cuts))
    assert chunked.events == whole.events
    assert chunked.sent == whole.sent
    assert chunked.buffered == whole.buffered
    assert isinstance(whole.events[-1], ConnectRequest)


def _answer_everything(server: SocksServer, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        if server.state in (SocksState.DONE, SocksState.CLOSED):
            return
        server.feed(chunk)
        while server.state not in (SocksState.DONE, SocksState.CLOSED):
            event = server.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Credentials):
                server.accept_credentials(event.password != b"x")
            elif isinstance(event, ConnectRequest):
                # The event's fields must be what a listener can use directly.
                assert 1 <= event.port <= 0xFFFF
                assert event.host and event.host.isascii() and event.host.isprintable()
                if event.atyp is not AddressType.DOMAIN:
                    ipaddress.ip_address(event.host)
                server.reply_success("10.0.0.1", 4000)


# Random bytes, and random bytes behind a valid prefix so the fuzzer reaches every state.
_PREFIXES = st.sampled_from(
    [
        b"",
        b"\x05",
        GREET_NOAUTH,
        GREET_USERPASS,
        GREET_USERPASS + AUTH_UP,
        GREET_NOAUTH + b"\x05\x01\x00",
    ]
)


@settings(max_examples=400)
@given(
    methods=st.sampled_from([NO_AUTH, USER_PASS, BOTH]),
    prefix=_PREFIXES,
    junk=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    eof=st.booleans(),
)
def test_random_bytes_only_raise_remote_errors(
    methods: Sequence[AuthMethod], prefix: bytes, junk: bytes, cuts: list[int], eof: bool
) -> None:
    server = SocksServer(methods, max_buffered=600)
    chunks = split(prefix + junk, cuts) + ([b""] if eof else [])
    with contextlib.suppress(RemoteSocksError):
        _answer_everything(server, chunks)
    assert server.state in set(SocksState)


# --- a real client: curl over loopback ------------------------------------------------------

CURL = shutil.which("curl")
BODY = b"hello through socks\n"


@dataclass
class Harness:
    """A tiny SOCKS5 listener on loopback built on SocksServer, relaying to real origins."""

    methods: Sequence[AuthMethod]
    users: dict[bytes, bytes] = field(default_factory=dict)
    # Domain names the harness resolves itself (so curl's --socks5-hostname is proven).
    names: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    replies: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = SocksServer(self.methods)
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                event = server.next_event()
                await self._send(writer, server)
                if event is NEED_DATA:
                    data = await reader.read(65536)
                    server.feed(data)
                    continue
                self.events.append(event)
                if isinstance(event, Credentials):
                    ok = self.users.get(event.username) == event.password
                    server.accept_credentials(ok)
                    await self._send(writer, server)
                    if not ok:
                        return
                elif isinstance(event, ConnectRequest):
                    host = self.names.get(event.host, event.host)
                    try:
                        up_reader, upstream = await asyncio.open_connection(host, event.port)
                    except OSError:
                        server.reply_failure(ReplyCode.CONNECTION_REFUSED)
                        await self._send(writer, server)
                        return
                    bound = upstream.get_extra_info("sockname")
                    server.reply_success(bound[0], bound[1])
                    await self._send(writer, server)
                    upstream.write(server.take_buffered())
                    await asyncio.gather(relay(reader, upstream), relay(up_reader, writer))
                    return
        except RemoteSocksError:
            await self._send(writer, server)
        finally:
            for w in (upstream, writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, server: SocksServer) -> None:
        out = server.data_to_send()
        if out:
            self.replies += out
            writer.write(out)
            await writer.drain()


async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


async def origin_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(handler: object, host: str) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, 0)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    assert CURL is not None
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize(
    ("flag", "url_host", "expected_host", "atyp"),
    [
        ("--socks5", "127.0.0.1", "127.0.0.1", AddressType.IPV4),
        ("--socks5-hostname", "origin.test", "origin.test", AddressType.DOMAIN),
    ],
)
async def test_curl_no_auth(
    flag: str, url_host: str, expected_host: str, atyp: AddressType
) -> None:
    harness = Harness(NO_AUTH, names={"origin.test": "127.0.0.1"})
    async with (
        serving(origin_handler, "127.0.0.1") as oport,
        serving(harness.handle, "127.0.0.1") as sport,
    ):
        rc, out, err = await curl(flag, f"127.0.0.1:{sport}", f"http://{url_host}:{oport}/x")
    assert (rc, err) == (0, b"")
    assert out == BODY
    assert harness.events == [
        MethodChosen(AuthMethod.NO_AUTH),
        ConnectRequest(expected_host, oport, atyp),
    ]
    assert harness.replies[:3] == b"\x05\x00\x05"
    assert harness.replies[3] == 0  # succeeded


@needs_curl
async def test_curl_ipv6_destination() -> None:
    if not _have_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) in this environment")
    harness = Harness(NO_AUTH)
    async with (
        serving(origin_handler, "::1") as oport,
        serving(harness.handle, "127.0.0.1") as sport,
    ):
        rc, out, err = await curl("--socks5", f"127.0.0.1:{sport}", f"http://[::1]:{oport}/")
    assert (rc, out, err) == (0, BODY, b"")
    assert harness.events[-1] == ConnectRequest("::1", oport, AddressType.IPV6)


@needs_curl
async def test_curl_username_password() -> None:
    harness = Harness(USER_PASS, users={b"alice": b"s3cret"}, names={"origin.test": "127.0.0.1"})
    async with (
        serving(origin_handler, "127.0.0.1") as oport,
        serving(harness.handle, "127.0.0.1") as sport,
    ):
        proxy = f"127.0.0.1:{sport}"
        url = f"http://origin.test:{oport}/"
        rc, out, err = await curl("--socks5-hostname", proxy, "--proxy-user", "alice:s3cret", url)
        assert (rc, out, err) == (0, BODY, b"")
        assert harness.events == [
            MethodChosen(AuthMethod.USERNAME_PASSWORD),
            Credentials(b"alice", b"s3cret"),
            ConnectRequest("origin.test", oport, AddressType.DOMAIN),
        ]
        assert harness.replies[:4] == b"\x05\x02\x01\x00"

        harness.events.clear()
        harness.replies.clear()
        rc, out, _ = await curl("--socks5-hostname", proxy, "--proxy-user", "alice:wrong", url)
        assert rc != 0 and out == b""
        assert harness.events == [
            MethodChosen(AuthMethod.USERNAME_PASSWORD),
            Credentials(b"alice", b"wrong"),
        ]
        assert harness.replies == b"\x05\x02\x01\x01"

        # Without credentials curl offers only no-auth, which this listener refuses.
        harness.events.clear()
        harness.replies.clear()
        rc, out, _ = await curl("--socks5-hostname", proxy, url)
        assert rc != 0 and out == b""
        assert harness.events == []
        assert harness.replies == b"\x05\xff"


@needs_curl
async def test_curl_connection_refused_reply() -> None:
    harness = Harness(NO_AUTH)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    async with serving(harness.handle, "127.0.0.1") as sport:
        rc, out, _ = await curl("--socks5", f"127.0.0.1:{sport}", f"http://127.0.0.1:{dead}/")
    assert rc != 0 and out == b""
    assert harness.replies == b"\x05\x00\x05\x05" + FAIL_TAIL
