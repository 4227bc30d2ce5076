"""The BitTorrent peer wire protocol (BEP 3, BEP 6 fast extension, BEP 10), sans-IO.

Why it is built this way
------------------------
* No I/O (h11's model): :class:`PeerWireReader` takes received bytes with ``feed()``
  (``feed(b"")`` is EOF) and hands out messages with ``next_event()`` until it returns
  ``NEED_DATA``. :func:`encode` turns a message back into bytes. The downloader, the seeder,
  the interceptor's handshake sniffer, tests and fuzzers all share this code.
* Strict and bounded, because every byte comes from a stranger. The length prefix is checked
  against the limit of the message id it announces *before* the body is waited for, so a
  claimed 4 GiB message costs nothing; fixed-size messages must have their exact size; once
  the number of pieces is known (:meth:`PeerWireReader.set_num_pieces`) indexes and bitfields
  are checked against it. A failed reader stays failed: the connection has to be dropped.
  Unknown message ids are not errors (new BEPs add ids, e.g. BEP 52's 21-23): they come out
  as :class:`Unknown`, bounded like extension messages.
* Fast, because ``piece`` messages carry every downloaded byte. Fed chunks are parsed where
  they lie: a message wholly inside one chunk costs one ``struct.unpack_from`` for its header
  and, for ``piece``, one memoryview slice (no copy of the block; the view keeps the fed chunk
  alive until the caller drops it). Only a message split across chunks is assembled in a
  bytearray, which is then handed to that message's block as a read-only view instead of
  being copied again. Nothing re-slices the whole buffer per message and there is no
  ``bytes += bytes``.
* Sending is split for ``sendfile``: :func:`piece_header` gives the 13 bytes in front of a
  block so the seeder can send the block itself from the page cache.

Theory of operation
-------------------
The reader is a state machine; ``next_event`` runs the step of the current state (a table)::

    state        on                                   next state
    HANDSHAKE    68 bytes (mode "full")               MESSAGES    (yields Handshake)
    HANDSHAKE    48 bytes (mode "early")              PEER_ID     (yields HandshakeHead)
    PEER_ID      20 bytes                             MESSAGES    (yields PeerId)
    MESSAGES     one whole length-prefixed message    MESSAGES    (yields the message)
    any          bad bytes, or EOF inside a message   ERROR       (raises, for ever)

Mode "none" starts in MESSAGES (the handshake was read by someone else, e.g. the
interceptor). EOF between messages is not an error: ``next_event`` returns ``NEED_DATA`` and
``eof`` is True.

Unconsumed input is the current chunk from ``_off`` on, then the queued chunks. ``_buf``
holds the start of a message (or handshake) that did not fit in the chunk it began in; while
it is not empty, input flows into it until the message is whole.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import compress
from typing import Final, Literal, TypeAlias

from swarm.bencode import BValue, bdecode, bencode
from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_MAX_BITFIELD_LENGTH",
    "DEFAULT_MAX_EXTENSION_LENGTH",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_MAX_REQUEST_LENGTH",
    "DEFAULT_RESERVED",
    "EXTENDED_HANDSHAKE_ID",
    "HANDSHAKE_LENGTH",
    "NEED_DATA",
    "PROTOCOL",
    "AllowedFast",
    "Bitfield",
    "BitfieldMessage",
    "Cancel",
    "Choke",
    "Event",
    "Extended",
    "ExtensionHandshake",
    "Handshake",
    "HandshakeHead",
    "HandshakeMode",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "KeepAlive",
    "Message",
    "MessageId",
    "NotInterested",
    "PeerId",
    "PeerWireReader",
    "Piece",
    "Port",
    "RejectRequest",
    "Request",
    "SuggestPiece",
    "Unchoke",
    "Unknown",
    "encode",
    "encode_handshake",
    "make_reserved",
    "piece_header",
]

PROTOCOL: Final = b"\x13BitTorrent protocol"
HANDSHAKE_LENGTH: Final = 68
BLOCK_SIZE: Final = 16 * 1024
# A piece message carrying one 16 KiB block: length prefix 4 + id 1 + index 4 + begin 4.
DEFAULT_MAX_MESSAGE_LENGTH: Final = BLOCK_SIZE + 13
# Extension (and unknown-id) messages: a ut_metadata data message is a 16 KiB block plus its
# bencoded dict, so the block limit above would refuse it.
DEFAULT_MAX_EXTENSION_LENGTH: Final = 64 * 1024
# A bitfield that arrives before the piece count is known (magnet links): 2 Mi pieces.
DEFAULT_MAX_BITFIELD_LENGTH: Final = 256 * 1024 + 1
DEFAULT_MAX_REQUEST_LENGTH: Final = 128 * 1024
EXTENDED_HANDSHAKE_ID: Final = 0

_U32_MAX: Final = 0xFFFFFFFF


class MessageId(enum.IntEnum):
    CHOKE = 0
    UNCHOKE = 1
    INTERESTED = 2
    NOT_INTERESTED = 3
    HAVE = 4
    BITFIELD = 5
    REQUEST = 6
    PIECE = 7
    CANCEL = 8
    PORT = 9
    SUGGEST_PIECE = 13
    HAVE_ALL = 14
    HAVE_NONE = 15
    REJECT_REQUEST = 16
    ALLOWED_FAST = 17
    EXTENDED = 20


# --- handshake ------------------------------------------------------------------------------


def make_reserved(*, fast: bool = True, extensions: bool = True, dht: bool = False) -> bytes:
    """The 8 reserved handshake bytes advertising the given features (BEP 6, 10, 5)."""
    r = bytearray(8)
    if extensions:
        r[5] |= 0x10
    if fast:
        r[7] |= 0x04
    if dht:
        r[7] |= 0x01
    return bytes(r)


DEFAULT_RESERVED: Final = make_reserved()


class _ReservedBits:
    __slots__ = ()
    reserved: bytes

    @property
    def supports_fast(self) -> bool:
        return bool(self.reserved[7] & 0x04)

    @property
    def supports_extensions(self) -> bool:
        return bool(self.reserved[5] & 0x10)

    @property
    def supports_dht(self) -> bool:
        return bool(self.reserved[7] & 0x01)


@dataclass(frozen=True, slots=True)
class Handshake(_ReservedBits):
    info_hash: bytes
    peer_id: bytes
    reserved: bytes = DEFAULT_RESERVED


@dataclass(frozen=True, slots=True)
class HandshakeHead(_ReservedBits):
    """The first 48 handshake bytes (mode "early"): enough to pick the torrent and answer."""

    info_hash: bytes
    reserved: bytes


@dataclass(frozen=True, slots=True)
class PeerId:
    """The last 20 handshake bytes (mode "early")."""

    peer_id: bytes


def encode_handshake(info_hash: bytes, peer_id: bytes, reserved: bytes = DEFAULT_RESERVED) -> bytes:
    if len(info_hash) != 20 or len(peer_id) != 20 or len(reserved) != 8:
        raise LocalProtocolError(
            f"handshake needs a 20-byte info_hash, 20-byte peer_id and 8 reserved bytes, "
            f"got {len(info_hash)}, {len(peer_id)}, {len(reserved)}"
        )
    return b"".join((PROTOCOL, reserved, info_hash, peer_id))


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Choke:
    pass


@dataclass(frozen=True, slots=True)
class Unchoke:
    pass


@dataclass(frozen=True, slots=True)
class Interested:
    pass


@dataclass(frozen=True, slots=True)
class NotInterested:
    pass


@dataclass(frozen=True, slots=True)
class Have:
    index: int


@dataclass(frozen=True, slots=True)
class BitfieldMessage:
    """The ``bitfield`` message; :class:`Bitfield` is the mutable set of pieces."""

    bits: bytes


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece:
    index: int
    begin: int
    # From the reader: a read-only memoryview into the received data (no copy). It keeps the
    # whole received chunk alive: copy it with bytes() if it is to be kept for long.
    block: bytes | memoryview

    # A view of an assembled bytearray cannot be hashed; rather than being hashable only
    # sometimes, a block-carrying message is never hashable.
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Cancel:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Port:
    port: int


@dataclass(frozen=True, slots=True)
class SuggestPiece:
    index: int


@dataclass(frozen=True, slots=True)
class HaveAll:
    pass


@dataclass(frozen=True, slots=True)
class HaveNone:
    pass


@dataclass(frozen=True, slots=True)
class RejectRequest:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class AllowedFast:
    index: int


@dataclass(frozen=True, slots=True)
class Extended:
    """A BEP 10 message; ``ext_id`` 0 is the extension handshake."""

    ext_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message with an id this module does not parse (e.g. BEP 52 hash messages 21-23)."""

    msg_id: int
    payload: bytes


Message: TypeAlias = (
    KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | BitfieldMessage
    | Request
    | Piece
    | Cancel
    | Port
    | SuggestPiece
    | HaveAll
    | HaveNone
    | RejectRequest
    | AllowedFast
    | Extended
    | Unknown
)
Event: TypeAlias = Handshake | HandshakeHead | PeerId | Message


class _NeedData(enum.Enum):
    # A one-member enum rather than a bare object: type checkers narrow `x is NEED_DATA`.
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"

    __str__ = __repr__


NEED_DATA: Final = _NeedData.NEED_DATA

_KEEP_ALIVE: Final = KeepAlive()
_CHOKE: Final = Choke()
_UNCHOKE: Final = Unchoke()
_INTERESTED: Final = Interested()
_NOT_INTERESTED: Final = NotInterested()
_HAVE_ALL: Final = HaveAll()
_HAVE_NONE: Final = HaveNone()


# --- encoding -------------------------------------------------------------------------------

_HDR: Final = struct.Struct(">IB")
_U32: Final = struct.Struct(">I")
_U32X2: Final = struct.Struct(">II")
_U32X3: Final = struct.Struct(">III")
_INDEX_MSG: Final = struct.Struct(">IBI")
_TRIPLE_MSG: Final = struct.Struct(">IBIII")
_PIECE_HDR: Final = struct.Struct(">IBII")
_PORT_MSG: Final = struct.Struct(">IBH")
_EXT_HDR: Final = struct.Struct(">IBB")


def piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes that precede a ``length``-byte block in a ``piece`` message."""
    try:
        return _PIECE_HDR.pack(9 + length, MessageId.PIECE, index, begin)
    except struct.error:
        raise LocalProtocolError(
            f"piece header out of range: index={index} begin={begin} length={length}"
        ) from None


def _bare(msg_id: MessageId) -> Callable[[object], bytes]:
    raw = _HDR.pack(1, msg_id)
    return lambda _msg: raw


def _enc_have(m: Have | SuggestPiece | AllowedFast, msg_id: MessageId) -> bytes:
    return _INDEX_MSG.pack(5, msg_id, m.index)


def _enc_triple(m: Request | Cancel | RejectRequest, msg_id: MessageId) -> bytes:
    if m.length <= 0:
        raise LocalProtocolError(f"{type(m).__name__} with length {m.length}")
    return _TRIPLE_MSG.pack(13, msg_id, m.index, m.begin, m.length)


def _enc_piece(m: Piece) -> bytes:
    return b"".join((piece_header(m.index, m.begin, len(m.block)), m.block))


def _enc_bitfield(m: BitfieldMessage) -> bytes:
    return _HDR.pack(1 + len(m.bits), MessageId.BITFIELD) + m.bits


def _enc_extended(m: Extended) -> bytes:
    return _EXT_HDR.pack(2 + len(m.payload), MessageId.EXTENDED, m.ext_id) + m.payload


def _enc_unknown(m: Unknown) -> bytes:
    if m.msg_id in _KNOWN_IDS:
        raise LocalProtocolError(f"Unknown message with the known id {m.msg_id}")
    return _HDR.pack(1 + len(m.payload), m.msg_id) + m.payload


def _enc_handshake(m: Handshake) -> bytes:
    return encode_handshake(m.info_hash, m.peer_id, m.reserved)


_KNOWN_IDS: Final = frozenset(int(i) for i in MessageId)
_ENCODERS: Final[dict[type, Callable[[object], bytes]]] = {
    KeepAlive: lambda _m: b"\0\0\0\0",
    Choke: _bare(MessageId.CHOKE),
    Unchoke: _bare(MessageId.UNCHOKE),
    Interested: _bare(MessageId.INTERESTED),
    NotInterested: _bare(MessageId.NOT_INTERESTED),
    HaveAll: _bare(MessageId.HAVE_ALL),
    HaveNone: _bare(MessageId.HAVE_NONE),
    Have: lambda m: _enc_have(m, MessageId.HAVE),  # type: ignore[arg-type]
    SuggestPiece: lambda m: _enc_have(m, MessageId.SUGGEST_PIECE),  # type: ignore[arg-type]
    AllowedFast: lambda m: _enc_have(m, MessageId.ALLOWED_FAST),  # type: ignore[arg-type]
    Request: lambda m: _enc_triple(m, MessageId.REQUEST),  # type: ignore[arg-type]
    Cancel: lambda m: _enc_triple(m, MessageId.CANCEL),  # type: ignore[arg-type]
    RejectRequest: lambda m: _enc_triple(m, MessageId.REJECT_REQUEST),  # type: ignore[arg-type]
    Port: lambda m: _PORT_MSG.pack(3, MessageId.PORT, m.port),  # type: ignore[attr-defined]
    Piece: _enc_piece,  # type: ignore[dict-item]
    BitfieldMessage: _enc_bitfield,  # type: ignore[dict-item]
    Extended: _enc_extended,  # type: ignore[dict-item]
    Unknown: _enc_unknown,  # type: ignore[dict-item]
    Handshake: _enc_handshake,  # type: ignore[dict-item]
}


def encode(msg: Message | Handshake) -> bytes:
    """The wire bytes of ``msg``; values out of the protocol's range are a LocalProtocolError."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise LocalProtocolError(f"cannot encode {msg!r:.80}")
    try:
        return encoder(msg)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode {msg!r:.80}: {exc}") from None


# --- reader ---------------------------------------------------------------------------------

HandshakeMode: TypeAlias = Literal["full", "early", "none"]


class _State(enum.IntEnum):
    HANDSHAKE = 0
    PEER_ID = 1
    MESSAGES = 2
    ERROR = 3


# Exact message lengths (id byte included) of the fixed-size messages.
_EXACT: Final[dict[int, int]] = {
    MessageId.CHOKE: 1,
    MessageId.UNCHOKE: 1,
    MessageId.INTERESTED: 1,
    MessageId.NOT_INTERESTED: 1,
    MessageId.HAVE: 5,
    MessageId.REQUEST: 13,
    MessageId.CANCEL: 13,
    MessageId.PORT: 3,
    MessageId.SUGGEST_PIECE: 5,
    MessageId.HAVE_ALL: 1,
    MessageId.HAVE_NONE: 1,
    MessageId.REJECT_REQUEST: 13,
    MessageId.ALLOWED_FAST: 5,
}

_Parse: TypeAlias = Callable[["PeerWireReader", bytes, int, int], Message]


def _name(msg_id: int) -> str:
    try:
        return MessageId(msg_id).name.lower()
    except ValueError:
        return f"message id {msg_id}"


class PeerWireReader:
    """Receive side of one peer connection.

    ``handshake``: "full" yields one :class:`Handshake` after 68 bytes; "early" yields a
    :class:`HandshakeHead` after 48 bytes (so a multi-torrent listener can answer as soon as
    it knows the info_hash) and a :class:`PeerId` after 20 more; "none" expects no handshake.

    Limits (whole message, id byte included, length prefix excluded): ``max_message_length``
    bounds ``piece`` messages, ``max_extension_length`` extension and unknown-id messages,
    ``max_bitfield_length`` a bitfield received before :meth:`set_num_pieces` (after it the
    bitfield must be exactly ``1 + ceil(n / 8)``). ``max_request_length`` bounds the length
    field of request, cancel and reject.
    """

    def __init__(
        self,
        *,
        handshake: HandshakeMode = "full",
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        max_extension_length: int = DEFAULT_MAX_EXTENSION_LENGTH,
        max_bitfield_length: int = DEFAULT_MAX_BITFIELD_LENGTH,
        max_request_length: int = DEFAULT_MAX_REQUEST_LENGTH,
    ) -> None:
        if handshake not in ("full", "early", "none"):
            raise LocalProtocolError(f"unknown handshake mode {handshake!r}")
        if max_message_length < 10 or max_extension_length < 2 or max_bitfield_length < 2:
            raise LocalProtocolError("message length limits are too small to be usable")
        if not 0 < max_request_length <= _U32_MAX:
            raise LocalProtocolError(f"max_request_length {max_request_length} out of range")
        self._early = handshake == "early"
        self._state = _State.MESSAGES if handshake == "none" else _State.HANDSHAKE
        self._max_request = max_request_length
        self._num_pieces: int | None = None
        # Per-id (min, max) message length, looked up by the id byte on the hot path.
        self._min_len = [1] * 256
        self._max_len = [max_extension_length] * 256
        for msg_id, n in _EXACT.items():
            self._min_len[msg_id] = self._max_len[msg_id] = n
        self._min_len[MessageId.PIECE] = 10  # a piece message without a block is nonsense
        self._max_len[MessageId.PIECE] = max_message_length
        self._min_len[MessageId.BITFIELD] = 2
        self._max_len[MessageId.BITFIELD] = max_bitfield_length
        self._min_len[MessageId.EXTENDED] = 2
        self._chunk = b""
        self._view = memoryview(self._chunk)
        self._off = 0
        self._pending: deque[bytes] = deque()
        self._buf = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    # --- public ---------------------------------------------------------------------------
    @property
    def eof(self) -> bool:
        """True once ``feed(b"")`` was called."""
        return self._eof

    @property
    def num_pieces(self) -> int | None:
        return self._num_pieces

    def set_num_pieces(self, n: int) -> None:
        """Check indexes and bitfields against ``n`` pieces from now on (once known)."""
        if n <= 0 or n > _U32_MAX:
            raise LocalProtocolError(f"number of pieces {n} out of range")
        if self._num_pieces is not None and self._num_pieces != n:
            raise LocalProtocolError(f"number of pieces already set to {self._num_pieces}")
        self._num_pieces = n
        size = 1 + (n + 7) // 8
        self._min_len[MessageId.BITFIELD] = self._max_len[MessageId.BITFIELD] = size

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its sending side (EOF)."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("feed() after EOF")
        if type(data) is not bytes:
            # A caller's bytearray may be reused after this call; blocks must not alias it.
            data = bytes(data)
        self._pending.append(data)

    def next_event(self) -> Event | _NeedData:
        """The next handshake part or message, or ``NEED_DATA``; raises RemoteProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            if self._state is _State.MESSAGES:
                return self._next_message()
            return self._next_handshake()
        except RemoteProtocolError as exc:
            self._state = _State.ERROR
            self._error = exc
            raise

    @property
    def buffered(self) -> int:
        """Received bytes not yet handed out as events."""
        return len(self._buf) + len(self._chunk) - self._off + sum(map(len, self._pending))

    def take_buffered(self) -> bytes:
        """Remove and return the unconsumed input (e.g. to hand the stream to a relay)."""
        if self._state is _State.ERROR:
            raise LocalProtocolError("the reader failed; the connection must be closed")
        out = b"".join((self._buf, self._view[self._off :], *self._pending))
        self._buf = bytearray()
        self._set_chunk(b"")
        self._pending.clear()
        return out

    # --- input plumbing -------------------------------------------------------------------
    def _set_chunk(self, chunk: bytes) -> None:
        self._chunk = chunk
        self._view = memoryview(chunk)
        self._off = 0

    def _fill(self, n: int) -> bool:
        """Move input into ``_buf`` until it holds ``n`` bytes; False if input ran out."""
        buf = self._buf
        while len(buf) < n:
            rest = len(self._chunk) - self._off
            if rest <= 0:
                if not self._pending:
                    return False
                self._set_chunk(self._pending.popleft())
                continue
            take = min(n - len(buf), rest)
            buf += self._view[self._off : self._off + take]
            self._off += take
        return True

    def _need_data(self) -> _NeedData:
        if self._eof and (self._buf or self._off < len(self._chunk) or self._pending):
            have = self.buffered
            if self._state is not _State.MESSAGES:
                raise RemoteProtocolError(f"connection closed after {have} handshake bytes")
            raise RemoteProtocolError(f"connection closed inside a message ({have} bytes)")
        return NEED_DATA

    # --- handshake ------------------------------------------------------------------------
    def _next_handshake(self) -> Event | _NeedData:
        if self._state is _State.PEER_ID:
            if not self._fill(20):
                return self._need_data()
            peer_id = bytes(self._buf)
            self._buf.clear()
            self._state = _State.MESSAGES
            return PeerId(peer_id)
        want = 48 if self._early else HANDSHAKE_LENGTH
        complete = self._fill(want)
        got = bytes(self._buf[:20])
        if got != PROTOCOL[: len(got)]:
            # Checked on every partial read so junk is refused without waiting for 68 bytes.
            raise RemoteProtocolError(
                f"not a BitTorrent handshake: starts with {got!r}, expected {PROTOCOL!r}"
            )
        if not complete:
            return self._need_data()
        raw = bytes(self._buf)
        self._buf.clear()
        reserved, info_hash = raw[20:28], raw[28:48]
        if self._early:
            self._state = _State.PEER_ID
            return HandshakeHead(info_hash, reserved)
        self._state = _State.MESSAGES
        return Handshake(info_hash, raw[48:68], reserved)

    # --- messages -------------------------------------------------------------------------
    def _check_length(self, length: int, msg_id: int) -> None:
        if self._min_len[msg_id] <= length <= self._max_len[msg_id]:
            return
        lo, hi = self._min_len[msg_id], self._max_len[msg_id]
        if lo == hi:
            why = f"must be {lo}"
            if msg_id == MessageId.BITFIELD:
                why += f" for {self._num_pieces} pieces"
        elif length < lo:
            why = f"must be at least {lo}"
        else:
            why = f"larger than the limit {hi}"
        raise RemoteProtocolError(f"{_name(msg_id)} message with length {length}: {why}")

    def _next_message(self) -> Message | _NeedData:
        while True:
            if self._buf:
                return self._next_assembled()
            chunk, off = self._chunk, self._off
            rest = len(chunk) - off
            if rest >= 5:
                length: int
                msg_id: int
                length, msg_id = _HDR.unpack_from(chunk, off)
                if length == 0:
                    self._off = off + 4
                    return _KEEP_ALIVE
                if not self._min_len[msg_id] <= length <= self._max_len[msg_id]:
                    self._check_length(length, msg_id)
                end = off + 4 + length
                if end <= len(chunk):
                    self._off = end
                    return _PARSERS[msg_id](self, chunk, off + 5, end)
            elif rest == 4 and chunk[off:] == b"\0\0\0\0":
                self._off = off + 4
                return _KEEP_ALIVE
            if rest > 0:
                # The message continues in later chunks: assemble it (it is within limits).
                self._buf += self._view[off:]
                self._off = len(chunk)
            elif self._pending:
                self._set_chunk(self._pending.popleft())
            else:
                return self._need_data()

    def _next_assembled(self) -> Message | _NeedData:
        if not self._fill(4):
            return self._need_data()
        (length,) = _U32.unpack_from(self._buf)
        if length == 0:
            del self._buf[:4]
            return _KEEP_ALIVE
        if not self._fill(5):
            return self._need_data()
        msg_id = self._buf[4]
        self._check_length(length, msg_id)
        if not self._fill(4 + length):
            return self._need_data()
        raw, self._buf = self._buf, bytearray()
        if msg_id == MessageId.PIECE:
            # The bytearray now belongs to this message alone: lend it out instead of copying.
            index, begin = _U32X2.unpack_from(raw, 5)
            self._check_index(index, msg_id)
            return Piece(index, begin, memoryview(raw).toreadonly()[13:])
        return _PARSERS[msg_id](self, bytes(raw), 5, len(raw))

    def _check_index(self, index: int, msg_id: int) -> None:
        n = self._num_pieces
        if n is not None and index >= n:
            raise RemoteProtocolError(
                f"{_name(msg_id)} message for piece {index}, torrent has {n} pieces"
            )

    def _check_triple(self, index: int, length: int, msg_id: int) -> None:
        self._check_index(index, msg_id)
        if not 0 < length <= self._max_request:
            raise RemoteProtocolError(
                f"{_name(msg_id)} message with block length {length}, "
                f"must be 1..{self._max_request}"
            )


# Parsers get (reader, buffer, payload start, message end); lengths were checked already.


def _p_choke(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _CHOKE


def _p_unchoke(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _UNCHOKE


def _p_interested(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _INTERESTED


def _p_not_interested(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _NOT_INTERESTED


def _p_have_all(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _HAVE_ALL


def _p_have_none(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return _HAVE_NONE


def _p_piece(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    # Only called for a message inside the current chunk (assembled ones are handled in
    # _next_assembled), so the chunk's cached memoryview gives the block without a copy.
    index, begin = _U32X2.unpack_from(b, s)
    if r._num_pieces is not None and index >= r._num_pieces:
        r._check_index(index, MessageId.PIECE)
    return Piece(index, begin, r._view[s + 8 : e])


def _index_parser(cls: type[Have | SuggestPiece | AllowedFast], msg_id: MessageId) -> _Parse:
    def parse(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
        (index,) = _U32.unpack_from(b, s)
        r._check_index(index, msg_id)
        return cls(index)

    return parse


def _triple_parser(cls: type[Request | Cancel | RejectRequest], msg_id: MessageId) -> _Parse:
    def parse(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
        index, begin, length = _U32X3.unpack_from(b, s)
        r._check_triple(index, length, msg_id)
        return cls(index, begin, length)

    return parse


def _p_bitfield(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    bits = b[s:e]
    n = r._num_pieces
    if n is not None:
        spare = len(bits) * 8 - n
        if spare and bits[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError(f"bitfield has spare bits set beyond piece {n - 1}")
    return BitfieldMessage(bits)


def _p_port(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return Port((b[s] << 8) | b[s + 1])


def _p_extended(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return Extended(b[s], b[s + 1 : e])


def _p_unknown(r: PeerWireReader, b: bytes, s: int, e: int) -> Message:
    return Unknown(b[s - 1], b[s:e])


def _parser_table() -> tuple[_Parse, ...]:
    table: list[_Parse] = [_p_unknown] * 256
    table[MessageId.CHOKE] = _p_choke
    table[MessageId.UNCHOKE] = _p_unchoke
    table[MessageId.INTERESTED] = _p_interested
    table[MessageId.NOT_INTERESTED] = _p_not_interested
    table[MessageId.HAVE] = _index_parser(Have, MessageId.HAVE)
    table[MessageId.BITFIELD] = _p_bitfield
    table[MessageId.REQUEST] = _triple_parser(Request, MessageId.REQUEST)
    table[MessageId.PIECE] = _p_piece
    table[MessageId.CANCEL] = _triple_parser(Cancel, MessageId.CANCEL)
    table[MessageId.PORT] = _p_port
    table[MessageId.SUGGEST_PIECE] = _index_parser(SuggestPiece, MessageId.SUGGEST_PIECE)
    table[MessageId.HAVE_ALL] = _p_have_all
    table[MessageId.HAVE_NONE] = _p_have_none
    table[MessageId.REJECT_REQUEST] = _triple_parser(RejectRequest, MessageId.REJECT_REQUEST)
    table[MessageId.ALLOWED_FAST] = _index_parser(AllowedFast, MessageId.ALLOWED_FAST)
    table[MessageId.EXTENDED] = _p_extended
    return tuple(table)


_PARSERS: Final[tuple[_Parse, ...]] = _parser_table()


# --- BEP 10 extension handshake -------------------------------------------------------------

# Peers' extension dicts are small; these bounds keep a hostile one cheap to refuse.
_EXT_DECODE_LIMITS: Final = {"max_depth": 8, "max_items": 4096, "max_int_digits": 20}


@dataclass(frozen=True, slots=True)
class ExtensionHandshake:
    """The BEP 10 handshake payload (``Extended(EXTENDED_HANDSHAKE_ID, payload)``).

    ``m`` maps extension names to the message id the sender wants to *receive* them on
    (0 = disabled). Unknown keys are ignored when decoding; the keys read here must have
    the right type, or the payload is refused.
    """

    m: dict[str, int] = field(default_factory=dict)
    metadata_size: int | None = None
    reqq: int | None = None
    v: str | None = None
    listen_port: int | None = None
    yourip: bytes | None = None

    def encode(self) -> bytes:
        for name, ext_id in self.m.items():
            if type(ext_id) is not int or not 0 <= ext_id <= 255:
                raise LocalProtocolError(f"extension {name!r} with message id {ext_id!r}")
        d: dict[bytes, BValue] = {
            b"m": {name.encode("utf-8"): ext_id for name, ext_id in self.m.items()}
        }
        if self.metadata_size is not None:
            d[b"metadata_size"] = self.metadata_size
        if self.reqq is not None:
            d[b"reqq"] = self.reqq
        if self.v is not None:
            d[b"v"] = self.v.encode("utf-8")
        if self.listen_port is not None:
            d[b"p"] = self.listen_port
        if self.yourip is not None:
            d[b"yourip"] = self.yourip
        return bencode(d)

    @classmethod
    def decode(cls, payload: bytes) -> ExtensionHandshake:
        # strict_order=False: several clients write these keys unsorted; nothing is hashed.
        value = bdecode(payload, strict_order=False, **_EXT_DECODE_LIMITS)
        if not isinstance(value, dict):
            raise RemoteProtocolError("extension handshake is not a dict")
        m: dict[str, int] = {}
        raw_m = value.get(b"m", {})
        if not isinstance(raw_m, dict):
            raise RemoteProtocolError("extension handshake: 'm' is not a dict")
        for raw_name, ext_id in raw_m.items():
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError(
                    f"extension handshake: extension name {raw_name[:40]!r} is not UTF-8"
                ) from None
            if not isinstance(ext_id, int) or not 0 <= ext_id <= 255:
                raise RemoteProtocolError(
                    f"extension handshake: extension {name[:40]!r} has message id "
                    f"{ext_id!r:.40}, must be an integer 0..255"
                )
            m[name] = ext_id
        v = value.get(b"v")
        if v is not None and not isinstance(v, bytes):
            raise RemoteProtocolError("extension handshake: 'v' is not a string")
        yourip = value.get(b"yourip")
        if yourip is not None and not (isinstance(yourip, bytes) and len(yourip) in (4, 16)):
            raise RemoteProtocolError("extension handshake: 'yourip' is not 4 or 16 bytes")
        return cls(
            m=m,
            metadata_size=_int_key(value, b"metadata_size", 1, _U32_MAX),
            reqq=_int_key(value, b"reqq", 1, _U32_MAX),
            # Client names are for logs only: a stray byte must not cost the connection.
            v=None if v is None else v.decode("utf-8", "replace"),
            listen_port=_int_key(value, b"p", 0, 65535),
            yourip=yourip,
        )


def _int_key(d: dict[bytes, BValue], key: bytes, lo: int, hi: int) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or not lo <= value <= hi:
        raise RemoteProtocolError(
            f"extension handshake: {key.decode()!r} is {value!r:.40}, must be an integer {lo}..{hi}"
        )
    return value


# --- bitfield -------------------------------------------------------------------------------

# The set bit offsets (0 = high-order bit) of every byte value.
_BYTE_BITS: Final = tuple(tuple(b for b in range(8) if v & (0x80 >> b)) for v in range(256))


class Bitfield:
    """The set of pieces one side has: bit ``i`` is the high-order-first bit ``i % 8`` of
    byte ``i // 8``, as on the wire. Counting and set differences run over whole ints (C
    loops), never a Python loop per bit; the count is kept up to date by ``set``/``discard``.
    """

    __slots__ = ("_bits", "_count", "_n")

    def __init__(self, num_pieces: int) -> None:
        if num_pieces < 0:
            raise LocalProtocolError(f"negative number of pieces {num_pieces}")
        self._n = num_pieces
        self._bits = bytearray((num_pieces + 7) // 8)
        self._count = 0

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, num_pieces: int) -> Bitfield:
        """A peer's bitfield, checked: exactly ``ceil(n / 8)`` bytes, spare bits zero."""
        bf = cls(num_pieces)
        if len(data) != len(bf._bits):
            raise RemoteProtocolError(
                f"bitfield of {len(data)} bytes, expected {len(bf._bits)} for {num_pieces} pieces"
            )
        spare = len(data) * 8 - num_pieces
        if spare and data[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError(f"bitfield has spare bits set beyond piece {num_pieces - 1}")
        bf._bits[:] = data
        bf._count = int.from_bytes(bf._bits, "big").bit_count()
        return bf

    @classmethod
    def all(cls, num_pieces: int) -> Bitfield:
        """Every piece set (what a Have All message means)."""
        bf = cls(num_pieces)
        if num_pieces:
            bf._bits[:] = b"\xff" * len(bf._bits)
            spare = len(bf._bits) * 8 - num_pieces
            bf._bits[-1] &= (0xFF << spare) & 0xFF
        bf._count = num_pieces
        return bf

    @property
    def num_pieces(self) -> int:
        return self._n

    def _check(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise LocalProtocolError(f"piece {index} out of range 0..{self._n - 1}")

    def set(self, index: int) -> None:
        self._check(index)
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if not byte & mask:
            self._bits[index >> 3] = byte | mask
            self._count += 1

    def discard(self, index: int) -> None:
        self._check(index)
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if byte & mask:
            self._bits[index >> 3] = byte & ~mask
            self._count -= 1

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self._n:
            return False
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def count(self) -> int:
        return self._count

    def is_complete(self) -> bool:
        return self._count == self._n

    def missing_from(self, other: Bitfield) -> Bitfield:
        """The pieces in ``self`` that ``other`` lacks (``peer.missing_from(mine)`` is what
        the peer could give us)."""
        if other._n != self._n:
            raise LocalProtocolError(f"bitfields of {self._n} and {other._n} pieces")
        size = len(self._bits)
        diff = int.from_bytes(self._bits, "big") & ~int.from_bytes(other._bits, "big")
        out = Bitfield(self._n)
        out._bits[:] = diff.to_bytes(size, "big")
        out._count = diff.bit_count()
        return out

    def __iter__(self) -> Iterator[int]:
        """Indexes of the set pieces, ascending; zero bytes are skipped in C (compress)."""
        bits = self._bits
        for pos in compress(range(len(bits)), bits):
            base = pos << 3
            for bit in _BYTE_BITS[bits[pos]]:
                yield base + bit

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        out = Bitfield(self._n)
        out._bits[:] = self._bits
        out._count = self._count
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._n == other._n and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bitfield({self._count}/{self._n})"
