"""UDP tracker protocol (BEP 15): packet codecs and a sans-IO announce state machine.

Why it is built this way
------------------------
* No I/O: :class:`UdpAnnounce` is fed datagrams and clock readings and hands back the next
  datagram to send, the final :class:`~swarm.tracker_http.AnnounceResponse`, or None for a
  datagram to ignore. :mod:`swarm.tracker_client` owns the socket and the timer; tests drive
  the machine with a script of datagrams and times.
* Every packet type has a frozen dataclass and goes through :func:`encode_packet`,
  :func:`decode_request` and :func:`decode_response`, because the interceptor sees client
  announces and tracker replies on the wire and rewrites announce responses in flight
  (:func:`decode_announce_response` then :func:`encode_announce_response`, same transaction
  id). The codecs are faithful: they return what the wire says (signed ``int32`` fields
  included); the state machine is the one that rejects absurd values.
* The UDP peer list carries no length or family, so whether it holds 6-byte or 18-byte
  entries depends on whether the request went over IPv6: an ``ipv6`` flag, never a guess
  from the length (36 bytes is six IPv4 peers or two IPv6 peers).
* Retransmission follows BEP 15 (wait ``base * 2**n`` seconds, n = 0..8) with ``base``
  configurable: 15 s is right on the Internet, a loopback test wants milliseconds. A
  connection id is good for 60 s; a caller that announces often hands the last one back in
  (:class:`UdpConnection`) to save the connect round trip.
* Transaction ids come from the ``rng`` the caller passes: a ``random.SystemRandom`` in
  production (an off-path attacker must not guess them to forge replies), a seeded
  ``random.Random`` in tests.

Theory of operation
-------------------
::

    state       on                                          next state
    IDLE        start(), cached connection id still good    ANNOUNCING  (send announce)
    IDLE        start()                                     CONNECTING  (send connect)
    CONNECTING  connect response with our transaction id    ANNOUNCING  (send announce, n = 0)
    ANNOUNCING  announce response with our transaction id  DONE        (return AnnounceResponse)
    CONNECTING,
    ANNOUNCING  error response with our transaction id      DONE        (raise TrackerFailure)
    ANNOUNCING  8-byte announce reply (opentracker's "no")  DONE        (raise TrackerFailure)
                malformed reply with our transaction id     DONE        (raise TrackerResponseError)
                timeout, n < max_retransmits                same        (resend, n += 1; an
                                                                         expired connection id
                                                                         sends connect instead)
                timeout, n == max_retransmits               DONE        (raise TrackerUnreachable)
    any         datagram < 8 bytes or other transaction id  same        (return None)
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

from swarm.compact import (
    PEER4_SIZE,
    PEER6_SIZE,
    decode_peers4,
    decode_peers6,
    encode_peers4,
    encode_peers6,
)
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.tracker_http import (
    AnnounceRequest,
    AnnounceResponse,
    Peer,
    TrackerFailure,
    TrackerResponseError,
    TrackerUnreachable,
)

__all__ = [
    "ACTION_ANNOUNCE",
    "ACTION_CONNECT",
    "ACTION_ERROR",
    "ACTION_SCRAPE",
    "CONNECTION_ID_TTL",
    "EVENT_CODES",
    "PROTOCOL_ID",
    "AnnounceRequestPacket",
    "AnnounceResponsePacket",
    "ConnectRequest",
    "ConnectResponse",
    "ErrorResponse",
    "Packet",
    "ScrapeEntry",
    "ScrapeRequest",
    "ScrapeResponse",
    "UdpAnnounce",
    "UdpConnection",
    "decode_announce_response",
    "decode_request",
    "decode_response",
    "encode_announce_response",
    "encode_packet",
]

PROTOCOL_ID: Final = 0x41727101980
ACTION_CONNECT: Final = 0
ACTION_ANNOUNCE: Final = 1
ACTION_SCRAPE: Final = 2
ACTION_ERROR: Final = 3
#: BEP 15: "A client can use a connection ID until one minute after it has received it."
CONNECTION_ID_TTL: Final = 60.0
#: BEP 15 event field; ``None`` is a regular announce.
EVENT_CODES: Final[dict[str | None, int]] = {None: 0, "completed": 1, "started": 2, "stopped": 3}
# BEP 15 caps a scrape at about 74 hashes so the reply fits one datagram.
_MAX_SCRAPE_HASHES: Final = 74

_HEAD: Final = struct.Struct("!II")  # action, transaction_id: the start of every reply
_CONNECT_REQ: Final = struct.Struct("!QII")  # protocol_id, action, transaction_id
_CONNECT_RESP: Final = struct.Struct("!IIQ")  # action, transaction_id, connection_id
_REQ_HEAD: Final = struct.Struct("!QII")  # connection_id, action, transaction_id
# connection_id, action, transaction_id, info_hash, peer_id, downloaded, left, uploaded,
# event, ip, key, num_want, port
_ANNOUNCE_REQ: Final = struct.Struct("!QII20s20sQQQIIIiH")
_ANNOUNCE_RESP: Final = struct.Struct(
    "!IIiii"
)  # action, transaction_id, interval, leechers, seeders
_SCRAPE_ENTRY: Final = struct.Struct("!iii")  # seeders, completed, leechers


# --- packets --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    transaction_id: int
    connection_id: int


@dataclass(frozen=True, slots=True)
class AnnounceRequestPacket:
    """``event`` is the wire code (:data:`EVENT_CODES`); ``ip`` the raw IPv4 field (0 means
    the sender's address); ``options`` whatever follows the 98 fixed bytes (BEP 41)."""

    connection_id: int
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    event: int
    ip: int
    key: int
    num_want: int
    port: int
    options: bytes = b""


@dataclass(frozen=True, slots=True)
class AnnounceResponsePacket:
    transaction_id: int
    interval: int
    leechers: int
    seeders: int
    peers: tuple[Peer, ...]


@dataclass(frozen=True, slots=True)
class ScrapeRequest:
    connection_id: int
    transaction_id: int
    info_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ScrapeEntry:
    seeders: int
    completed: int
    leechers: int


@dataclass(frozen=True, slots=True)
class ScrapeResponse:
    transaction_id: int
    entries: tuple[ScrapeEntry, ...]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    transaction_id: int
    message: str


Packet: TypeAlias = (
    ConnectRequest
    | ConnectResponse
    | AnnounceRequestPacket
    | AnnounceResponsePacket
    | ScrapeRequest
    | ScrapeResponse
    | ErrorResponse
)


# --- encoding -------------------------------------------------------------------------------


def encode_packet(packet: Packet, *, ipv6: bool | None = None) -> bytes:
    """Serialize any packet. For an announce response, ``ipv6`` picks 18-byte peer entries;
    left as None it follows the peers' address family (an empty list is the same either way).

    Raises :class:`LocalProtocolError` for a field that does not fit its wire type.
    """
    try:
        return _encode(packet, ipv6)
    except struct.error as exc:
        raise LocalProtocolError(f"udp tracker: cannot encode {packet!r}: {exc}") from None


def _encode(p: Packet, ipv6: bool | None) -> bytes:
    if isinstance(p, ConnectRequest):
        return _CONNECT_REQ.pack(PROTOCOL_ID, ACTION_CONNECT, p.transaction_id)
    if isinstance(p, ConnectResponse):
        return _CONNECT_RESP.pack(ACTION_CONNECT, p.transaction_id, p.connection_id)
    if isinstance(p, AnnounceRequestPacket):
        for name, value in (("info_hash", p.info_hash), ("peer_id", p.peer_id)):
            if len(value) != 20:
                raise LocalProtocolError(f"udp tracker: {name} must be 20 bytes, not {value!r}")
        return (
            _ANNOUNCE_REQ.pack(
                p.connection_id,
                ACTION_ANNOUNCE,
                p.transaction_id,
                p.info_hash,
                p.peer_id,
                p.downloaded,
                p.left,
                p.uploaded,
                p.event,
                p.ip,
                p.key,
                p.num_want,
                p.port,
            )
            + p.options
        )
    if isinstance(p, AnnounceResponsePacket):
        return encode_announce_response(
            p.transaction_id, p.interval, p.leechers, p.seeders, p.peers, ipv6=ipv6
        )
    if isinstance(p, ScrapeRequest):
        for h in p.info_hashes:
            if len(h) != 20:
                raise LocalProtocolError(f"udp tracker: scrape info_hash must be 20 bytes: {h!r}")
        return _REQ_HEAD.pack(p.connection_id, ACTION_SCRAPE, p.transaction_id) + b"".join(
            p.info_hashes
        )
    if isinstance(p, ScrapeResponse):
        return _HEAD.pack(ACTION_SCRAPE, p.transaction_id) + b"".join(
            _SCRAPE_ENTRY.pack(e.seeders, e.completed, e.leechers) for e in p.entries
        )
    if isinstance(p, ErrorResponse):
        return _HEAD.pack(ACTION_ERROR, p.transaction_id) + p.message.encode("utf-8")
    raise LocalProtocolError(f"udp tracker: {p!r} is not a packet")


def encode_announce_response(
    transaction_id: int,
    interval: int,
    leechers: int,
    seeders: int,
    peers: tuple[Peer, ...] | list[Peer],
    *,
    ipv6: bool | None = None,
) -> bytes:
    """An announce response datagram; see :func:`encode_packet` for ``ipv6``."""
    if ipv6 is None:
        ipv6 = any(":" in host for host, _ in peers)
    try:
        head = _ANNOUNCE_RESP.pack(ACTION_ANNOUNCE, transaction_id, interval, leechers, seeders)
    except struct.error as exc:
        raise LocalProtocolError(f"udp tracker: cannot encode announce response: {exc}") from None
    return head + (encode_peers6(peers) if ipv6 else encode_peers4(peers))


# --- decoding -------------------------------------------------------------------------------


def decode_request(
    datagram: bytes | bytearray | memoryview,
) -> ConnectRequest | AnnounceRequestPacket | ScrapeRequest:
    """Decode a client-to-tracker datagram: connect, announce or scrape request.

    Raises :class:`RemoteProtocolError` saying what is wrong with it.
    """
    d = bytes(datagram)
    if len(d) < 16:
        raise RemoteProtocolError(f"udp tracker request: {len(d)} bytes, shorter than 16")
    first, action, tid = _REQ_HEAD.unpack_from(d)
    if action == ACTION_CONNECT:
        if first != PROTOCOL_ID:
            raise RemoteProtocolError(
                f"udp tracker request: connect with protocol id {first:#x}, not {PROTOCOL_ID:#x}"
            )
        return ConnectRequest(tid)
    if action == ACTION_ANNOUNCE:
        if len(d) < _ANNOUNCE_REQ.size:
            raise RemoteProtocolError(
                f"udp tracker request: announce of {len(d)} bytes, "
                f"shorter than {_ANNOUNCE_REQ.size}"
            )
        f = _ANNOUNCE_REQ.unpack_from(d)
        if f[8] not in EVENT_CODES.values():
            raise RemoteProtocolError(f"udp tracker request: unknown announce event {f[8]}")
        return AnnounceRequestPacket(
            connection_id=f[0],
            transaction_id=f[2],
            info_hash=f[3],
            peer_id=f[4],
            downloaded=f[5],
            left=f[6],
            uploaded=f[7],
            event=f[8],
            ip=f[9],
            key=f[10],
            num_want=f[11],
            port=f[12],
            options=d[_ANNOUNCE_REQ.size :],
        )
    if action == ACTION_SCRAPE:
        body = len(d) - 16
        if body == 0 or body % 20:
            raise RemoteProtocolError(
                f"udp tracker request: scrape with {body} bytes of info hashes, "
                "not a positive multiple of 20"
            )
        if body // 20 > _MAX_SCRAPE_HASHES:
            raise RemoteProtocolError(
                f"udp tracker request: scrape of {body // 20} hashes, more than "
                f"{_MAX_SCRAPE_HASHES}"
            )
        return ScrapeRequest(first, tid, tuple(d[i : i + 20] for i in range(16, len(d), 20)))
    raise RemoteProtocolError(f"udp tracker request: unknown action {action}")


def decode_response(
    datagram: bytes | bytearray | memoryview, *, ipv6: bool = False
) -> ConnectResponse | AnnounceResponsePacket | ScrapeResponse | ErrorResponse:
    """Decode a tracker-to-client datagram. ``ipv6``: the request went over IPv6, so announce
    peers are 18-byte entries. Raises :class:`TrackerResponseError` saying what is wrong."""
    d = bytes(datagram)
    if len(d) < 8:
        raise TrackerResponseError(f"udp tracker response: {len(d)} bytes, shorter than 8")
    action, tid = _HEAD.unpack_from(d)
    if action == ACTION_CONNECT:
        if len(d) < _CONNECT_RESP.size:
            raise TrackerResponseError(
                f"udp tracker response: connect of {len(d)} bytes, shorter than 16"
            )
        return ConnectResponse(tid, _CONNECT_RESP.unpack_from(d)[2])
    if action == ACTION_ANNOUNCE:
        return decode_announce_response(d, ipv6=ipv6)
    if action == ACTION_SCRAPE:
        body = len(d) - 8
        if body % _SCRAPE_ENTRY.size:
            raise TrackerResponseError(
                f"udp tracker response: scrape with {body} bytes of entries, not a multiple of 12"
            )
        return ScrapeResponse(tid, tuple(ScrapeEntry(*e) for e in _SCRAPE_ENTRY.iter_unpack(d[8:])))
    if action == ACTION_ERROR:
        return ErrorResponse(tid, d[8:].decode("utf-8", "replace"))
    raise TrackerResponseError(f"udp tracker response: unknown action {action}")


def decode_announce_response(
    datagram: bytes | bytearray | memoryview, *, ipv6: bool = False
) -> AnnounceResponsePacket:
    """Decode an announce response (action 1): transaction id, interval, leechers, seeders,
    peers, exactly as sent. Raises :class:`TrackerResponseError`."""
    d = bytes(datagram)
    if len(d) < _ANNOUNCE_RESP.size:
        raise TrackerResponseError(
            f"udp tracker response: announce of {len(d)} bytes, shorter than 20"
        )
    action, tid, interval, leechers, seeders = _ANNOUNCE_RESP.unpack_from(d)
    if action != ACTION_ANNOUNCE:
        raise TrackerResponseError(f"udp tracker response: action {action}, not announce (1)")
    raw = memoryview(d)[_ANNOUNCE_RESP.size :]
    size = PEER6_SIZE if ipv6 else PEER4_SIZE
    if len(raw) % size:
        raise TrackerResponseError(
            f"udp tracker response: {len(raw)} bytes of peers, not a multiple of {size}"
        )
    peers = decode_peers6(raw) if ipv6 else decode_peers4(raw)
    return AnnounceResponsePacket(tid, interval, leechers, seeders, tuple(peers))


# --- the announce state machine -------------------------------------------------------------


class _Rng(Protocol):
    def getrandbits(self, k: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class UdpConnection:
    """A connection id and the (monotonic) time it was received."""

    connection_id: int
    obtained_at: float

    def usable(self, now: float, ttl: float = CONNECTION_ID_TTL) -> bool:
        return self.obtained_at <= now < self.obtained_at + ttl


class _State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    ANNOUNCING = "announcing"
    DONE = "done"


class UdpAnnounce:
    """One announce to one UDP tracker; see the module docstring for the state table.

    ``now`` is any monotonic clock in seconds (the event loop's ``time()``);
    :meth:`next_timeout` returns a deadline on the same clock.
    """

    def __init__(
        self,
        req: AnnounceRequest,
        *,
        rng: _Rng,
        base_timeout: float = 15.0,
        max_retransmits: int = 8,
        ipv6: bool = False,
        connection: UdpConnection | None = None,
        connection_ttl: float = CONNECTION_ID_TTL,
    ) -> None:
        if not base_timeout > 0:
            raise LocalProtocolError(f"udp tracker: base_timeout must be > 0, not {base_timeout}")
        if max_retransmits < 0:
            raise LocalProtocolError("udp tracker: max_retransmits must be >= 0")
        self._req = req
        self._rng = rng
        self._base = base_timeout
        self._max_retransmits = max_retransmits
        self._ipv6 = ipv6
        self._ttl = connection_ttl
        self._connection = connection
        self._state = _State.IDLE
        self._tid = 0
        self._attempt = 0  # n in BEP 15's 15 * 2**n
        self._deadline = 0.0

    @property
    def connection(self) -> UdpConnection | None:
        """The connection id in use, to hand to the next announce to the same tracker."""
        return self._connection

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def start(self, now: float) -> bytes:
        if self._state is not _State.IDLE:
            raise LocalProtocolError("udp tracker: start() called twice")
        return self._begin_step(now)

    def next_timeout(self) -> float:
        """The time at which :meth:`on_timeout` is due if no reply has come."""
        if self._state in (_State.IDLE, _State.DONE):
            raise LocalProtocolError(f"udp tracker: no timeout while {self._state.value}")
        return self._deadline

    def on_timeout(self, now: float) -> bytes:
        """No reply by :meth:`next_timeout`: the datagram to retransmit.

        Raises :class:`TrackerUnreachable` once the last retransmission has gone unanswered.
        """
        if self._state in (_State.IDLE, _State.DONE):
            raise LocalProtocolError(f"udp tracker: on_timeout() while {self._state.value}")
        if self._attempt >= self._max_retransmits:
            step = "connect" if self._state is _State.CONNECTING else "announce"
            self._state = _State.DONE
            raise TrackerUnreachable(
                f"udp tracker: no reply to {self._attempt + 1} {step} attempts"
            )
        self._attempt += 1
        if self._state is _State.ANNOUNCING and not self._connection_usable(now):
            # The connection id ran out while we waited: BEP 15 says get a new one.
            self._connection = None
            return self._begin_step(now)
        self._deadline = now + self._base * (1 << self._attempt)
        return self._datagram()

    def receive(
        self, datagram: bytes | bytearray | memoryview, now: float
    ) -> bytes | AnnounceResponse | None:
        """Feed one datagram from the tracker's address.

        Returns the next datagram to send, the final response, or None when the datagram is
        not for us (too short to carry a transaction id, another transaction id, or late).
        """
        if self._state is _State.IDLE:
            raise LocalProtocolError("udp tracker: receive() before start()")
        if self._state is _State.DONE or len(datagram) < 8:
            return None
        action, tid = _HEAD.unpack_from(datagram)
        if tid != self._tid:
            return None
        was = self._state
        self._state = _State.DONE  # every outcome below but a connect response ends it
        if action == ACTION_ERROR:
            message = decode_response(datagram)
            assert isinstance(message, ErrorResponse)
            if was is _State.ANNOUNCING:
                # Often the error is about the connection id ("Connection ID missmatch");
                # a caller must not hand the same id to the next announce.
                self._connection = None
            # C trackers (opentracker) send the terminating NUL along with the text.
            raise TrackerFailure(message.message.rstrip("\x00") or "empty error message")
        if was is _State.CONNECTING:
            if action != ACTION_CONNECT:
                raise TrackerResponseError(
                    f"udp tracker response: action {action} in reply to connect"
                )
            reply = decode_response(datagram, ipv6=self._ipv6)
            assert isinstance(reply, ConnectResponse)
            self._connection = UdpConnection(reply.connection_id, now)
            self._attempt = 0
            return self._begin_step(now)
        if action != ACTION_ANNOUNCE:
            raise TrackerResponseError(
                f"udp tracker response: action {action} in reply to announce"
            )
        if len(datagram) == _HEAD.size:
            # A bare header is how opentracker refuses a torrent missing from its whitelist.
            raise TrackerFailure("announce refused (a reply with no interval and no peers)")
        return _to_response(decode_announce_response(datagram, ipv6=self._ipv6))

    # -- internals -------------------------------------------------------------------------

    def _connection_usable(self, now: float) -> bool:
        return self._connection is not None and self._connection.usable(now, self._ttl)

    def _begin_step(self, now: float) -> bytes:
        self._state = _State.ANNOUNCING if self._connection_usable(now) else _State.CONNECTING
        self._tid = self._rng.getrandbits(32)
        self._deadline = now + self._base * (1 << self._attempt)
        return self._datagram()

    def _datagram(self) -> bytes:
        if self._state is _State.CONNECTING:
            return encode_packet(ConnectRequest(self._tid))
        assert self._connection is not None
        return encode_packet(_announce_packet(self._req, self._connection.connection_id, self._tid))


def _announce_packet(req: AnnounceRequest, connection_id: int, tid: int) -> AnnounceRequestPacket:
    ip = 0
    if req.ip is not None:
        try:
            addr = ipaddress.ip_address(req.ip)
        except ValueError:
            addr = None
        # The field only holds IPv4; anything else is left for the tracker to see.
        if isinstance(addr, ipaddress.IPv4Address):
            ip = int(addr)
    return AnnounceRequestPacket(
        connection_id=connection_id,
        transaction_id=tid,
        info_hash=req.info_hash,
        peer_id=req.peer_id,
        downloaded=req.downloaded,
        left=req.left,
        uploaded=req.uploaded,
        event=EVENT_CODES[req.event],
        ip=ip,
        key=req.key or 0,
        num_want=req.numwant,
        port=req.port,
    )


def _to_response(p: AnnounceResponsePacket) -> AnnounceResponse:
    for name, value in (("interval", p.interval), ("leechers", p.leechers), ("seeders", p.seeders)):
        if value < 0:
            raise TrackerResponseError(f"udp tracker response: {name} is {value}, negative")
    for host, port in p.peers:
        if port == 0:
            raise TrackerResponseError(f"udp tracker response: peer {host} has port 0")
    return AnnounceResponse(
        interval=p.interval,
        min_interval=None,
        peers=p.peers,
        complete=p.seeders,
        incomplete=p.leechers,
        warning=None,
        tracker_id=None,
    )
