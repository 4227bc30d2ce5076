"""HTTP tracker announce (BEP 3, compact peers BEP 23, IPv6 peers BEP 7, scrape BEP 48), sans-IO.

Why it is built this way
------------------------
* No I/O: :func:`announce_url` builds the GET URL, :func:`parse_announce_response` turns the
  body the tracker sent into an :class:`AnnounceResponse`. :mod:`swarm.tracker_client` moves
  the bytes; the interceptor, which sees the same replies on the wire, reuses the parser.
* The tracker's reply is outside input. Anything wrong with it raises a
  :class:`TrackerResponseError` (a :class:`~swarm.errors.RemoteProtocolError`) that names the
  key and the bad value; a reply carrying ``failure reason`` raises :class:`TrackerFailure`
  with the tracker's own text in ``reason``. Absurd numbers (negative interval, port 0 or above
  65535) are rejected rather than passed on, because the consumer would schedule or dial them.
* Lenient where real trackers differ and strictness buys nothing: dictionary keys out of order
  (older PHP trackers), trailing whitespace after the value, no ``peers`` key when the swarm is
  empty, and both peer forms (the compact byte string and the BEP 3 list of dictionaries).
* ``info_hash`` and ``peer_id`` are raw bytes, so they are percent-encoded byte by byte; an
  announce URL's own query (private trackers put a passkey there) is kept verbatim and ours
  appended with ``&``. The URL is assembled as a string and never re-parsed, because a parse
  and unparse round trip may normalise a passkey the tracker compares byte for byte.

The tracker error hierarchy lives here because both sans-IO cores raise it::

    TrackerError (SwarmError)
      TrackerResponseError (+ RemoteProtocolError)   the reply is malformed or absurd
        TrackerFailure                               the tracker refused: .reason
      TrackerUnreachable (+ ConnectionError)         no reply: DNS, refused, timeout
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias
from urllib.parse import quote, quote_from_bytes, urlsplit

from swarm.bencode import BValue, bdecode_prefix
from swarm.compact import decode_peers4, decode_peers6
from swarm.errors import LocalProtocolError, RemoteProtocolError, SwarmError

__all__ = [
    "MAX_RESPONSE_SIZE",
    "AnnounceRequest",
    "AnnounceResponse",
    "Event",
    "Peer",
    "TrackerError",
    "TrackerFailure",
    "TrackerResponseError",
    "TrackerUnreachable",
    "announce_url",
    "parse_announce_response",
    "scrape_url",
]

Event: TypeAlias = Literal["started", "completed", "stopped"]
Peer: TypeAlias = tuple[str, int]

#: Replies larger than this are refused; a busy swarm's 200 compact peers take 1.2 kB.
MAX_RESPONSE_SIZE: Final = 2 << 20

_EVENTS: Final = frozenset({"started", "completed", "stopped"})
_U64: Final = (1 << 64) - 1
_I32_MAX: Final = (1 << 31) - 1
# A failure reason or warning ends up in logs; a hostile tracker should not fill them.
_MAX_TEXT: Final = 500
_WHITESPACE: Final = b" \t\r\n"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME: Final = re.compile(r"(?=.{1,254}$)" + _LABEL + r"(?:\." + _LABEL + r")*\.?")


# --- errors ---------------------------------------------------------------------------------


class TrackerError(SwarmError):
    """Root of everything that can go wrong when announcing to a tracker."""


class TrackerResponseError(TrackerError, RemoteProtocolError):
    """The tracker's reply is malformed or carries absurd values."""


class TrackerFailure(TrackerResponseError):
    """The tracker refused the announce; ``reason`` is its own text (or the HTTP status)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"tracker failure: {reason}")
        self.reason = reason


class TrackerUnreachable(TrackerError, ConnectionError):
    """No reply: the name did not resolve, the connection was refused, or the time ran out."""


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """What we tell the tracker. ``numwant=-1`` leaves the count to the tracker.

    Validated on construction: a wrong value here is our bug (:class:`LocalProtocolError`).
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: Event | None
    numwant: int = 200
    compact: bool = True
    key: int | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.info_hash, bytes) or len(self.info_hash) != 20:
            raise LocalProtocolError(
                f"announce: info_hash must be 20 bytes, not {self.info_hash!r}"
            )
        if not isinstance(self.peer_id, bytes) or len(self.peer_id) != 20:
            raise LocalProtocolError(f"announce: peer_id must be 20 bytes, not {self.peer_id!r}")
        _check_int("port", self.port, 0, 0xFFFF)
        _check_int("uploaded", self.uploaded, 0, _U64)
        _check_int("downloaded", self.downloaded, 0, _U64)
        _check_int("left", self.left, 0, _U64)
        _check_int("numwant", self.numwant, -1, _I32_MAX)
        if self.key is not None:
            _check_int("key", self.key, 0, 0xFFFFFFFF)
        if self.event is not None and self.event not in _EVENTS:
            raise LocalProtocolError(f"announce: unknown event {self.event!r}")
        if self.ip is not None and (not isinstance(self.ip, str) or not self.ip.isprintable()):
            raise LocalProtocolError(f"announce: ip must be a printable string, not {self.ip!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LocalProtocolError(
            f"announce: {name} must be an integer in {lo}..{hi}, not {value!r}"
        )


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    """A successful announce. ``peers`` holds IPv4 and IPv6 peers (``peers`` then ``peers6``);
    ``complete``/``incomplete`` are seeders/leechers when the tracker says."""

    interval: int
    min_interval: int | None
    peers: tuple[Peer, ...]
    complete: int | None
    incomplete: int | None
    warning: str | None
    tracker_id: bytes | None


# --- request --------------------------------------------------------------------------------


def announce_url(base_url: str, req: AnnounceRequest) -> str:
    """The GET URL announcing ``req`` to the HTTP(S) tracker at ``base_url``."""
    try:
        parts = urlsplit(base_url)
    except ValueError as exc:
        raise LocalProtocolError(f"announce: bad tracker URL {base_url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise LocalProtocolError(f"announce: {base_url!r} is not an http:// or https:// URL")
    params = [
        "info_hash=" + quote_from_bytes(req.info_hash, safe=""),
        "peer_id=" + quote_from_bytes(req.peer_id, safe=""),
        f"port={req.port}",
        f"uploaded={req.uploaded}",
        f"downloaded={req.downloaded}",
        f"left={req.left}",
        f"compact={int(req.compact)}",
    ]
    if req.event is not None:
        params.append(f"event={req.event}")
    if req.numwant >= 0:
        params.append(f"numwant={req.numwant}")
    if req.key is not None:
        # Hex, as the common clients send it; the tracker only compares it.
        params.append(f"key={req.key:08x}")
    if req.ip is not None:
        params.append("ip=" + quote(req.ip, safe=""))
    # The fragment is never sent to a server; everything before it is kept verbatim.
    base = base_url.partition("#")[0]
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return base + sep + "&".join(params)


def scrape_url(announce_url: str) -> str | None:
    """The BEP 48 scrape URL for an HTTP(S) announce URL, or None when there is none.

    The last path segment must start with ``announce``; that word becomes ``scrape`` and the
    rest of the URL (``.php``, the query) is kept.
    """
    try:
        parts = urlsplit(announce_url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    last = parts.path.rpartition("/")[2]
    if not last.startswith("announce"):
        return None
    cut = len(announce_url)
    for mark in ("?", "#"):
        at = announce_url.find(mark)
        if at != -1:
            cut = min(cut, at)
    head = announce_url[:cut]
    if not head.endswith(last):  # a path urlsplit normalised; refuse to guess
        return None
    return head[: len(head) - len(last)] + "scrape" + last[len("announce") :] + announce_url[cut:]


# --- response -------------------------------------------------------------------------------


def parse_announce_response(body: bytes | bytearray | memoryview) -> AnnounceResponse:
    """Parse an HTTP tracker's announce reply body (already un-gzipped)."""
    if len(body) > MAX_RESPONSE_SIZE:
        raise TrackerResponseError(
            f"tracker response: {len(body)} bytes, more than the {MAX_RESPONSE_SIZE} accepted"
        )
    if not body:
        raise TrackerResponseError("tracker response: empty body")
    try:
        value, end = bdecode_prefix(body, strict_order=False)
    except RemoteProtocolError as exc:
        raise TrackerResponseError(f"tracker response: {exc}") from exc
    if bytes(body[end:]).strip(_WHITESPACE):
        raise TrackerResponseError(
            f"tracker response: {len(body) - end} bytes of junk after the bencoded value"
        )
    if not isinstance(value, dict):
        raise TrackerResponseError(
            f"tracker response: top level is {_kind(value)}, not a dictionary"
        )
    if b"failure reason" in value:
        raise TrackerFailure(_text(value[b"failure reason"]))

    interval = _number(value, b"interval", _I32_MAX)
    if interval is None:
        raise TrackerResponseError("tracker response: no 'interval' in a successful reply")
    peers: list[Peer] = []
    if b"peers" in value:
        raw = value[b"peers"]
        if isinstance(raw, bytes):
            peers.extend(_compact(raw, "peers"))
        elif isinstance(raw, list):
            peers.extend(_dict_peers(raw))
        else:
            raise TrackerResponseError(
                f"tracker response: 'peers' is {_kind(raw)}, not a string or a list"
            )
    if b"peers6" in value:
        raw6 = value[b"peers6"]
        if not isinstance(raw6, bytes):
            raise TrackerResponseError(f"tracker response: 'peers6' is {_kind(raw6)}, not a string")
        peers.extend(_compact(raw6, "peers6"))

    warning = value.get(b"warning message")
    tracker_id = value.get(b"tracker id")
    if tracker_id is not None and not isinstance(tracker_id, bytes):
        raise TrackerResponseError(
            f"tracker response: 'tracker id' is {_kind(tracker_id)}, not a string"
        )
    return AnnounceResponse(
        interval=interval,
        min_interval=_number(value, b"min interval", _I32_MAX),
        peers=tuple(peers),
        complete=_number(value, b"complete", _U64),
        incomplete=_number(value, b"incomplete", _U64),
        warning=None if warning is None else _text(warning),
        tracker_id=tracker_id,
    )


def _kind(value: BValue) -> str:
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, bytes):
        return f"a {len(value)}-byte string"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return "a dictionary"


def _text(value: BValue) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _number(d: dict[bytes, BValue], key: bytes, hi: int) -> int | None:
    raw = d.get(key)
    if raw is None:
        return None
    name = key.decode()
    if not isinstance(raw, int):
        raise TrackerResponseError(f"tracker response: {name!r} is {_kind(raw)}, not an integer")
    if not 0 <= raw <= hi:
        raise TrackerResponseError(f"tracker response: {name!r} is {raw}, not in 0..{hi}")
    return raw


def _compact(raw: bytes, where: str) -> list[Peer]:
    try:
        peers = decode_peers6(raw) if where == "peers6" else decode_peers4(raw)
    except RemoteProtocolError as exc:
        raise TrackerResponseError(f"tracker response: {where!r}: {exc}") from None
    for host, port in peers:
        if port == 0:
            raise TrackerResponseError(f"tracker response: peer {host} in {where!r} has port 0")
    return peers


def _dict_peers(items: list[BValue]) -> list[Peer]:
    out: list[Peer] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TrackerResponseError(
                f"tracker response: peers[{i}] is {_kind(item)}, not a dictionary"
            )
        ip = item.get(b"ip")
        port = item.get(b"port")
        if not isinstance(ip, bytes):
            raise TrackerResponseError(f"tracker response: peers[{i}] has no 'ip' string")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TrackerResponseError(f"tracker response: peers[{i}] has no 'port' integer")
        if not 1 <= port <= 0xFFFF:
            raise TrackerResponseError(
                f"tracker response: peers[{i}] has port {port}, not in 1..65535"
            )
        out.append((_host(ip, i), port))
    return out


def _host(raw: bytes, i: int) -> str:
    # BEP 3: "ip" is an IPv4 or IPv6 address or a DNS name. Addresses come back in the same
    # canonical form the compact decoder produces, so callers can compare peers as strings.
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and "%" not in text:
        try:
            addr = ipaddress.ip_address(text)
            family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
            return socket.inet_ntop(family, addr.packed)
        except ValueError:
            pass
        if _HOSTNAME.fullmatch(text) and not text.rstrip(".").rpartition(".")[2].isdigit():
            return text
    raise TrackerResponseError(
        f"tracker response: peers[{i}] 'ip' {raw[:64]!r} is not an address or host name"
    )
