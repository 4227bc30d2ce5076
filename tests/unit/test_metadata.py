"""Tests for swarm.metadata: BEP 9 messages and assembling a real info dict."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.bencode import BValue, bdecode, bencode
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.metadata import (
    METADATA_PIECE_SIZE,
    MetadataAssembler,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    encode_metadata_message,
)
from swarm.peerwire import (
    NEED_DATA,
    Extended,
    ExtensionHandshake,
    PeerWireReader,
    encode,
)


def make_info(num_file_pieces: int, seed: int = 1) -> bytes:
    """A real v1 info dict (single file) of a few metadata pieces, via swarm.bencode."""
    rng = random.Random(seed)
    info: dict[bytes, BValue] = {
        b"length": num_file_pieces * 262144 - 1000,
        b"name": b"data50.bin",
        b"piece length": 262144,
        b"pieces": rng.randbytes(20 * num_file_pieces),
    }
    raw = bencode(info)
    assert bdecode(raw) == info
    return raw


INFO = make_info(2000)  # ~40 KB: 3 metadata pieces, the last one short
INFO_HASH = hashlib.sha1(INFO).digest()


def info_of_size(size: int) -> bytes:
    """A bencoded dict of exactly ``size`` bytes."""
    for pad in range(size - 20, size):
        info = bencode({b"x": b"y" * pad})
        if len(info) == size:
            return info
    raise AssertionError(f"no padding gives {size} bytes")


def pieces_of(info: bytes) -> list[MetadataData]:
    return [
        MetadataData(i, len(info), info[off : off + METADATA_PIECE_SIZE])
        for i, off in enumerate(range(0, len(info), METADATA_PIECE_SIZE))
    ]


# --- messages -----------------------------------------------------------------------------


def test_bep9_vectors() -> None:
    assert encode_metadata_message(MetadataRequest(0)) == b"d8:msg_typei0e5:piecei0ee"
    assert encode_metadata_message(MetadataReject(3)) == b"d8:msg_typei2e5:piecei3ee"
    data = encode_metadata_message(MetadataData(0, 34256, b"x" * 16384))
    assert data == b"d8:msg_typei1e5:piecei0e10:total_sizei34256ee" + b"x" * 16384
    assert decode_metadata_message(b"d8:msg_typei0e5:piecei0ee") == MetadataRequest(0)
    assert decode_metadata_message(b"d8:msg_typei2e5:piecei1ee") == MetadataReject(1)
    assert decode_metadata_message(data) == MetadataData(0, 34256, b"x" * 16384)


@given(
    st.one_of(
        st.builds(MetadataRequest, st.integers(0, 10_000)),
        st.builds(MetadataReject, st.integers(0, 10_000)),
        st.builds(
            MetadataData,
            st.integers(0, 10_000),
            st.integers(1, 2**40),
            st.binary(min_size=1, max_size=METADATA_PIECE_SIZE),
        ),
    )
)
def test_message_round_trip(msg: MetadataRequest | MetadataReject | MetadataData) -> None:
    assert decode_metadata_message(encode_metadata_message(msg)) == msg


def test_unknown_msg_type_is_ignored_and_unsorted_keys_accepted() -> None:
    assert decode_metadata_message(b"d8:msg_typei7e5:piecei0ee") is None
    # some clients write the keys out of order; the meaning is the same
    assert decode_metadata_message(b"d5:piecei4e8:msg_typei0ee") == MetadataRequest(4)
    # unknown keys are tolerated
    assert decode_metadata_message(b"d3:fooi1e8:msg_typei2e5:piecei4ee") == MetadataReject(4)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"li1ee", "not a dict"),
        (b"d5:piecei0ee", "'msg_type' missing"),
        (b"d8:msg_typei0ee", "'piece' missing"),
        (b"d8:msg_typei0e5:piece1:ae", "'piece' not an integer"),
        (b"d8:msg_typei0e5:piecei-1ee", "'piece' is -1"),
        (b"d8:msg_typei0e5:piecei0eeXX", "2 bytes after a request message"),
        (b"d8:msg_typei2e5:piecei0eeX", "1 bytes after a reject message"),
        (b"d8:msg_typei1e5:piecei0ee" + b"x" * 10, "'total_size' missing"),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei0ee" + b"x", "'total_size' is 0"),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei9ee", "block of 0 bytes"),
        (b"d8:msg_typei1e5:piecei0e10:total_sizei9ee" + bytes(16385), "block of 16385 bytes"),
        (b"d8:msg_typei0e5:piecei0e", "bencode"),
        (b"d8:msg_typei0e5:piecei0e1:x" + b"l" * 100, "bencode"),
    ],
)
def test_decode_errors(payload: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_metadata_message(payload)


@given(st.binary(max_size=200), st.binary(max_size=50))
def test_random_payloads_only_raise_remote_protocol_error(head: bytes, tail: bytes) -> None:
    for payload in (head, b"d8:msg_typei1e" + head + tail):
        with contextlib.suppress(RemoteProtocolError):
            decode_metadata_message(payload)


def test_encode_refuses_bad_values() -> None:
    with pytest.raises(LocalProtocolError):
        encode_metadata_message(MetadataRequest(-1))
    with pytest.raises(LocalProtocolError):
        encode_metadata_message(MetadataData(0, 10, b""))
    with pytest.raises(LocalProtocolError):
        encode_metadata_message(MetadataData(0, 10**6, bytes(METADATA_PIECE_SIZE + 1)))


# --- assembler ----------------------------------------------------------------------------


def test_assembles_a_real_info_dict_out_of_order() -> None:
    parts = pieces_of(INFO)
    assert len(parts) == 3 and len(parts[-1].data) < METADATA_PIECE_SIZE
    asm = MetadataAssembler(INFO_HASH, len(INFO))
    assert asm.num_pieces == 3 and asm.next_missing() == 0
    assert asm.piece_size(2) == len(INFO) - 2 * METADATA_PIECE_SIZE
    assert asm.add(parts[2]) is None
    assert asm.next_missing() == 0 and asm.missing() == [0, 1]
    assert asm.add(parts[0]) is None
    assert asm.add(parts[0]) is None  # a duplicate changes nothing
    assert asm.next_missing() == 1 and asm.received == 2
    info = asm.add(parts[1])
    assert info == INFO
    assert asm.next_missing() is None and asm.missing() == []
    decoded = bdecode(info)
    assert isinstance(decoded, dict) and decoded[b"name"] == b"data50.bin"


@given(st.permutations(range(6)), st.integers(1, METADATA_PIECE_SIZE))
def test_any_order_any_last_piece_size(order: list[int], last: int) -> None:
    info = info_of_size(5 * METADATA_PIECE_SIZE + last)
    parts = pieces_of(info)
    assert len(parts) == 6 and len(parts[-1].data) == last
    asm = MetadataAssembler(hashlib.sha1(info).digest(), len(info))
    results = [asm.add(parts[i]) for i in order]
    assert results == [None] * 5 + [info]
    assert asm.next_missing() is None


def test_size_exactly_a_multiple_of_the_piece_size() -> None:
    info = info_of_size(2 * METADATA_PIECE_SIZE)
    asm = MetadataAssembler(hashlib.sha1(info).digest(), len(info))
    assert asm.num_pieces == 2 and asm.piece_size(1) == METADATA_PIECE_SIZE
    parts = pieces_of(info)
    assert asm.add(parts[1]) is None
    assert asm.add(parts[0]) == info


def test_wrong_piece_sizes_are_refused_and_not_kept() -> None:
    asm = MetadataAssembler(INFO_HASH, len(INFO))
    with pytest.raises(RemoteProtocolError, match="piece 0 has 100 bytes, expected 16384"):
        asm.add(MetadataData(0, len(INFO), INFO[:100]))
    last = len(INFO) - 2 * METADATA_PIECE_SIZE
    with pytest.raises(RemoteProtocolError, match=f"piece 2 has {last + 1} bytes, expected"):
        asm.add(MetadataData(2, len(INFO), INFO[2 * METADATA_PIECE_SIZE :] + b"!"))
    assert asm.received == 0 and asm.missing() == [0, 1, 2]
    for part in pieces_of(INFO)[:-1]:
        asm.add(part)
    assert asm.add(pieces_of(INFO)[-1]) == INFO


def test_bad_index_and_total_size() -> None:
    asm = MetadataAssembler(INFO_HASH, len(INFO))
    with pytest.raises(RemoteProtocolError, match=r"piece 3 out of range 0\.\.2"):
        asm.add(MetadataData(3, len(INFO), b"x"))
    with pytest.raises(RemoteProtocolError, match="total_size 99 differs from metadata_size"):
        asm.add(MetadataData(0, 99, INFO[:METADATA_PIECE_SIZE]))


def test_hash_mismatch_raises_and_starts_over() -> None:
    asm = MetadataAssembler(INFO_HASH, len(INFO))
    parts = pieces_of(INFO)
    bad = MetadataData(1, len(INFO), bytes(len(parts[1].data)))
    asm.add(parts[0])
    asm.add(bad)
    with pytest.raises(RemoteProtocolError, match=r"hashes to [0-9a-f]{40}, not the info_hash"):
        asm.add(parts[2])
    assert asm.received == 0 and asm.next_missing() == 0 and asm.missing() == [0, 1, 2]
    # a second, honest round completes
    for part in parts[:-1]:
        assert asm.add(part) is None
    assert asm.add(parts[-1]) == INFO


@pytest.mark.parametrize("truncated", [False, True])
def test_sha256_info_hash(truncated: bool) -> None:
    full = hashlib.sha256(INFO).digest()
    asm = MetadataAssembler(full[:20] if truncated else full, len(INFO), hash_kind="sha256")
    for part in pieces_of(INFO)[:-1]:
        asm.add(part)
    assert asm.add(pieces_of(INFO)[-1]) == INFO
    # the v1 hash is not the v2 hash
    wrong = MetadataAssembler(INFO_HASH, len(INFO), hash_kind="sha256")
    for part in pieces_of(INFO)[:-1]:
        wrong.add(part)
    with pytest.raises(RemoteProtocolError, match="not the info_hash"):
        wrong.add(pieces_of(INFO)[-1])


def test_size_limits_and_misuse() -> None:
    with pytest.raises(RemoteProtocolError, match="metadata_size 0 out of range"):
        MetadataAssembler(INFO_HASH, 0)
    with pytest.raises(
        RemoteProtocolError, match=r"metadata_size 8388609 out of range 1\.\.8388608"
    ):
        MetadataAssembler(INFO_HASH, 8 * 1024 * 1024 + 1)
    with pytest.raises(RemoteProtocolError, match=r"out of range 1\.\.1000"):
        MetadataAssembler(INFO_HASH, 1001, max_size=1000)
    with pytest.raises(LocalProtocolError):
        MetadataAssembler(INFO_HASH[:10], 100)
    with pytest.raises(LocalProtocolError):
        MetadataAssembler(INFO_HASH, 100, hash_kind="md5")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        MetadataAssembler(INFO_HASH, 100).piece_size(1)


def test_metadata_fetch_through_the_peer_wire_reader() -> None:
    """A seeder's extension handshake and data messages, as bytes, reach a complete info dict
    with the reader's default limits (a 16 KiB data message is bigger than a piece message)."""
    ut_metadata = 3  # the id *we* asked the peer to use in our handshake
    stream = encode(
        Extended(0, ExtensionHandshake(m={"ut_metadata": 2}, metadata_size=len(INFO)).encode())
    )
    for part in reversed(pieces_of(INFO)):
        stream += encode(Extended(ut_metadata, encode_metadata_message(part)))
    reader = PeerWireReader(handshake="none")
    reader.feed(stream)
    first = reader.next_event()
    assert isinstance(first, Extended) and first.ext_id == 0
    hs = ExtensionHandshake.decode(first.payload)
    assert hs.metadata_size is not None
    asm = MetadataAssembler(INFO_HASH, hs.metadata_size)
    result = None
    while (event := reader.next_event()) is not NEED_DATA:
        assert isinstance(event, Extended) and event.ext_id == ut_metadata
        msg = decode_metadata_message(event.payload)
        assert isinstance(msg, MetadataData)
        result = asm.add(msg)
    assert result == INFO
