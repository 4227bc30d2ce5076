"""Tests for swarm.steering: tracker/DHT peer-list rewriting, KRPC reading, DhtQueryTable."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.bencode import bdecode, bencode
from swarm.compact import decode_peers4, decode_peers6, encode_peers4, encode_peers6
from swarm.errors import LocalProtocolError
from swarm.steering import (
    MAX_KRPC_SIZE,
    DhtQueryTable,
    KrpcMessage,
    parse_krpc,
    parse_udp_announce_request,
    peers_in_get_peers_response,
    peers_in_tracker_response,
    peers_in_udp_announce_response,
    rewrite_get_peers_response,
    rewrite_tracker_response,
    rewrite_udp_announce_response,
)
from swarm.tracker_http import parse_announce_response
from swarm.tracker_udp import (
    AnnounceRequestPacket,
    ConnectResponse,
    ErrorResponse,
    decode_announce_response,
    encode_announce_response,
    encode_packet,
)

BOX = ("100.64.0.1", 6881)
BOX_ENTRY = encode_peers4([BOX])
A = ("198.51.100.7", 51413)
B = ("203.0.113.9", 6889)
C = ("192.0.2.33", 40000)
V6 = ("2001:db8::5", 6881)

peer4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535))
peer_lists = st.lists(st.one_of(peer4, st.just(BOX)), max_size=60)


def as_dict(raw: bytes) -> dict[bytes, Any]:
    value = bdecode(raw)
    assert isinstance(value, dict)
    return value


def opentracker_reply(
    peers: list[tuple[str, int]], peers6: list[tuple[str, int]] | None = None
) -> bytes:
    # opentracker writes its reply by hand, in this key order (already sorted).
    p4 = encode_peers4(peers)
    body = b"d8:completei3e10:downloadedi17e10:incompletei4e8:intervali1800e12:min intervali900e"
    body += b"5:peers%d:" % len(p4) + p4
    if peers6:
        p6 = encode_peers6(list(peers6))
        body += b"6:peers6%d:" % len(p6) + p6
    return body + b"e"


# --- HTTP tracker replies -------------------------------------------------------------------


def test_compact_reply_gets_box_first_and_keeps_counts() -> None:
    body = opentracker_reply([A, B])
    out = rewrite_tracker_response(body, BOX)
    assert out is not None
    parsed = parse_announce_response(out)
    assert parsed.peers == (BOX, A, B)
    assert (parsed.complete, parsed.incomplete, parsed.interval, parsed.min_interval) == (
        3,
        4,
        1800,
        900,
    )
    assert as_dict(out)[b"downloaded"] == 17
    # Only the peers string changed: six more bytes.
    assert len(out) == len(body) + 6


def test_compact_reply_with_box_in_the_middle_moves_it_first_once() -> None:
    out = rewrite_tracker_response(opentracker_reply([A, BOX, B, BOX]), BOX)
    assert out is not None
    assert parse_announce_response(out).peers == (BOX, A, B)


def test_rewrite_is_idempotent() -> None:
    once = rewrite_tracker_response(opentracker_reply([A, B]), BOX)
    assert once is not None
    assert rewrite_tracker_response(once, BOX) is None


def test_peers6_untouched() -> None:
    body = opentracker_reply([A], [V6, ("2001:db8::9", 1)])
    out = rewrite_tracker_response(body, BOX)
    assert out is not None
    d = bdecode(out)
    assert isinstance(d, dict)
    assert decode_peers6(d[b"peers6"]) == [V6, ("2001:db8::9", 1)]  # type: ignore[arg-type]
    assert decode_peers4(d[b"peers"]) == [BOX, A]  # type: ignore[arg-type]


def test_dictionary_form_as_libtorrent_tests_write_it() -> None:
    body = (
        b"d8:intervali1800e5:peersl"
        b"d7:peer id20:aaaaaaaaaaaaaaaaaaaa2:ip12:198.51.100.74:porti51413ee"
        b"d7:peer id20:bbbbbbbbbbbbbbbbbbbb2:ip16:peer.example.org4:porti1002ee"
        b"ee"
    )
    out = rewrite_tracker_response(body, BOX)
    assert out is not None
    d = bdecode(out)
    assert isinstance(d, dict)
    assert d[b"peers"] == [
        {b"ip": b"100.64.0.1", b"port": 6881},
        {b"peer id": b"a" * 20, b"ip": b"198.51.100.7", b"port": 51413},
        {b"peer id": b"b" * 20, b"ip": b"peer.example.org", b"port": 1002},
    ]
    assert parse_announce_response(out).peers[0] == BOX
    assert rewrite_tracker_response(out, BOX) is None


def test_dictionary_form_dedupes_a_differently_spelled_box() -> None:
    body = bencode(
        {
            b"interval": 60,
            b"peers": [
                {b"ip": b"198.51.100.7", b"port": 1},
                {b"ip": b"100.64.0.1", b"port": 6881, b"peer id": b"x" * 20},
            ],
        }
    )
    out = rewrite_tracker_response(body, BOX)
    assert out is not None
    assert parse_announce_response(out).peers == (BOX, ("198.51.100.7", 1))


def test_unsorted_keys_and_trailing_newline_are_accepted_and_output_is_canonical() -> None:
    body = b"d5:peers6:" + encode_peers4([A]) + b"8:intervali900e8:completei1ee\r\n"
    out = rewrite_tracker_response(body, BOX)
    assert out is not None
    assert out == bencode({b"complete": 1, b"interval": 900, b"peers": encode_peers4([BOX, A])})
    bdecode(out)  # strict decoder: sorted keys, nothing trailing


def test_empty_swarm_without_peers_key_gets_the_box() -> None:
    out = rewrite_tracker_response(b"d8:intervali1800ee", BOX)
    assert out is not None
    assert parse_announce_response(out).peers == (BOX,)


def test_non_announce_bencode_is_untouched() -> None:
    scrape = bencode({b"files": {b"x" * 20: {b"complete": 1, b"incomplete": 2}}})
    assert rewrite_tracker_response(scrape, BOX) is None
    assert rewrite_tracker_response(bencode([1, 2]), BOX) is None


def test_failure_reason_is_untouched() -> None:
    body = bencode({b"failure reason": b"unregistered torrent", b"peers": b""})
    assert rewrite_tracker_response(body, BOX) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b"d8:intervali1800e5:peers7:abcdefge",  # not a multiple of 6
        b"d8:intervali1800e5:peersi3ee",  # peers is an integer
        b"d8:intervali1800e5:peersld2:ip7:1.2.3.4eee",  # no port
        b"d8:intervali1800e5:peersli1eee",  # list item not a dict
        b"d8:intervali1800e5:peers0:e junk",
        b"d8:intervali1800e8:intervali1ee",  # duplicate key
    ],
)
def test_garbage_is_untouched(body: bytes) -> None:
    assert rewrite_tracker_response(body, BOX) is None


def test_every_truncation_is_untouched() -> None:
    body = opentracker_reply([A, B, C])
    for cut in range(len(body)):
        assert rewrite_tracker_response(body[:cut], BOX) is None, cut


def test_huge_body_is_untouched() -> None:
    peers = encode_peers4([A]) * 200
    body = bencode({b"interval": 1, b"peers": peers, b"pad": b"x" * 3000})
    assert rewrite_tracker_response(body, BOX, max_size=len(body) - 1) is None
    assert rewrite_tracker_response(body, BOX, max_size=len(body) + 6) is not None
    assert rewrite_tracker_response(b"d3:pad" + b"3000001:" + b"x" * 3_000_001 + b"e", BOX) is None


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", " GZIP "])
def test_gzip_round_trip(encoding: str) -> None:
    plain = opentracker_reply([A, B])
    out = rewrite_tracker_response(gzip.compress(plain), BOX, content_encoding=encoding)
    assert out is not None
    assert out[:2] == b"\x1f\x8b"
    assert gzip.decompress(out) == rewrite_tracker_response(plain, BOX)
    # Deterministic (mtime 0) and idempotent through the gzip layer too.
    assert out == rewrite_tracker_response(
        gzip.compress(plain, mtime=5), BOX, content_encoding=encoding
    )
    assert rewrite_tracker_response(out, BOX, content_encoding=encoding) is None


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, gzip", "compress"])
def test_other_encodings_are_untouched(encoding: str) -> None:
    assert rewrite_tracker_response(opentracker_reply([A]), BOX, content_encoding=encoding) is None


def test_bad_gzip_is_untouched() -> None:
    packed = gzip.compress(opentracker_reply([A, B]))
    assert rewrite_tracker_response(packed[:-5], BOX, content_encoding="gzip") is None
    assert rewrite_tracker_response(packed + b"junk", BOX, content_encoding="gzip") is None
    assert rewrite_tracker_response(packed + packed, BOX, content_encoding="gzip") is None
    assert rewrite_tracker_response(opentracker_reply([A]), BOX, content_encoding="gzip") is None


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"d3:pad" + b"5000000:" + b"\0" * 5_000_000 + b"e")
    assert len(bomb) < 10_000
    assert rewrite_tracker_response(bomb, BOX, content_encoding="gzip") is None
    assert peers_in_tracker_response(bomb, "gzip") == []


def test_bad_box_is_our_bug_even_on_garbage() -> None:
    for box in [("2001:db8::1", 1), ("not an ip", 1), ("1.2.3.4", 0), ("1.2.3.4", 70000)]:
        with pytest.raises(LocalProtocolError):
            rewrite_tracker_response(b"garbage", box)
        with pytest.raises(LocalProtocolError):
            rewrite_udp_announce_response(b"garbage", box)
        with pytest.raises(LocalProtocolError):
            rewrite_get_peers_response(b"garbage", box)


@given(st.binary(max_size=300), st.sampled_from([None, "gzip"]))
def test_random_bytes_never_raise(data: bytes, encoding: str | None) -> None:
    rewrite_tracker_response(data, BOX, content_encoding=encoding)
    assert isinstance(peers_in_tracker_response(data, encoding), list)


@given(peer_lists, st.booleans())
def test_compact_rewrite_property(peers: list[tuple[str, int]], gz: bool) -> None:
    body = opentracker_reply(peers)
    enc = "gzip" if gz else None
    out = rewrite_tracker_response(gzip.compress(body) if gz else body, BOX, content_encoding=enc)
    others = [p for p in peers if p != BOX]
    if peers[:1] == [BOX] and peers.count(BOX) == 1:
        assert out is None
        return
    assert out is not None
    plain = gzip.decompress(out) if gz else out
    assert list(parse_announce_response(plain).peers) == [BOX, *others]
    assert rewrite_tracker_response(out, BOX, content_encoding=enc) is None


def test_peers_in_tracker_response() -> None:
    body = bencode(
        {
            b"interval": 60,
            b"peers": [
                {b"ip": b"198.51.100.7", b"port": 51413},
                {b"ip": b"tracker-named.example", b"port": 1},
            ],
            b"peers6": encode_peers6([V6]),
        }
    )
    assert peers_in_tracker_response(body) == [A, V6]
    assert peers_in_tracker_response(gzip.compress(opentracker_reply([A, B])), "gzip") == [A, B]
    assert peers_in_tracker_response(b"d14:failure reason3:nope") == []
    assert peers_in_tracker_response(opentracker_reply([A]), "br") == []


# --- UDP tracker replies (BEP 15) -----------------------------------------------------------


def udp_reply(peers: list[tuple[str, int]], tid: int = 0xDEADBEEF) -> bytes:
    return encode_announce_response(tid, 1800, 7, 3, peers, ipv6=False)


def test_udp_reply_vector() -> None:
    payload = struct.pack("!IIiii", 1, 0x01020304, 1800, 5, 2) + bytes(
        [198, 51, 100, 7, 0xC8, 0xD5]
    )
    out = rewrite_udp_announce_response(payload, BOX)
    assert out == (
        struct.pack("!IIiii", 1, 0x01020304, 1800, 5, 2)
        + bytes([100, 64, 0, 1, 0x1A, 0xE1])
        + bytes([198, 51, 100, 7, 0xC8, 0xD5])
    )


def test_udp_reply_round_trip_keeps_header() -> None:
    out = rewrite_udp_announce_response(udp_reply([A, BOX, B]), BOX)
    assert out is not None
    resp = decode_announce_response(out)
    assert (resp.transaction_id, resp.interval, resp.leechers, resp.seeders) == (
        0xDEADBEEF,
        1800,
        7,
        3,
    )
    assert resp.peers == (BOX, A, B)
    assert rewrite_udp_announce_response(out, BOX) is None
    assert peers_in_udp_announce_response(out) == [BOX, A, B]


def test_udp_empty_reply_gets_the_box() -> None:
    out = rewrite_udp_announce_response(udp_reply([]), BOX)
    assert out is not None
    assert decode_announce_response(out).peers == (BOX,)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        struct.pack("!II", 1, 5),  # opentracker's 8-byte refusal
        encode_packet(ConnectResponse(5, 99)),
        encode_packet(ErrorResponse(5, "torrent not registered")),
        udp_reply([A]) + b"\x01",  # peer array not a multiple of 6
        udp_reply([A])[:19],
    ],
)
def test_udp_non_announce_is_untouched(payload: bytes) -> None:
    assert rewrite_udp_announce_response(payload, BOX) is None
    assert peers_in_udp_announce_response(payload) == []


def test_udp_reply_never_grows_past_one_packet() -> None:
    full = udp_reply([(f"10.0.{i // 250}.{i % 250}", 1000 + i) for i in range(242)])
    assert len(full) == 1472
    out = rewrite_udp_announce_response(full, BOX)
    assert out is not None and len(out) == 1472
    peers = decode_announce_response(out).peers
    assert peers[0] == BOX and peers[1:] == decode_announce_response(full).peers[:-1]
    # Below the limit it just grows by one entry.
    almost = udp_reply([A] * 241)
    out2 = rewrite_udp_announce_response(almost, BOX)
    assert out2 is not None and len(out2) == len(almost) + 6


@given(st.binary(max_size=200))
def test_udp_random_bytes_never_raise(data: bytes) -> None:
    out = rewrite_udp_announce_response(data, BOX)
    if out is not None:
        assert decode_announce_response(out).peers[0] == BOX


@given(peer_lists, st.integers(0, (1 << 32) - 1))
def test_udp_rewrite_property(peers: list[tuple[str, int]], tid: int) -> None:
    out = rewrite_udp_announce_response(udp_reply(peers, tid), BOX)
    if peers[:1] == [BOX] and peers.count(BOX) == 1:
        assert out is None
        return
    assert out is not None
    resp = decode_announce_response(out)
    assert resp.transaction_id == tid
    assert list(resp.peers) == [BOX, *(p for p in peers if p != BOX)]


def test_parse_udp_announce_request() -> None:
    req = AnnounceRequestPacket(
        connection_id=1,
        transaction_id=77,
        info_hash=b"i" * 20,
        peer_id=b"p" * 20,
        downloaded=0,
        left=10,
        uploaded=0,
        event=2,
        ip=0,
        key=1,
        num_want=-1,
        port=6881,
    )
    got = parse_udp_announce_request(encode_packet(req))
    assert got == req
    assert parse_udp_announce_request(udp_reply([A])) is None
    assert parse_udp_announce_request(b"\x00" * 16) is None


# --- DHT (BEP 5) ----------------------------------------------------------------------------

# The examples of BEP 5, byte for byte.
PING_Q = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
PING_R = b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re"
FIND_NODE_Q = (
    b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe"
)
FIND_NODE_R = b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re"
GET_PEERS_Q = (
    b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e"
    b"1:q9:get_peers1:t2:aa1:y1:qe"
)
GET_PEERS_VALUES = (
    b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re"
)
GET_PEERS_NODES = (
    b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re"
)
ANNOUNCE_Q = (
    b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz123456"
    b"4:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe"
)
ERROR = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"


def test_bep5_queries() -> None:
    assert parse_krpc(PING_Q) == KrpcMessage(
        transaction_id=b"aa", kind="q", method="ping", node_id=b"abcdefghij0123456789"
    )
    assert parse_krpc(FIND_NODE_Q) == KrpcMessage(
        transaction_id=b"aa", kind="q", method="find_node", node_id=b"abcdefghij0123456789"
    )
    assert parse_krpc(GET_PEERS_Q) == KrpcMessage(
        transaction_id=b"aa",
        kind="q",
        method="get_peers",
        info_hash=b"mnopqrstuvwxyz123456",
        node_id=b"abcdefghij0123456789",
    )
    ann = parse_krpc(ANNOUNCE_Q)
    assert ann is not None
    assert (ann.method, ann.info_hash, ann.token, ann.port) == (
        "announce_peer",
        b"mnopqrstuvwxyz123456",
        b"aoeusnth",
        None,  # implied_port: the UDP source port counts
    )
    explicit = parse_krpc(ANNOUNCE_Q.replace(b"implied_porti1e", b"implied_porti0e"))
    assert explicit is not None and explicit.port == 6881


def test_bep5_responses_and_error() -> None:
    assert parse_krpc(PING_R) == KrpcMessage(
        transaction_id=b"aa", kind="r", node_id=b"mnopqrstuvwxyz123456"
    )
    found = parse_krpc(FIND_NODE_R)
    assert found is not None and found.kind == "r" and found.token is None
    values = parse_krpc(GET_PEERS_VALUES)
    assert values == KrpcMessage(
        transaction_id=b"aa",
        kind="r",
        node_id=b"abcdefghij0123456789",
        values=(("97.120.106.101", 11893), ("105.100.104.116", 28269)),
        token=b"aoeusnth",
    )
    nodes = parse_krpc(GET_PEERS_NODES)
    assert nodes is not None and nodes.values == () and nodes.token == b"aoeusnth"
    real_nodes = bencode({b"t": b"aa", b"y": b"r", b"r": {b"id": b"i" * 20, b"nodes": b"n" * 52}})
    assert parse_krpc(real_nodes) == KrpcMessage(
        transaction_id=b"aa", kind="r", node_id=b"i" * 20, nodes=2
    )
    assert parse_krpc(ERROR) == KrpcMessage(
        transaction_id=b"aa", kind="e", error=(201, "A Generic Error Ocurred")
    )
    assert peers_in_get_peers_response(GET_PEERS_VALUES) == [
        ("97.120.106.101", 11893),
        ("105.100.104.116", 28269),
    ]
    assert peers_in_get_peers_response(GET_PEERS_Q) == []


def test_unsorted_krpc_keys_accepted() -> None:
    unsorted = b"d1:t2:aa1:y1:r1:rd5:token2:tk2:id20:abcdefghij0123456789ee"
    msg = parse_krpc(unsorted)
    assert msg is not None and msg.token == b"tk"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"le",
        b"d1:t2:aa1:y1:qe",  # query without q and a
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe",  # no t
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:ti1e1:y1:qe",  # t not a string
        b"d1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:xe",  # unknown y
        b"d1:rd2:id3:abce1:t2:aa1:y1:re",  # short node id
        GET_PEERS_Q.replace(b"info_hash20:mnopqrstuvwxyz123456", b"info_hash3:abc"),
        GET_PEERS_Q.replace(b"9:info_hash", b"9:info_hasx"),  # get_peers without info_hash
        GET_PEERS_VALUES.replace(b"6:axje.u", b"5:axje."),  # 5-byte value
        GET_PEERS_VALUES.replace(b"6:valuesl", b"6:valuesli5e").replace(b"idhtnmee", b"idhtnmee"),
        b"d1:eli201ee1:t2:aa1:y1:ee",  # error without message
        PING_Q + b"x",  # trailing bytes
        b"l" * 5000 + b"e" * 5000,  # deep nesting
        b"d1:t2:aa1:y1:r1:r99999999:x",  # absurd length
        b"d1:t2:aa1:y1:r1:rd5:token2:tk3:pad9000:" + b"x" * 9000 + b"ee",  # over 8 KiB
    ],
)
def test_bad_krpc_is_none(payload: bytes) -> None:
    assert parse_krpc(payload) is None
    assert rewrite_get_peers_response(payload, BOX) is None


@given(st.binary(max_size=400))
def test_krpc_random_bytes_never_raise(data: bytes) -> None:
    parse_krpc(data)
    rewrite_get_peers_response(data, BOX)


@given(st.binary(max_size=200))
def test_krpc_mutated_vectors_never_raise(noise: bytes) -> None:
    for vector in (GET_PEERS_VALUES, GET_PEERS_NODES, ANNOUNCE_Q, ERROR):
        cut = len(noise) % len(vector)
        mutated = vector[:cut] + noise + vector[cut + len(noise) :]
        parse_krpc(mutated)
        out = rewrite_get_peers_response(mutated, BOX)
        if out is not None:
            parsed = parse_krpc(out)
            assert parsed is not None and parsed.values[0] == BOX


def test_rewrite_values_reply_keeps_every_other_key() -> None:
    reply: dict[bytes, Any] = {
        b"t": b"\x01\x02",
        b"y": b"r",
        b"v": b"LT\x01\x02",
        b"ip": encode_peers4([("203.0.113.50", 6881)]),
        b"r": {
            b"id": b"i" * 20,
            b"token": b"tok",
            b"values": [encode_peers4([A]), encode_peers4([B])],
            b"nodes": b"n" * 26,
            b"nodes6": b"m" * 38,
            b"x-unknown": {b"deep": [1, 2]},
        },
    }
    out = rewrite_get_peers_response(bencode(reply), BOX)
    assert out is not None
    got = bdecode(out)
    assert isinstance(got, dict)
    r = got.pop(b"r")
    want_r = reply.pop(b"r")
    assert isinstance(r, dict) and isinstance(want_r, dict)
    assert got == reply
    assert r.pop(b"values") == [BOX_ENTRY, encode_peers4([A]), encode_peers4([B])]
    del want_r[b"values"]
    assert r == want_r
    assert rewrite_get_peers_response(out, BOX) is None


def test_rewrite_bep5_values_vector() -> None:
    out = rewrite_get_peers_response(GET_PEERS_VALUES, BOX)
    assert out == GET_PEERS_VALUES.replace(b"6:valuesl", b"6:valuesl6:" + BOX_ENTRY)


def test_nodes_only_reply_gets_values_by_default() -> None:
    out = rewrite_get_peers_response(GET_PEERS_NODES, BOX)
    assert out is not None
    parsed = parse_krpc(out)
    assert parsed is not None and parsed.values == (BOX,) and parsed.token == b"aoeusnth"
    assert as_dict(out)[b"r"][b"nodes"] == b"def456..."
    assert rewrite_get_peers_response(GET_PEERS_NODES, BOX, add_to_nodes_reply=False) is None


def test_rewrite_only_get_peers_replies() -> None:
    for payload in (PING_R, FIND_NODE_R, PING_Q, GET_PEERS_Q, ANNOUNCE_Q, ERROR):
        assert rewrite_get_peers_response(payload, BOX) is None


def test_rewrite_dedupes_box() -> None:
    reply = bencode(
        {
            b"t": b"aa",
            b"y": b"r",
            b"r": {b"token": b"t", b"values": [encode_peers4([A]), BOX_ENTRY]},
        }
    )
    out = rewrite_get_peers_response(reply, BOX)
    assert out is not None
    assert peers_in_get_peers_response(out) == [BOX, A]


def test_rewrite_keeps_reply_within_one_packet() -> None:
    values: list[Any] = [
        encode_peers4([(f"10.1.{i // 200}.{i % 200}", 2000 + i)]) for i in range(300)
    ]
    reply = bencode(
        {b"t": b"aa", b"y": b"r", b"r": {b"id": b"i" * 20, b"token": b"t", b"values": values}}
    )
    assert len(reply) > 1472
    # Over 1472 already: it must not grow at all.
    out = rewrite_get_peers_response(reply, BOX)
    assert out is not None and len(out) <= len(reply)
    got = peers_in_get_peers_response(out)
    assert got[0] == BOX and got[1:] == decode_peers4(b"".join(values))[: len(got) - 1]

    # Small reply near the limit: kept within 1472.
    def padded(n: int) -> bytes:
        r = {b"token": b"t", b"values": values[:10], b"pad": b"x" * n}
        return bencode({b"t": b"aa", b"y": b"r", b"r": r})  # type: ignore[dict-item]

    small = next(p for p in map(padded, range(1500, 0, -1)) if len(p) <= 1470)
    assert 1464 < len(small) <= 1472 < len(small) + 8
    out2 = rewrite_get_peers_response(small, BOX)
    assert out2 is not None and len(out2) <= 1472
    assert peers_in_get_peers_response(out2)[0] == BOX


@settings(max_examples=200)
@given(peer_lists, st.binary(min_size=1, max_size=20), st.booleans())
def test_get_peers_rewrite_property(
    peers: list[tuple[str, int]], token: bytes, with_nodes: bool
) -> None:
    r: dict[bytes, object] = {b"id": b"i" * 20, b"token": token}
    if peers:
        r[b"values"] = [encode_peers4([p]) for p in peers]
    if with_nodes or not peers:
        r[b"nodes"] = b"n" * 26
    payload = bencode({b"t": b"xy", b"y": b"r", b"r": r})  # type: ignore[dict-item]
    out = rewrite_get_peers_response(payload, BOX)
    if peers[:1] == [BOX] and peers.count(BOX) == 1:
        assert out is None
        return
    assert out is not None
    parsed = parse_krpc(out)
    assert parsed is not None
    assert list(parsed.values) == [BOX, *(p for p in peers if p != BOX)]
    assert parsed.token == token and parsed.transaction_id == b"xy"
    assert rewrite_get_peers_response(out, BOX) is None


# --- DhtQueryTable --------------------------------------------------------------------------

SUB = ("100.64.5.5", 6881)
NODE = ("198.51.100.1", 6881)
IH = b"h" * 20


def test_query_table_matches_once() -> None:
    t = DhtQueryTable()
    t.note_query(SUB, NODE, b"aa", IH, now=0.0)
    assert t.match_reply(SUB, ("198.51.100.2", 6881), b"aa", now=1.0) is None
    assert t.match_reply(SUB, NODE, b"ab", now=1.0) is None
    assert t.match_reply(("100.64.5.6", 6881), NODE, b"aa", now=1.0) is None
    assert t.match_reply(SUB, NODE, b"aa", now=1.0) == IH
    assert t.match_reply(SUB, NODE, b"aa", now=1.0) is None
    assert len(t) == 0


def test_query_table_expiry() -> None:
    t = DhtQueryTable(ttl=30.0)
    t.note_query(SUB, NODE, b"aa", IH, now=0.0)
    assert t.match_reply(SUB, NODE, b"aa", now=30.0) is None
    t.note_query(SUB, NODE, b"bb", IH, now=100.0)
    t.note_query(SUB, NODE, b"cc", IH, now=120.0)
    t.expire(131.0)
    assert len(t) == 1
    assert t.match_reply(SUB, NODE, b"cc", now=131.0) == IH


def test_query_table_renote_refreshes() -> None:
    t = DhtQueryTable(ttl=30.0)
    t.note_query(SUB, NODE, b"aa", b"1" * 20, now=0.0)
    t.note_query(SUB, NODE, b"aa", b"2" * 20, now=20.0)
    assert len(t) == 1
    assert t.match_reply(SUB, NODE, b"aa", now=45.0) == b"2" * 20


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=300))
def test_query_table_bounds(ops: list[tuple[int, int]]) -> None:
    t = DhtQueryTable(max_entries=16, ttl=30.0)
    now = 0.0
    latest: dict[bytes, float] = {}
    for tid, step in ops:
        now += step
        key = tid.to_bytes(2, "big")
        t.note_query(SUB, NODE, key, IH, now)
        latest[key] = now
        assert len(t) <= 16
    # The most recent query is always still there.
    if ops:
        key = ops[-1][0].to_bytes(2, "big")
        assert t.match_reply(SUB, NODE, key, now) == IH


def test_query_table_drops_oldest_when_full() -> None:
    t = DhtQueryTable(max_entries=3)
    for i in range(5):
        t.note_query(SUB, NODE, bytes([i]), IH, now=float(i))
    assert len(t) == 3
    assert t.match_reply(SUB, NODE, b"\x00", now=5.0) is None
    assert t.match_reply(SUB, NODE, b"\x01", now=5.0) is None
    assert t.match_reply(SUB, NODE, b"\x04", now=5.0) == IH


def test_max_krpc_size_constant() -> None:
    at_limit = bencode({b"t": b"aa", b"y": b"r", b"r": {b"token": b"t", b"pad": b""}})
    pad = MAX_KRPC_SIZE - len(at_limit)
    ok = bencode({b"t": b"aa", b"y": b"r", b"r": {b"token": b"t", b"pad": b"x" * (pad - 3)}})
    assert len(ok) <= MAX_KRPC_SIZE and parse_krpc(ok) is not None
    big = bencode({b"t": b"aa", b"y": b"r", b"r": {b"token": b"t", b"pad": b"x" * pad}})
    assert len(big) > MAX_KRPC_SIZE and parse_krpc(big) is None
