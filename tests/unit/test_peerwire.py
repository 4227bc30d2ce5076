"""Tests for swarm.peerwire: wire vectors, round trips in random chunkings, hostile input."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.bencode import bencode
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.peerwire import (
    DEFAULT_MAX_MESSAGE_LENGTH,
    DEFAULT_MAX_REQUEST_LENGTH,
    DEFAULT_RESERVED,
    NEED_DATA,
    AllowedFast,
    Bitfield,
    BitfieldMessage,
    Cancel,
    Choke,
    Event,
    Extended,
    ExtensionHandshake,
    Handshake,
    HandshakeHead,
    HandshakeMode,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    MessageId,
    NotInterested,
    PeerId,
    PeerWireReader,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
    Unknown,
    encode,
    encode_handshake,
    make_reserved,
    piece_header,
)

INFO_HASH = bytes(range(20))
PEER_ID = b"-SC0001-abcdefghijkl"
HANDSHAKE = encode_handshake(INFO_HASH, PEER_ID)

# --- helpers ------------------------------------------------------------------------------


def normal(event: Event) -> Event:
    """Events with memoryview blocks turned into bytes, for comparison and readable diffs."""
    if isinstance(event, Piece):
        return Piece(event.index, event.begin, bytes(event.block))
    return event


def drain(reader: PeerWireReader) -> list[Event]:
    out: list[Event] = []
    for _ in range(1_000_000):
        event = reader.next_event()
        if event is NEED_DATA:
            return out
        assert not isinstance(event, type(NEED_DATA))
        out.append(normal(event))
    raise AssertionError("reader did not settle")


def feed_in_pieces(reader: PeerWireReader, data: bytes, cuts: Sequence[int]) -> list[Event]:
    """Feed ``data`` split at ``cuts``, draining after every chunk, then EOF."""
    events: list[Event] = []
    last = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        reader.feed(data[last:cut])
        events += drain(reader)
        last = cut
    reader.feed(b"")
    events += drain(reader)
    assert reader.eof
    return events


def expect_error(reader: PeerWireReader, data: bytes, match: str) -> RemoteProtocolError:
    reader.feed(data)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        drain(reader)
    return info.value


def reader_after_handshake(**kwargs: int) -> PeerWireReader:
    reader = PeerWireReader(**kwargs)  # type: ignore[arg-type]
    reader.feed(HANDSHAKE)
    assert drain(reader) == [Handshake(INFO_HASH, PEER_ID, DEFAULT_RESERVED)]
    return reader


# --- strategies ---------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
REQ_LEN = st.integers(1, DEFAULT_MAX_REQUEST_LENGTH)
UNKNOWN_IDS = st.integers(0, 255).filter(lambda i: i not in {int(m) for m in MessageId})


def messages(num_pieces: int | None = None) -> st.SearchStrategy[Message]:
    index = U32 if num_pieces is None else st.integers(0, num_pieces - 1)
    if num_pieces is None:
        bitfield = st.binary(min_size=1, max_size=300).map(BitfieldMessage)
    else:
        bitfield = st.sets(st.integers(0, num_pieces - 1)).map(
            lambda s: BitfieldMessage(_bits(s, num_pieces))
        )
    return st.one_of(
        st.sampled_from(
            [KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested(), HaveAll(), HaveNone()]
        ),
        st.builds(Have, index),
        st.builds(SuggestPiece, index),
        st.builds(AllowedFast, index),
        bitfield,
        st.builds(Request, index, U32, REQ_LEN),
        st.builds(Cancel, index, U32, REQ_LEN),
        st.builds(RejectRequest, index, U32, REQ_LEN),
        st.builds(
            Piece, index, U32, st.binary(min_size=1, max_size=DEFAULT_MAX_MESSAGE_LENGTH - 9)
        ),
        st.builds(Port, st.integers(0, 65535)),
        st.builds(Extended, st.integers(0, 255), st.binary(max_size=2000)),
        st.builds(Unknown, UNKNOWN_IDS, st.binary(max_size=200)),
    )


def _bits(indexes: set[int], n: int) -> bytes:
    bf = Bitfield(n)
    for i in indexes:
        bf.set(i)
    return bf.to_bytes()


# --- concrete wire vectors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (KeepAlive(), "00000000"),
        (Choke(), "0000000100"),
        (Unchoke(), "0000000101"),
        (Interested(), "0000000102"),
        (NotInterested(), "0000000103"),
        (Have(1), "000000050400000001"),
        (BitfieldMessage(b"\xff\xe0"), "0000000305ffe0"),
        (Request(1, 0x4000, 0x4000), "0000000d06000000010000400000004000"),
        (Piece(2, 0x8000, b"ab"), "0000000b07000000020000800061 62".replace(" ", "")),
        (Cancel(1, 0, 16384), "0000000d08000000010000000000004000"),
        (Port(6881), "00000003091ae1"),
        (SuggestPiece(7), "000000050d00000007"),
        (HaveAll(), "000000010e"),
        (HaveNone(), "000000010f"),
        (RejectRequest(3, 16384, 16384), "0000000d10000000030000400000004000"),
        (AllowedFast(9), "000000051100000009"),
        (Extended(0, b"de"), "000000041400" + b"de".hex()),
        (Unknown(21, b"\x01\x02"), "000000031501" + "02"),
    ],
)
def test_wire_vectors(msg: Message, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert encode(msg) == raw
    reader = PeerWireReader(handshake="none")
    reader.feed(raw)
    assert drain(reader) == [msg]


def test_handshake_vector_and_reserved_bits() -> None:
    reserved = bytes.fromhex("0000000000100005")  # extensions, fast, dht (what libtorrent sends)
    raw = encode_handshake(INFO_HASH, PEER_ID, reserved)
    assert raw == b"\x13BitTorrent protocol" + reserved + INFO_HASH + PEER_ID
    assert len(raw) == 68
    assert encode(Handshake(INFO_HASH, PEER_ID, reserved)) == raw
    reader = PeerWireReader()
    reader.feed(raw)
    (hs,) = drain(reader)
    assert isinstance(hs, Handshake)
    assert (hs.info_hash, hs.peer_id, hs.reserved) == (INFO_HASH, PEER_ID, reserved)
    assert hs.supports_fast and hs.supports_extensions and hs.supports_dht
    plain = Handshake(INFO_HASH, PEER_ID, bytes(8))
    assert not (plain.supports_fast or plain.supports_extensions or plain.supports_dht)
    assert make_reserved(fast=False, extensions=True) == bytes.fromhex("0000000000100000")
    assert make_reserved(fast=True, extensions=False, dht=True) == bytes.fromhex("0000000000000005")
    assert bytes.fromhex("0000000000100004") == DEFAULT_RESERVED


def test_piece_header_is_the_front_of_an_encoded_piece() -> None:
    block = bytes(range(256)) * 64
    assert piece_header(5, 16384, len(block)) + block == encode(Piece(5, 16384, block))
    assert len(piece_header(0, 0, 1)) == 13
    # memoryview blocks encode too (the seeder may hold a view of a cached piece)
    assert encode(Piece(5, 16384, memoryview(block))) == encode(Piece(5, 16384, block))


@pytest.mark.parametrize(
    "msg",
    [
        Have(-1),
        Have(2**32),
        Request(0, 0, 0),
        Request(0, 2**32, 1),
        Cancel(0, 0, -5),
        Port(65536),
        Extended(256, b""),
        Unknown(7, b"x"),  # id 7 is piece: an Unknown must not forge a known message
    ],
)
def test_encode_refuses_out_of_range_values(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


def test_encode_refuses_bad_handshake_and_foreign_objects() -> None:
    with pytest.raises(LocalProtocolError, match="20-byte info_hash"):
        encode_handshake(b"short", PEER_ID)
    with pytest.raises(LocalProtocolError):
        encode_handshake(INFO_HASH, PEER_ID, b"\0" * 7)
    with pytest.raises(LocalProtocolError):
        piece_header(2**32, 0, 10)
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode("choke")  # type: ignore[arg-type]


# --- round trips --------------------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(messages(), max_size=20), cuts=st.lists(st.integers(0, 400_000)))
def test_round_trip_random_chunking(msgs: list[Message], cuts: list[int]) -> None:
    data = HANDSHAKE + b"".join(encode(m) for m in msgs)
    reader = PeerWireReader(max_extension_length=4096)
    events = feed_in_pieces(reader, data, cuts)
    assert events == [Handshake(INFO_HASH, PEER_ID, DEFAULT_RESERVED), *msgs]
    assert reader.buffered == 0


@settings(max_examples=100)
@given(
    n=st.integers(1, 3000),
    data=st.data(),
    seed=st.integers(0, 2**32),
)
def test_round_trip_with_known_piece_count(n: int, data: st.DataObject, seed: int) -> None:
    msgs = data.draw(st.lists(messages(n), max_size=15))
    raw = HANDSHAKE + b"".join(encode(m) for m in msgs)
    rng = random.Random(seed)
    cuts = [rng.randrange(len(raw) + 1) for _ in range(rng.randrange(10))]
    reader = PeerWireReader()
    reader.set_num_pieces(n)
    assert feed_in_pieces(reader, raw, cuts)[1:] == msgs


def test_round_trip_one_byte_at_a_time_every_message_type() -> None:
    msgs: list[Message] = [
        KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested(), Have(3),
        BitfieldMessage(b"\xf0"), Request(1, 2, 3), Piece(3, 16, b"xyz" * 1000),
        Cancel(1, 2, 3), Port(1), SuggestPiece(2), HaveAll(), HaveNone(),
        RejectRequest(1, 2, 3), AllowedFast(0), Extended(1, b"d1:xi1ee"),
        Unknown(22, b"hashes" * 10), KeepAlive(),
    ]  # fmt: skip
    data = HANDSHAKE + b"".join(map(encode, msgs))
    reader = PeerWireReader()
    reader.set_num_pieces(4)
    events = feed_in_pieces(reader, data, range(len(data)))
    assert events == [Handshake(INFO_HASH, PEER_ID, DEFAULT_RESERVED), *msgs]


@pytest.mark.parametrize("mode", ["full", "early", "none"])
def test_handshake_modes(mode: HandshakeMode) -> None:
    reader = PeerWireReader(handshake=mode)
    body = encode(Have(1)) + encode(Interested())
    data = body if mode == "none" else HANDSHAKE + body
    reader.feed(data[:48])
    first = drain(reader)
    reader.feed(data[48:])
    rest = drain(reader)
    if mode == "full":
        assert first == []  # the whole 68 bytes are needed
        assert rest == [Handshake(INFO_HASH, PEER_ID, DEFAULT_RESERVED), Have(1), Interested()]
    elif mode == "early":
        # the info_hash is out after 48 bytes, before the peer has sent its id
        assert first == [HandshakeHead(INFO_HASH, DEFAULT_RESERVED)]
        assert first[0].supports_extensions  # type: ignore[union-attr]
        assert rest == [PeerId(PEER_ID), Have(1), Interested()]
    else:
        assert first + rest == [Have(1), Interested()]


def test_piece_block_is_a_view_of_the_fed_chunk_not_a_copy() -> None:
    reader = reader_after_handshake()
    chunk = encode(Piece(0, 0, b"a" * 16384)) + encode(Piece(0, 16384, b"b" * 16384))
    reader.feed(chunk)
    e1, e2 = reader.next_event(), reader.next_event()
    assert isinstance(e1, Piece) and isinstance(e2, Piece)
    assert isinstance(e1.block, memoryview) and e1.block.obj is chunk
    assert e1.block.readonly and bytes(e2.block) == b"b" * 16384


def test_split_piece_is_assembled_once_and_read_only() -> None:
    reader = reader_after_handshake()
    raw = encode(Piece(1, 0, b"q" * 16384))
    reader.feed(raw[:7000])
    assert reader.next_event() is NEED_DATA
    reader.feed(raw[7000:])
    event = reader.next_event()
    assert isinstance(event, Piece) and bytes(event.block) == b"q" * 16384
    assert isinstance(event.block, memoryview) and event.block.readonly
    with pytest.raises(TypeError):  # never hashable, however the block arrived
        hash(event)


def test_fed_bytearray_may_be_reused_by_the_caller() -> None:
    reader = reader_after_handshake()
    buf = bytearray(encode(Piece(0, 0, b"good")))
    reader.feed(buf)  # type: ignore[arg-type]
    buf[:] = b"\0" * len(buf)
    assert drain(reader) == [Piece(0, 0, b"good")]


def test_take_buffered_hands_over_unread_bytes() -> None:
    reader = PeerWireReader()
    reader.feed(HANDSHAKE + encode(Have(1)) + b"\x00\x00")
    reader.feed(b"\x00\x05")
    assert isinstance(reader.next_event(), Handshake)
    assert reader.buffered == 9 + 4
    assert reader.take_buffered() == encode(Have(1)) + b"\0\0\0\x05"
    assert reader.buffered == 0 and reader.next_event() is NEED_DATA


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"\xff\xff\xff\xff\x07", "piece message with length 4294967295: larger than the limit"),
        ((16384 + 14).to_bytes(4, "big") + b"\x07", "piece message with length 16398"),
        (b"\x7f\xff\xff\xff\x14", "extended message with length 2147483647"),
        (b"\x7f\xff\xff\xff\x15", "message id 21 message with length"),
        (b"\x01\x00\x00\x00\x05", "bitfield message with length 16777216"),
    ],
)
def test_oversized_length_prefix_fails_at_the_header(header: bytes, match: str) -> None:
    # Only 5 bytes are fed: the reader refuses before waiting for (or allocating) the body.
    reader = reader_after_handshake()
    expect_error(reader, header, match)
    assert reader.buffered <= 5


def test_configurable_limits() -> None:
    reader = reader_after_handshake(max_message_length=128 * 1024 + 13)
    big = Piece(0, 0, b"z" * 128 * 1024)
    reader.feed(encode(big))
    assert drain(reader) == [big]
    small = reader_after_handshake(max_extension_length=100)
    expect_error(small, encode(Extended(1, b"x" * 99)), "extended message with length 101")
    with pytest.raises(LocalProtocolError):
        PeerWireReader(max_message_length=3)
    with pytest.raises(LocalProtocolError):
        PeerWireReader(handshake="sometimes")  # type: ignore[arg-type]


FIXED = {
    MessageId.CHOKE: 1, MessageId.UNCHOKE: 1, MessageId.INTERESTED: 1,
    MessageId.NOT_INTERESTED: 1, MessageId.HAVE: 5, MessageId.REQUEST: 13,
    MessageId.CANCEL: 13, MessageId.PORT: 3, MessageId.SUGGEST_PIECE: 5,
    MessageId.HAVE_ALL: 1, MessageId.HAVE_NONE: 1, MessageId.REJECT_REQUEST: 13,
    MessageId.ALLOWED_FAST: 5,
}  # fmt: skip


@pytest.mark.parametrize("msg_id", list(FIXED))
@pytest.mark.parametrize("delta", [-1, 1, 4])
def test_fixed_size_messages_must_have_their_exact_length(msg_id: MessageId, delta: int) -> None:
    length = FIXED[msg_id] + delta
    if length == 0:
        return  # that is a keep-alive, tested elsewhere
    raw = length.to_bytes(4, "big") + bytes([msg_id]) + b"\0" * (length - 1)
    reader = reader_after_handshake()
    expect_error(reader, raw, f"{msg_id.name.lower()} message with length {length}: must be")


def test_empty_piece_and_empty_extended_are_refused() -> None:
    expect_error(reader_after_handshake(), b"\0\0\0\x09\x07" + b"\0" * 8, "at least 10")
    expect_error(reader_after_handshake(), b"\0\0\0\x01\x14", "extended message with length 1")
    expect_error(reader_after_handshake(), b"\0\0\0\x01\x05", "bitfield message with length 1")


def test_bitfield_checked_against_piece_count() -> None:
    reader = reader_after_handshake()
    reader.set_num_pieces(10)
    # right length, spare bits clear
    reader.feed(encode(BitfieldMessage(b"\xff\xc0")))
    assert drain(reader) == [BitfieldMessage(b"\xff\xc0")]
    expect_error(reader_with(10), encode(BitfieldMessage(b"\xff\xe0")), "spare bits set")
    expect_error(reader_with(10), encode(BitfieldMessage(b"\xff\xc0\x00")), "must be 3 for 10")
    expect_error(reader_with(10), encode(BitfieldMessage(b"\xff")), "must be 3 for 10 pieces")


def test_bitfield_for_a_huge_torrent_passes_the_default_limit_once_n_is_known() -> None:
    n = 5_000_000  # 625,000-byte bitfield: above the unknown-n default, exact once n is known
    raw = encode(BitfieldMessage(Bitfield.all(n).to_bytes()))
    expect_error(reader_after_handshake(), raw[:5], "bitfield message with length 625001")
    reader = reader_with(n)
    reader.feed(raw)
    (event,) = drain(reader)
    assert isinstance(event, BitfieldMessage)
    assert Bitfield.from_bytes(event.bits, n).count() == n


def reader_with(n: int) -> PeerWireReader:
    reader = reader_after_handshake()
    reader.set_num_pieces(n)
    return reader


@pytest.mark.parametrize(
    "msg",
    [
        Have(8), SuggestPiece(8), AllowedFast(8), Request(8, 0, 16384),
        Cancel(9, 0, 16384), RejectRequest(2**32 - 1, 0, 1), Piece(8, 0, b"x"),
    ],
)  # fmt: skip
def test_indexes_out_of_range(msg: Message) -> None:
    reader = reader_with(8)
    name = type(msg).__name__
    expected = {"SuggestPiece": "suggest_piece", "AllowedFast": "allowed_fast",
                "RejectRequest": "reject_request"}.get(name, name.lower())  # fmt: skip
    expect_error(reader, encode(msg), f"{expected} message for piece {msg.index}, torrent has 8")  # type: ignore[union-attr]
    # the same index is fine without a piece count
    fresh = reader_after_handshake()
    fresh.feed(encode(msg))
    assert drain(fresh) == [msg]


def test_split_piece_index_is_checked_too() -> None:
    reader = reader_with(2)
    raw = encode(Piece(5, 0, b"x" * 5000))
    reader.feed(raw[:100])
    assert drain(reader) == []
    expect_error(reader, raw[100:], "piece message for piece 5, torrent has 2")


@pytest.mark.parametrize("cls", [Request, Cancel, RejectRequest])
def test_request_length_bounds(cls: type[Request | Cancel | RejectRequest]) -> None:
    zero = (13).to_bytes(4, "big") + bytes([_ID[cls]]) + bytes(12)
    expect_error(reader_after_handshake(), zero, "block length 0, must be 1..131072")
    big = cls(0, 0, DEFAULT_MAX_REQUEST_LENGTH + 1)
    expect_error(reader_after_handshake(), encode(big), "block length 131073")
    small = reader_after_handshake(max_request_length=16384)
    expect_error(small, encode(cls(0, 0, 16385)), "must be 1..16384")


_ID = {
    Request: MessageId.REQUEST,
    Cancel: MessageId.CANCEL,
    RejectRequest: MessageId.REJECT_REQUEST,
}


def test_unknown_ids_do_not_kill_the_connection() -> None:
    reader = reader_after_handshake()
    hash_request = bytes(48)  # BEP 52 hash request (id 21): surfaced, not parsed
    raw = (49).to_bytes(4, "big") + b"\x15" + hash_request + encode(Have(2))
    raw += b"\0\0\0\x01\xff"
    reader.feed(raw)
    assert drain(reader) == [Unknown(21, hash_request), Have(2), Unknown(255, b"")]


def test_wrong_protocol_string_fails_before_68_bytes() -> None:
    reader = PeerWireReader()
    err = expect_error(reader, b"GET /announce", "not a BitTorrent handshake")
    assert "b'GET /announce'" in str(err)
    r2 = PeerWireReader()
    expect_error(r2, b"\x13BitTorrent protocoL" + bytes(48), "not a BitTorrent handshake")
    r3 = PeerWireReader(handshake="early")
    expect_error(r3, b"\x12", "not a BitTorrent handshake")


@pytest.mark.parametrize("mode", ["full", "early"])
@pytest.mark.parametrize("cut", [1, 19, 20, 47, 60, 67])
def test_truncated_handshake(mode: HandshakeMode, cut: int) -> None:
    reader = PeerWireReader(handshake=mode)
    reader.feed(HANDSHAKE[:cut])
    events = drain(reader)
    reader.feed(b"")
    with pytest.raises(RemoteProtocolError, match=r"connection closed after \d+ handshake bytes"):
        drain(reader)
    assert mode == "early" or events == []


def test_eof_inside_a_message_is_an_error_and_between_messages_is_not() -> None:
    reader = reader_after_handshake()
    reader.feed(encode(Have(1)))
    reader.feed(b"")
    assert drain(reader) == [Have(1)]
    assert reader.eof and reader.next_event() is NEED_DATA
    cut = reader_after_handshake()
    cut.feed(encode(Request(1, 2, 3))[:-1])
    assert drain(cut) == []
    cut.feed(b"")
    with pytest.raises(RemoteProtocolError, match=r"closed inside a message \(16 bytes\)"):
        cut.next_event()
    with pytest.raises(LocalProtocolError):
        cut.feed(b"more")


def test_reader_stays_dead_after_an_error() -> None:
    reader = reader_after_handshake()
    bad_have = b"\0\0\0\x07\x04" + bytes(6)
    err = expect_error(reader, bad_have + encode(Choke()), "have message with length 7")
    reader.feed(encode(Choke()))
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            reader.next_event()
        assert again.value is err
    with pytest.raises(LocalProtocolError):
        reader.take_buffered()


def test_set_num_pieces_misuse() -> None:
    reader = PeerWireReader()
    with pytest.raises(LocalProtocolError):
        reader.set_num_pieces(0)
    reader.set_num_pieces(5)
    reader.set_num_pieces(5)  # idempotent
    assert reader.num_pieces == 5
    with pytest.raises(LocalProtocolError):
        reader.set_num_pieces(6)


@settings(max_examples=500)
@given(
    data=st.binary(max_size=3000),
    prefix=st.sampled_from([b"", HANDSHAKE]),
    n=st.one_of(st.none(), st.integers(1, 100)),
    cuts=st.lists(st.integers(0, 3100), max_size=8),
    mode=st.sampled_from(["full", "early", "none"]),
)
def test_random_bytes_only_raise_remote_protocol_error(
    data: bytes, prefix: bytes, n: int | None, cuts: list[int], mode: HandshakeMode
) -> None:
    reader = PeerWireReader(handshake=mode)
    if n is not None:
        reader.set_num_pieces(n)
    with contextlib.suppress(RemoteProtocolError):
        feed_in_pieces(reader, prefix + data, cuts)


@settings(max_examples=300)
@given(
    msgs=st.lists(messages(50), min_size=1, max_size=10),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=5),
)
def test_mutated_valid_streams_only_raise_remote_protocol_error(
    msgs: list[Message], edits: list[tuple[int, int]]
) -> None:
    raw = bytearray(HANDSHAKE + b"".join(map(encode, msgs)))
    for pos, value in edits:
        raw[pos % len(raw)] = value
    reader = PeerWireReader()
    reader.set_num_pieces(50)
    try:
        events = feed_in_pieces(reader, bytes(raw), [len(raw) // 3, len(raw) // 2])
    except RemoteProtocolError:
        return
    assert all(not isinstance(e, Handshake) or e.reserved == bytes(raw[20:28]) for e in events)


# --- BEP 10 extension handshake -----------------------------------------------------------


def test_extension_handshake_vector_from_a_real_client_shape() -> None:
    payload = (
        b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e"
        b"12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e"
        b"1:pi6881e4:reqqi500e11:upload_onlyi0e1:v17:libtorrent/2.0.11"
        b"6:yourip4:\x0aM\x01\x02e"
    )
    hs = ExtensionHandshake.decode(payload)
    assert hs.m["ut_metadata"] == 2 and hs.m["ut_pex"] == 1 and len(hs.m) == 6
    assert hs.metadata_size == 31235
    assert hs.reqq == 500
    assert hs.listen_port == 6881
    assert hs.v == "libtorrent/2.0.11"
    assert hs.yourip == b"\x0aM\x01\x02"


def test_extension_handshake_encode_is_canonical_bencode() -> None:
    hs = ExtensionHandshake(m={"ut_metadata": 3}, metadata_size=100, reqq=250, v="swarmcache")
    assert hs.encode() == (
        b"d1:md11:ut_metadatai3ee13:metadata_sizei100e4:reqqi250e1:v10:swarmcachee"
    )
    assert ExtensionHandshake().encode() == b"d1:mdee"
    assert ExtensionHandshake.decode(b"de") == ExtensionHandshake()
    with pytest.raises(LocalProtocolError):
        ExtensionHandshake(m={"x": 300}).encode()


@given(
    m=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 255), max_size=6),
    metadata_size=st.none() | st.integers(1, 2**32 - 1),
    reqq=st.none() | st.integers(1, 5000),
    v=st.none() | st.text(max_size=30),
    port=st.none() | st.integers(0, 65535),
    yourip=st.none() | st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
)
def test_extension_handshake_round_trip(
    m: dict[str, int],
    metadata_size: int | None,
    reqq: int | None,
    v: str | None,
    port: int | None,
    yourip: bytes | None,
) -> None:
    hs = ExtensionHandshake(m, metadata_size, reqq, v, port, yourip)
    assert ExtensionHandshake.decode(hs.encode()) == hs


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"le", "not a dict"),
        (b"d1:mi1ee", "'m' is not a dict"),
        (b"d1:md2:xx1:aee", "message id b'a'"),
        (b"d1:md2:xxi256eee", "must be an integer 0..255"),
        (b"d1:md1:\xffi1eee", "not UTF-8"),
        (b"d13:metadata_size3:abce", "'metadata_size' is b'abc'"),
        (b"d13:metadata_sizei-1ee", "'metadata_size' is -1"),
        (b"d1:pi70000ee", "'p' is 70000"),
        (b"d4:reqqi0ee", "'reqq' is 0"),
        (b"d1:vi1ee", "'v' is not a string"),
        (b"d6:yourip5:abcdee", "'yourip' is not 4 or 16 bytes"),
        (b"d1:m", "bencode"),
    ],
)
def test_extension_handshake_type_errors(payload: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        ExtensionHandshake.decode(payload)


def test_extension_handshake_tolerates_unknown_keys_and_odd_client_names() -> None:
    payload = bencode({b"e": 1, b"ipv6": b"\0" * 16, b"m": {}, b"v": b"\xb5Torrent", b"zz": [1]})
    hs = ExtensionHandshake.decode(payload)
    assert hs.v == "\ufffdTorrent" and hs.m == {}


@given(st.binary(max_size=300))
def test_extension_handshake_random_bytes(payload: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        ExtensionHandshake.decode(payload)


# --- Bitfield -----------------------------------------------------------------------------


def test_bitfield_bit_order_matches_the_wire() -> None:
    bf = Bitfield(10)
    bf.set(0)
    bf.set(9)
    assert bf.to_bytes() == b"\x80\x40"
    assert 0 in bf and 9 in bf and 1 not in bf and 10 not in bf and -1 not in bf
    assert bf.count() == 2 and list(bf) == [0, 9]
    bf.set(9)  # setting twice does not count twice
    assert bf.count() == 2
    bf.discard(0)
    assert bf.count() == 1 and list(bf) == [9]
    with pytest.raises(LocalProtocolError):
        bf.set(10)
    with pytest.raises(LocalProtocolError):
        bf.set(-1)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 1000])
def test_bitfield_all(n: int) -> None:
    bf = Bitfield.all(n)
    assert bf.count() == n and bf.is_complete()
    assert list(bf) == list(range(n))
    # spare bits are zero, so it survives a strict peer's check
    assert Bitfield.from_bytes(bf.to_bytes(), n) == bf


def test_bitfield_from_bytes_validation() -> None:
    assert Bitfield.from_bytes(b"\xff\xc0", 10).count() == 10
    with pytest.raises(RemoteProtocolError, match="spare bits set beyond piece 9"):
        Bitfield.from_bytes(b"\xff\xe0", 10)
    with pytest.raises(RemoteProtocolError, match="bitfield of 3 bytes, expected 2"):
        Bitfield.from_bytes(b"\xff\xc0\x00", 10)
    with pytest.raises(RemoteProtocolError, match="bitfield of 1 bytes, expected 2"):
        Bitfield.from_bytes(b"\xff", 10)


@given(
    n=st.integers(1, 2000),
    data=st.data(),
)
def test_bitfield_matches_a_set_model(n: int, data: st.DataObject) -> None:
    mine = data.draw(st.sets(st.integers(0, n - 1)))
    theirs = data.draw(st.sets(st.integers(0, n - 1)))
    a, b = Bitfield(n), Bitfield(n)
    for i in mine:
        a.set(i)
    for i in theirs:
        b.set(i)
    assert a.count() == len(mine)
    assert list(a) == sorted(mine)
    assert all((i in a) == (i in mine) for i in range(n))
    diff = b.missing_from(a)
    assert list(diff) == sorted(theirs - mine) and diff.count() == len(theirs - mine)
    assert Bitfield.from_bytes(a.to_bytes(), n) == a
    c = a.copy()
    c.set(0)
    assert (0 in a) == (0 in mine)  # copy is independent


def test_bitfield_missing_from_needs_equal_sizes() -> None:
    with pytest.raises(LocalProtocolError):
        Bitfield(8).missing_from(Bitfield(9))
