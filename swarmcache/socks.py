"""Strict sans-IO SOCKS5 server handshake (RFC 1928, with RFC 1929 username/password).

Why it is built this way
------------------------
* No I/O (h11's model, as in :mod:`swarmcache.http.parser`): the listener ``feed()``\\ s what
  it read (``b""`` meaning EOF), pulls events with ``next_event()`` until ``NEED_DATA``, and
  writes whatever ``data_to_send()`` returns. Every byte we owe the client, whether it answers
  an event (method selection) or a decision of the caller (``accept_credentials``,
  ``reply_success``, ``reply_failure``) or an error (``05 FF``, ``05 07``), goes through that
  one outgoing buffer, so there is exactly one place the listener has to flush.
* Only the server side and only CONNECT: the box relays TCP for subscribers; BIND and UDP
  ASSOCIATE are answered "command not supported" (0x07) and the connection is closed.
* Strict, because this is an open-proxy risk and a parser facing the Internet: wrong
  versions, a non-zero reserved byte, unknown address types, empty or non-ASCII or
  control-character domain names, port 0 and empty RFC 1929 fields are refused, never
  repaired. After an error the reader stays dead; the connection has to be closed.
* Bounded: every handshake message has a small maximum size and is checked byte by byte as it
  arrives (a wrong version byte fails before the rest is read). Bytes that pile up while the
  caller is deciding (optimistic data pipelined behind the request, or a flood) are capped by
  ``max_buffered``; ``feed`` raises :class:`RemoteSocksError` past it.
* Pipelining: a client may send greeting, credentials, request and its first application
  bytes in one segment. Whatever follows the request is kept and handed over by
  ``take_buffered()`` after ``reply_success``, so the listener can sniff ``GET `` and route a
  port-80 tunnel into the HTTP cache.

Theory of operation
-------------------
``next_event`` runs the step function of the current state (``_step_<state>``, looked up in a
table) until one produces an event or ``NEED_DATA``; the caller's answers move the waiting
states on::

    state          on                                         next state    client gets
    GREETING       greeting offering an allowed method        AUTH | REQUEST  05 MM
    GREETING       no allowed method offered (or NMETHODS 0)  ERROR           05 FF
    AUTH           RFC 1929 request (yields Credentials)      AUTH_WAIT
    AUTH_WAIT      accept_credentials(True)                   REQUEST         01 00
    AUTH_WAIT      accept_credentials(False)                  CLOSED          01 01
    REQUEST        CONNECT (yields ConnectRequest)            REQUEST_WAIT
    REQUEST        BIND / UDP ASSOCIATE / unknown command     ERROR           05 07 ...
    REQUEST_WAIT   reply_success(host, port)                  DONE            05 00 ...
    REQUEST_WAIT   reply_failure(code)                        CLOSED          05 code ...
    any            bad bytes, EOF inside the handshake        ERROR           (see below)

In ERROR ``next_event`` raises the same :class:`RemoteSocksError` for ever; if a reply is
owed (05 FF, 01 01, 05 01/02/07/08) it is queued in ``data_to_send()`` first, so the listener
flushes it and closes. In the waiting states, CLOSED and DONE, ``next_event`` is a misuse
(:class:`LocalSocksError`): the caller has to answer, close, or relay.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

__all__ = [
    "NEED_DATA",
    "AddressType",
    "AuthMethod",
    "ConnectRequest",
    "Credentials",
    "Event",
    "LocalSocksError",
    "MethodChosen",
    "RemoteSocksError",
    "ReplyCode",
    "SocksError",
    "SocksServer",
    "SocksState",
]


# --- errors ---------------------------------------------------------------------------------


class SocksError(Exception):
    """Root of this module's errors."""


class RemoteSocksError(SocksError, ValueError):
    """The client sent bytes we refuse; flush ``data_to_send()`` and close the connection."""


class LocalSocksError(SocksError):
    """This process used the API wrongly (a bug here, not in the client)."""


# --- protocol constants ---------------------------------------------------------------------


class AuthMethod(enum.IntEnum):
    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02


_NO_ACCEPTABLE_METHOD: Final = 0xFF


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class ReplyCode(enum.IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


_COMMAND_NAMES: Final = {1: "CONNECT", 2: "BIND", 3: "UDP ASSOCIATE"}

# Preference when the client offers several: authenticating is the safer choice.
_PREFERENCE: Final = (AuthMethod.USERNAME_PASSWORD, AuthMethod.NO_AUTH)

# Hostname labels as resolvers accept them (underscore included, it occurs in practice); IDN
# must arrive as punycode ("xn--..."), which this pattern allows.
_LABEL_RE = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_CTL_RE = re.compile(rb"[\x00-\x1f\x7f]")

# Failure replies carry a zero IPv4 bound address: the client must ignore it (RFC 1928 §6).
_FAILURE_TAIL: Final = b"\x00\x01\x00\x00\x00\x00\x00\x00"


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodChosen:
    """The greeting was accepted; ``05 method`` is already queued in ``data_to_send()``."""

    method: AuthMethod


@dataclass(frozen=True, slots=True)
class Credentials:
    """RFC 1929 credentials; answer with ``accept_credentials(ok)`` before anything else.

    Raw bytes: RFC 1929 names no encoding, and a password check wants the exact octets
    (compare with ``hmac.compare_digest``).
    """

    username: bytes
    password: bytes

    def __repr__(self) -> str:
        # Keeps passwords out of logs and pytest failure output.
        return f"Credentials(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A CONNECT to ``host:port``; answer with ``reply_success`` or ``reply_failure``.

    ``host`` is the canonical text of an IPv4/IPv6 address (``ipaddress`` formatting) or, for
    ``AddressType.DOMAIN``, the domain name as sent (ASCII, not resolved here).
    """

    host: str
    port: int
    atyp: AddressType


class _NeedData(enum.Enum):
    # A one-member enum rather than a bare object: type checkers narrow `x is NEED_DATA`.
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"

    __str__ = __repr__


NEED_DATA: Final = _NeedData.NEED_DATA

Event: TypeAlias = MethodChosen | Credentials | ConnectRequest
_Step: TypeAlias = Event | _NeedData | None


class SocksState(enum.IntEnum):
    # IntEnum: states index the step table.
    GREETING = 0
    AUTH = 1
    AUTH_WAIT = 2
    REQUEST = 3
    REQUEST_WAIT = 4
    DONE = 5
    CLOSED = 6
    ERROR = 7


# --- server ---------------------------------------------------------------------------------


class SocksServer:
    """The server side of one SOCKS5 client connection.

    ``feed(data)`` adds received bytes (``b""`` = EOF); ``next_event()`` returns
    :class:`MethodChosen`, then (with username/password) :class:`Credentials`, then
    :class:`ConnectRequest`, or ``NEED_DATA``. Answer ``Credentials`` with
    ``accept_credentials`` and ``ConnectRequest`` with ``reply_success`` / ``reply_failure``.
    After every call, write ``data_to_send()`` to the client. After ``reply_success`` the
    handshake is over: ``take_buffered()`` returns the client's bytes that followed the
    request, and the connection becomes a plain relay. A :class:`RemoteSocksError` is final:
    flush ``data_to_send()`` (it may hold a refusal) and close.
    """

    _STEPS: ClassVar[tuple[Callable[[SocksServer], _Step], ...]] = ()

    def __init__(
        self,
        methods: Iterable[AuthMethod] = (AuthMethod.NO_AUTH,),
        *,
        max_buffered: int = 65536,
    ) -> None:
        try:
            allowed = frozenset(AuthMethod(m) for m in methods)
        except ValueError as exc:
            raise LocalSocksError(f"unsupported authentication method: {exc}") from None
        if not allowed:
            raise LocalSocksError("at least one authentication method must be allowed")
        # A request with a 255-byte domain name is 262 bytes; an RFC 1929 message up to 513.
        if max_buffered < 513:
            raise LocalSocksError("max_buffered must be >= 513 (the largest handshake message)")
        self._methods = allowed
        self._max_buffered = max_buffered
        # Handshake messages are tiny; consumed prefixes are deleted (amortised O(1)).
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._state = SocksState.GREETING
        self._error: RemoteSocksError | None = None
        self._method: AuthMethod | None = None
        self._request: ConnectRequest | None = None

    # --- public ---------------------------------------------------------------------------
    @property
    def state(self) -> SocksState:
        return self._state

    @property
    def method(self) -> AuthMethod | None:
        """The chosen authentication method, once ``MethodChosen`` was produced."""
        return self._method

    @property
    def request(self) -> ConnectRequest | None:
        """The accepted CONNECT request, once produced."""
        return self._request

    @property
    def eof(self) -> bool:
        return self._eof

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the client closed its sending side (EOF).

        Raises :class:`RemoteSocksError` when more than ``max_buffered`` bytes are waiting.
        """
        state = self._state
        if state is SocksState.ERROR or state is SocksState.CLOSED:
            return  # the connection is being closed; nothing more is read
        if state is SocksState.DONE:
            raise LocalSocksError("handshake complete: relay the client's bytes directly")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalSocksError("feed() after EOF")
        self._buf += data
        if len(self._buf) > self._max_buffered:
            size = len(self._buf)
            self._buf.clear()  # free it now, the connection is going away
            raise self._fail(
                f"socks: {size} bytes buffered during the handshake (limit {self._max_buffered})"
            )

    def next_event(self) -> Event | _NeedData:
        try:
            while True:
                result = self._STEPS[self._state](self)
                if result is not None:
                    return result
        except RemoteSocksError as exc:
            if self._error is None:
                self._state = SocksState.ERROR
                self._error = exc
            raise

    def data_to_send(self) -> bytes:
        """Return and forget the bytes owed to the client (possibly ``b""``)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def accept_credentials(self, ok: bool) -> None:
        """Answer a :class:`Credentials` event; on ``False`` the connection must be closed."""
        self._expect(SocksState.AUTH_WAIT, "accept_credentials()")
        if ok:
            self._out.append(b"\x01\x00")
            self._state = SocksState.REQUEST
        else:
            self._out.append(b"\x01\x01")
            self._close()

    def reply_success(
        self, bound_host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, bound_port: int
    ) -> None:
        """Answer a :class:`ConnectRequest`: the tunnel is up, bound to ``bound_host:port``.

        ``bound_host`` is the local address of the outgoing connection (an IP address; a
        domain name is encoded as such). Afterwards call ``take_buffered()`` and relay.
        """
        self._expect(SocksState.REQUEST_WAIT, "reply_success()")
        if not 0 <= bound_port <= 0xFFFF:
            raise LocalSocksError(f"bound port {bound_port} out of range")
        self._out.append(
            b"\x05\x00\x00" + _encode_address(bound_host) + bound_port.to_bytes(2, "big")
        )
        self._state = SocksState.DONE

    def reply_failure(self, code: ReplyCode | int) -> None:
        """Answer a :class:`ConnectRequest` with a failure ``code``; then close."""
        self._expect(SocksState.REQUEST_WAIT, "reply_failure()")
        try:
            code = ReplyCode(code)
        except ValueError:
            raise LocalSocksError(f"unknown SOCKS5 reply code {code!r}") from None
        if code is ReplyCode.SUCCEEDED:
            raise LocalSocksError("reply_failure() with SUCCEEDED: use reply_success()")
        self._out.append(bytes((5, code)) + _FAILURE_TAIL)
        self._close()

    def take_buffered(self) -> bytes:
        """Return and forget the client's bytes that followed the request (after success)."""
        if self._state is not SocksState.DONE:
            raise LocalSocksError(f"take_buffered() before reply_success() (in {self._state.name})")
        out = bytes(self._buf)
        self._buf.clear()
        return out

    # --- steps ----------------------------------------------------------------------------
    def _step_greeting(self) -> _Step:
        buf = self._buf
        if buf and buf[0] != 5:
            # No reply: whatever the client speaks (SOCKS4, HTTP, TLS), it is not SOCKS5.
            raise RemoteSocksError(
                f"socks: greeting has version {buf[0]:#04x}, expected 0x05{_hint(buf)}"
            )
        if not self._need(2, "greeting"):
            return NEED_DATA
        nmethods = buf[1]
        if nmethods == 0:
            raise self._fail(
                "socks: greeting offers no authentication method (NMETHODS 0)",
                bytes((5, _NO_ACCEPTABLE_METHOD)),
            )
        if not self._need(2 + nmethods, "greeting"):
            return NEED_DATA
        offered = bytes(buf[2 : 2 + nmethods])
        del buf[: 2 + nmethods]
        for method in _PREFERENCE:
            if method in self._methods and method in offered:
                break
        else:
            allowed = ", ".join(f"{m:#04x}" for m in sorted(self._methods))
            raise self._fail(
                f"socks: no acceptable authentication method: client offered "
                f"{offered.hex(' ')}, allowed {allowed}",
                bytes((5, _NO_ACCEPTABLE_METHOD)),
            )
        self._method = method
        self._out.append(bytes((5, method)))
        self._state = (
            SocksState.AUTH if method is AuthMethod.USERNAME_PASSWORD else SocksState.REQUEST
        )
        return MethodChosen(method)

    def _step_auth(self) -> _Step:
        buf = self._buf
        refuse = b"\x01\x01"
        if buf and buf[0] != 1:
            raise self._fail(
                f"socks: username/password request has version {buf[0]:#04x}, expected 0x01",
                refuse,
            )
        if not self._need(2, "username/password request"):
            return NEED_DATA
        ulen = buf[1]
        if ulen == 0:
            raise self._fail("socks: empty username (ULEN 0)", refuse)
        if not self._need(3 + ulen, "username/password request"):
            return NEED_DATA
        plen = buf[2 + ulen]
        if plen == 0:
            raise self._fail("socks: empty password (PLEN 0)", refuse)
        end = 3 + ulen + plen
        if not self._need(end, "username/password request"):
            return NEED_DATA
        creds = Credentials(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end]))
        del buf[:end]
        self._state = SocksState.AUTH_WAIT
        return creds

    def _step_request(self) -> _Step:
        buf = self._buf
        general = bytes((5, ReplyCode.GENERAL_FAILURE)) + _FAILURE_TAIL
        if buf and buf[0] != 5:
            raise self._fail(f"socks: request has version {buf[0]:#04x}, expected 0x05", general)
        if not self._need(4, "request"):
            return NEED_DATA
        cmd, rsv, atyp = buf[1], buf[2], buf[3]
        if cmd != 1:
            name = _COMMAND_NAMES.get(cmd, "unknown command")
            raise self._fail(
                f"socks: {name} ({cmd:#04x}) not supported, only CONNECT",
                bytes((5, ReplyCode.COMMAND_NOT_SUPPORTED)) + _FAILURE_TAIL,
            )
        if rsv != 0:
            raise self._fail(f"socks: request reserved byte is {rsv:#04x}, expected 0x00", general)
        if atyp == AddressType.IPV4:
            end = 4 + 4 + 2
        elif atyp == AddressType.IPV6:
            end = 4 + 16 + 2
        elif atyp == AddressType.DOMAIN:
            if not self._need(5, "request"):
                return NEED_DATA
            if buf[4] == 0:
                raise self._fail("socks: request has an empty domain name", general)
            end = 5 + buf[4] + 2
        else:
            raise self._fail(
                f"socks: request has unknown address type {atyp:#04x}",
                bytes((5, ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)) + _FAILURE_TAIL,
            )
        if not self._need(end, "request"):
            return NEED_DATA
        port = int.from_bytes(buf[end - 2 : end], "big")
        host: str
        if atyp == AddressType.IPV4:
            host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
        elif atyp == AddressType.IPV6:
            host = str(ipaddress.IPv6Address(bytes(buf[4:20])))
        else:
            problem = _domain_problem(bytes(buf[5 : end - 2]))
            if problem is not None:
                raise self._fail(f"socks: request domain name {problem}", general)
            host = buf[5 : end - 2].decode("ascii")
        if port == 0:
            raise self._fail(
                f"socks: request for port 0 of {host}",
                bytes((5, ReplyCode.NOT_ALLOWED)) + _FAILURE_TAIL,
            )
        del buf[:end]
        request = ConnectRequest(host, port, AddressType(atyp))
        self._request = request
        self._state = SocksState.REQUEST_WAIT
        return request

    def _step_auth_wait(self) -> _Step:
        raise LocalSocksError("answer the Credentials event with accept_credentials() first")

    def _step_request_wait(self) -> _Step:
        raise LocalSocksError("answer the ConnectRequest with reply_success()/reply_failure()")

    def _step_done(self) -> _Step:
        raise LocalSocksError("handshake complete: take_buffered() and relay")

    def _step_closed(self) -> _Step:
        raise LocalSocksError("the request was refused: flush data_to_send() and close")

    def _step_error(self) -> _Step:
        assert self._error is not None
        raise RemoteSocksError(str(self._error))

    # --- helpers --------------------------------------------------------------------------
    def _need(self, n: int, what: str) -> bool:
        """Whether ``n`` bytes are buffered; at EOF, an error naming the truncated message."""
        have = len(self._buf)
        if have >= n:
            return True
        if self._eof:
            raise RemoteSocksError(
                f"socks: connection closed inside the {what} ({have} of {n} bytes)"
            )
        return False

    def _fail(self, msg: str, reply: bytes = b"") -> RemoteSocksError:
        """Queue ``reply`` (owed to the client before closing) and make the reader dead."""
        if reply:
            self._out.append(reply)
        exc = RemoteSocksError(msg)
        self._state = SocksState.ERROR
        self._error = exc
        return exc

    def _expect(self, state: SocksState, what: str) -> None:
        if self._state is not state:
            raise LocalSocksError(f"{what} called in state {self._state.name}")

    def _close(self) -> None:
        self._state = SocksState.CLOSED
        self._buf.clear()


# The state table: the step function of each state, in SocksState order. Plain functions, not
# bound methods kept on the instance, which would make every server a reference cycle.
SocksServer._STEPS = tuple(getattr(SocksServer, f"_step_{s.name.lower()}") for s in SocksState)


def _hint(buf: bytearray) -> str:
    """A hint for the version error when the client evidently speaks something else."""
    if buf[0] == 4:
        return " (a SOCKS4 client)"
    if buf[:1].isalpha():
        return " (looks like plain text, perhaps HTTP)"
    if buf[0] == 0x16:
        return " (looks like a TLS handshake)"
    return ""


def _domain_problem(name: bytes) -> str | None:
    """Why ``name`` is not an acceptable ASCII host name, or None."""
    ctl = _CTL_RE.search(name)
    if ctl is not None:
        return f"contains control character {name[ctl.start()]:#04x} at offset {ctl.start()}"
    if not name.isascii():
        return f"{name[:64]!r} is not ASCII (IDN must be sent in punycode)"
    text = name.decode("ascii")
    if ":" in text:
        # An IPv6 literal sent as a domain name is unambiguous; anything else with a colon
        # would confuse host:port handling downstream.
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return f"{name[:64]!r} contains ':' but is not an IPv6 address"
        return None
    labels = name[:-1].split(b".") if name.endswith(b".") and len(name) > 1 else name.split(b".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            return f"{name[:64]!r} has an invalid label {label[:64]!r}"
    return None


def _encode_address(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(host, str):
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raw = host.encode("ascii", "replace")
            if len(raw) > 255 or _domain_problem(raw) is not None:
                raise LocalSocksError(
                    f"bound address {host!r} is neither an IP nor a host name"
                ) from None
            return bytes((AddressType.DOMAIN, len(raw))) + raw
    else:
        addr = host
    if isinstance(addr, ipaddress.IPv4Address):
        return bytes((AddressType.IPV4,)) + addr.packed
    return bytes((AddressType.IPV6,)) + addr.packed
