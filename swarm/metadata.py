"""BEP 9 ut_metadata: fetching a torrent's info dict from peers, sans-IO.

Why it is built this way
------------------------
* A magnet link or a sniffed handshake gives the cache only an info_hash; the info dict (piece
  hashes, file layout) has to come from peers, 16 KiB at a time, over the BEP 10 extension
  message the peer named ``ut_metadata``. This module only turns those payloads into values
  and back, and puts the pieces together; which peer is asked for what is the caller's job.
* Nothing a peer says is trusted until the whole dict hashes to the info_hash: every piece is
  checked for index, size and the peer's ``total_size`` as it arrives (a wrong one is refused
  without spoiling the others), and a completed dict whose hash is wrong is thrown away as a
  whole, since there is no telling which piece (or which peer) was bad.
* Payloads are bounded twice: the peer wire reader bounds the message, and the dict in front
  of a data block is decoded with small bencode limits, so a hostile dict is cheap to refuse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from swarm.bencode import BValue, bdecode_prefix, bencode
from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_METADATA_SIZE",
    "METADATA_PIECE_SIZE",
    "HashKind",
    "MetadataAssembler",
    "MetadataData",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "decode_metadata_message",
    "encode_metadata_message",
]

METADATA_PIECE_SIZE: Final = 16 * 1024
DEFAULT_MAX_METADATA_SIZE: Final = 8 * 1024 * 1024

_REQUEST: Final = 0
_DATA: Final = 1
_REJECT: Final = 2

# The dict in front of the data is three small integers; room is left for unknown keys.
_DICT_LIMITS: Final = {"max_size": 4096, "max_depth": 4, "max_items": 64, "max_int_digits": 20}
_MAX_PIECE_INDEX: Final = DEFAULT_MAX_METADATA_SIZE  # far above any real piece count

HashKind: TypeAlias = Literal["sha1", "sha256"]


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    piece: int


@dataclass(frozen=True, slots=True)
class MetadataData:
    piece: int
    total_size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MetadataReject:
    piece: int


MetadataMessage: TypeAlias = MetadataRequest | MetadataData | MetadataReject


def encode_metadata_message(msg: MetadataMessage) -> bytes:
    """The ``Extended`` payload for ``msg`` (send it with the peer's ``ut_metadata`` id)."""
    if type(msg.piece) is not int or msg.piece < 0:
        raise LocalProtocolError(f"metadata piece index {msg.piece!r}")
    if isinstance(msg, MetadataRequest):
        return bencode({b"msg_type": _REQUEST, b"piece": msg.piece})
    if isinstance(msg, MetadataReject):
        return bencode({b"msg_type": _REJECT, b"piece": msg.piece})
    if isinstance(msg, MetadataData):
        if not 0 < len(msg.data) <= METADATA_PIECE_SIZE:
            raise LocalProtocolError(f"metadata data block of {len(msg.data)} bytes")
        head = bencode({b"msg_type": _DATA, b"piece": msg.piece, b"total_size": msg.total_size})
        return head + msg.data
    raise LocalProtocolError(f"not a metadata message: {msg!r:.80}")


def _int(d: dict[bytes, BValue], key: bytes, lo: int, hi: int) -> int:
    value = d.get(key)
    if not isinstance(value, int):
        what = "missing" if value is None else f"not an integer ({value!r:.40})"
        raise RemoteProtocolError(f"ut_metadata: {key.decode()!r} {what}")
    if not lo <= value <= hi:
        raise RemoteProtocolError(f"ut_metadata: {key.decode()!r} is {value}, not in {lo}..{hi}")
    return value


def decode_metadata_message(payload: bytes) -> MetadataMessage | None:
    """Parse an ``Extended`` payload received on our ``ut_metadata`` id.

    Returns None for an unknown ``msg_type``: BEP 9 says those must be ignored.
    """
    # strict_order=False: key order does not change the meaning and nothing here is hashed.
    value, end = bdecode_prefix(payload, strict_order=False, **_DICT_LIMITS)
    if not isinstance(value, dict):
        raise RemoteProtocolError("ut_metadata: message is not a dict")
    msg_type = value.get(b"msg_type")
    if not isinstance(msg_type, int):
        raise RemoteProtocolError("ut_metadata: 'msg_type' missing or not an integer")
    if msg_type not in (_REQUEST, _DATA, _REJECT):
        return None
    piece = _int(value, b"piece", 0, _MAX_PIECE_INDEX)
    trailing = len(payload) - end
    if msg_type == _DATA:
        total_size = _int(value, b"total_size", 1, 2**63 - 1)
        if not 0 < trailing <= METADATA_PIECE_SIZE:
            raise RemoteProtocolError(
                f"ut_metadata: data message with a block of {trailing} bytes, "
                f"must be 1..{METADATA_PIECE_SIZE}"
            )
        return MetadataData(piece, total_size, payload[end:])
    if trailing:
        kind = "request" if msg_type == _REQUEST else "reject"
        raise RemoteProtocolError(f"ut_metadata: {trailing} bytes after a {kind} message")
    return MetadataRequest(piece) if msg_type == _REQUEST else MetadataReject(piece)


class MetadataAssembler:
    """Collects the pieces of one info dict and verifies it against the info_hash.

    ``size`` is the peer's ``metadata_size`` (from its extension handshake), so it is checked
    like remote input. For ``hash_kind="sha256"`` (BEP 52) ``info_hash`` may be the full 32
    bytes or the 20-byte truncation seen in handshakes.
    """

    __slots__ = ("_hash_kind", "_info_hash", "_num_pieces", "_pieces", "_received", "_size")

    def __init__(
        self,
        info_hash: bytes,
        size: int,
        *,
        max_size: int = DEFAULT_MAX_METADATA_SIZE,
        hash_kind: HashKind = "sha1",
    ) -> None:
        allowed = {"sha1": (20,), "sha256": (20, 32)}.get(hash_kind)
        if allowed is None:
            raise LocalProtocolError(f"unknown hash kind {hash_kind!r}")
        if len(info_hash) not in allowed:
            raise LocalProtocolError(f"{hash_kind} info_hash of {len(info_hash)} bytes")
        if not 0 < size <= max_size:
            raise RemoteProtocolError(f"metadata_size {size} out of range 1..{max_size}")
        self._info_hash = bytes(info_hash)
        self._hash_kind = hash_kind
        self._size = size
        self._num_pieces = -(-size // METADATA_PIECE_SIZE)
        self._pieces: list[bytes | None] = [None] * self._num_pieces
        self._received = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def num_pieces(self) -> int:
        return self._num_pieces

    @property
    def received(self) -> int:
        """How many distinct pieces are held."""
        return self._received

    def piece_size(self, piece: int) -> int:
        if not 0 <= piece < self._num_pieces:
            raise LocalProtocolError(f"metadata piece {piece} out of range")
        if piece < self._num_pieces - 1:
            return METADATA_PIECE_SIZE
        return self._size - METADATA_PIECE_SIZE * (self._num_pieces - 1)

    def next_missing(self) -> int | None:
        """The lowest piece not yet received, or None when all are in."""
        if self._received == self._num_pieces:
            return None
        return self._pieces.index(None)

    def missing(self) -> list[int]:
        return [i for i, p in enumerate(self._pieces) if p is None]

    def reset(self) -> None:
        self._pieces = [None] * self._num_pieces
        self._received = 0

    def add(self, msg: MetadataData) -> bytes | None:
        """Take one piece; returns the verified info dict once the last piece is in.

        A piece with a bad index, size or ``total_size`` raises RemoteProtocolError and is
        not kept. A complete dict that does not hash to the info_hash raises
        RemoteProtocolError and every piece is dropped, so fetching starts over. A piece
        already held is ignored (returns None).
        """
        if msg.total_size != self._size:
            raise RemoteProtocolError(
                f"ut_metadata: total_size {msg.total_size} differs from metadata_size {self._size}"
            )
        if not 0 <= msg.piece < self._num_pieces:
            raise RemoteProtocolError(
                f"ut_metadata: piece {msg.piece} out of range 0..{self._num_pieces - 1}"
            )
        want = self.piece_size(msg.piece)
        if len(msg.data) != want:
            raise RemoteProtocolError(
                f"ut_metadata: piece {msg.piece} has {len(msg.data)} bytes, expected {want}"
            )
        if self._pieces[msg.piece] is not None:
            return None
        self._pieces[msg.piece] = bytes(msg.data)
        self._received += 1
        if self._received < self._num_pieces:
            return None
        info = b"".join(p for p in self._pieces if p is not None)
        digest = hashlib.new(self._hash_kind, info).digest()
        if digest[: len(self._info_hash)] != self._info_hash:
            self.reset()
            raise RemoteProtocolError(
                f"ut_metadata: assembled info dict hashes to {digest.hex()}, "
                f"not the info_hash {self._info_hash.hex()}"
            )
        return info
