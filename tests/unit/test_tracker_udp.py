"""Tests for swarm.tracker_udp: BEP 15 packet codecs and the announce state machine."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.tracker_http import (
    AnnounceRequest,
    AnnounceResponse,
    TrackerFailure,
    TrackerResponseError,
    TrackerUnreachable,
)
from swarm.tracker_udp import (
    PROTOCOL_ID,
    AnnounceRequestPacket,
    AnnounceResponsePacket,
    ConnectRequest,
    ConnectResponse,
    ErrorResponse,
    ScrapeEntry,
    ScrapeRequest,
    ScrapeResponse,
    UdpAnnounce,
    UdpConnection,
    decode_announce_response,
    decode_request,
    decode_response,
    encode_announce_response,
    encode_packet,
)

u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)
i32 = st.integers(-(1 << 31), (1 << 31) - 1)
hash20 = st.binary(min_size=20, max_size=20)
port = st.integers(0, 65535)
peer4 = st.tuples(st.ip_addresses(v=4).map(str), port)

connect_requests = st.builds(ConnectRequest, u32)
connect_responses = st.builds(ConnectResponse, u32, u64)
announce_requests = st.builds(
    AnnounceRequestPacket,
    connection_id=u64,
    transaction_id=u32,
    info_hash=hash20,
    peer_id=hash20,
    downloaded=u64,
    left=u64,
    uploaded=u64,
    event=st.integers(0, 3),
    ip=u32,
    key=u32,
    num_want=i32,
    port=port,
    options=st.binary(max_size=30),
)
announce_responses4 = st.builds(
    AnnounceResponsePacket, u32, i32, i32, i32, st.lists(peer4, max_size=30).map(tuple)
)
scrape_requests = st.builds(
    ScrapeRequest, u64, u32, st.lists(hash20, min_size=1, max_size=74).map(tuple)
)
scrape_responses = st.builds(
    ScrapeResponse,
    u32,
    st.lists(st.builds(ScrapeEntry, i32, i32, i32), max_size=74).map(tuple),
)
error_responses = st.builds(ErrorResponse, u32, st.text(max_size=100))


# --- codec: vectors -------------------------------------------------------------------------


def test_connect_request_vector() -> None:
    raw = encode_packet(ConnectRequest(0x01020304))
    assert raw == bytes.fromhex("00000417271019800000000001020304")
    assert PROTOCOL_ID == 0x41727101980
    assert decode_request(raw) == ConnectRequest(0x01020304)


def test_announce_request_layout() -> None:
    p = AnnounceRequestPacket(
        connection_id=7, transaction_id=9, info_hash=b"I" * 20, peer_id=b"P" * 20,
        downloaded=1, left=2, uploaded=3, event=2, ip=0, key=0xAABBCCDD, num_want=-1, port=6881,
    )  # fmt: skip
    raw = encode_packet(p)
    assert len(raw) == 98
    assert struct.unpack_from("!QII", raw) == (7, 1, 9)
    assert raw[16:36] == b"I" * 20 and raw[36:56] == b"P" * 20
    assert struct.unpack_from("!QQQIIIiH", raw, 56) == (1, 2, 3, 2, 0, 0xAABBCCDD, -1, 6881)


def test_announce_response_vector_and_rewrite() -> None:
    raw = bytes.fromhex("000000010000002a0000070800000002000000037f0000011ae1")
    pkt = decode_announce_response(raw)
    assert pkt == AnnounceResponsePacket(42, 1800, 2, 3, (("127.0.0.1", 6881),))
    # The interceptor's use: add a peer, keep the transaction id and everything else.
    rewritten = encode_announce_response(
        pkt.transaction_id, pkt.interval, pkt.leechers, pkt.seeders,
        (("10.9.9.9", 6881), *pkt.peers),
    )  # fmt: skip
    assert rewritten == raw[:20] + b"\x0a\x09\x09\x09\x1a\xe1" + raw[20:]


def test_announce_response_ipv6_flag_decides_entry_size() -> None:
    raw = encode_announce_response(1, 2, 3, 4, [("2001:db8::1", 1), ("::1", 2)])
    assert len(raw) == 20 + 36
    assert decode_announce_response(raw, ipv6=True).peers == (("2001:db8::1", 1), ("::1", 2))
    # The same 36 bytes read as IPv4 are six peers: the flag, not the length, decides.
    assert len(decode_announce_response(raw).peers) == 6
    assert decode_response(raw, ipv6=True) == decode_announce_response(raw, ipv6=True)


def test_error_response_vector() -> None:
    raw = bytes.fromhex("0000000300000007") + b"Connection ID missmatch.\x00"
    assert decode_response(raw) == ErrorResponse(7, "Connection ID missmatch.\x00")


# --- codec: round trips ---------------------------------------------------------------------


@given(connect_requests | announce_requests | scrape_requests)
def test_request_round_trip(packet: ConnectRequest | AnnounceRequestPacket | ScrapeRequest) -> None:
    assert decode_request(encode_packet(packet)) == packet


@given(connect_responses | announce_responses4 | scrape_responses | error_responses)
def test_response_round_trip(
    packet: ConnectResponse | AnnounceResponsePacket | ScrapeResponse | ErrorResponse,
) -> None:
    assert decode_response(encode_packet(packet)) == packet


@given(u32, i32, i32, i32, st.lists(st.tuples(st.ip_addresses(v=6), port), max_size=10))
def test_announce_response6_round_trip(
    tid: int, interval: int, leechers: int, seeders: int, peers: list[tuple[object, int]]
) -> None:
    raw = encode_announce_response(
        tid, interval, leechers, seeders, [(str(a), p) for a, p in peers]
    )
    pkt = decode_announce_response(raw, ipv6=True)
    assert (pkt.transaction_id, pkt.interval, pkt.leechers, pkt.seeders) == (
        tid, interval, leechers, seeders,
    )  # fmt: skip
    assert encode_packet(pkt, ipv6=True) == raw


# --- codec: hostile input -------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_random_responses_raise_only_tracker_response_error(raw: bytes) -> None:
    for ipv6 in (False, True):
        try:
            pkt = decode_response(raw, ipv6=ipv6)
        except TrackerResponseError as exc:
            assert str(exc).startswith("udp tracker response:")
            continue
        assert encode_packet(pkt, ipv6=ipv6) == raw or isinstance(
            pkt, ErrorResponse | ConnectResponse
        )


@given(st.binary(max_size=200))
def test_random_requests_raise_only_remote_protocol_error(raw: bytes) -> None:
    try:
        pkt = decode_request(raw)
    except RemoteProtocolError as exc:
        assert str(exc).startswith("udp tracker request:")
        return
    if not isinstance(pkt, ConnectRequest):  # a connect request may carry ignored extra bytes
        assert encode_packet(pkt) == raw


@given(announce_requests | scrape_requests, st.data())
def test_truncated_requests_are_rejected(
    packet: AnnounceRequestPacket | ScrapeRequest, data: st.DataObject
) -> None:
    raw = encode_packet(packet)
    fixed = 98 if isinstance(packet, AnnounceRequestPacket) else len(raw)
    cut = data.draw(st.integers(0, fixed - 1))
    if isinstance(packet, ScrapeRequest) and cut >= 16 and (cut - 16) % 20 == 0 and cut > 16:
        return  # a shorter scrape with fewer hashes is still a valid scrape
    with pytest.raises(RemoteProtocolError):
        decode_request(raw[:cut])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00" * 15, "15 bytes, shorter than 16"),
        (struct.pack("!QII", 0x1234, 0, 1), "connect with protocol id 0x1234"),
        (struct.pack("!QII", 1, 9, 1), "unknown action 9"),
        (struct.pack("!QII", 1, 1, 1) + b"\x00" * 81, "announce of 97 bytes, shorter than 98"),
        (struct.pack("!QII", 1, 2, 1), "0 bytes of info hashes"),
        (struct.pack("!QII", 1, 2, 1) + b"h" * 21, "21 bytes of info hashes"),
        (struct.pack("!QII", 1, 2, 1) + b"h" * 20 * 75, "scrape of 75 hashes"),
    ],
)
def test_bad_requests(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_request(raw)


def test_unknown_event_code_rejected() -> None:
    raw = bytearray(encode_packet(_announce_packet()))
    raw[80:84] = (4).to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError, match="unknown announce event 4"):
        decode_request(bytes(raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00\x00\x00\x00\x00\x00", "7 bytes, shorter than 8"),
        (struct.pack("!II", 0, 5) + b"\x00" * 7, "connect of 15 bytes, shorter than 16"),
        (struct.pack("!II", 1, 5) + b"\x00" * 11, "announce of 19 bytes, shorter than 20"),
        (
            struct.pack("!IIiii", 1, 5, 1, 1, 1) + b"\x00" * 7,
            "7 bytes of peers, not a multiple of 6",
        ),
        (struct.pack("!II", 2, 5) + b"\x00" * 13, "13 bytes of entries, not a multiple of 12"),
        (struct.pack("!II", 4, 5), "unknown action 4"),
    ],
)
def test_bad_responses(raw: bytes, message: str) -> None:
    with pytest.raises(TrackerResponseError, match=message):
        decode_response(raw)


def test_decode_announce_response_rejects_other_actions() -> None:
    with pytest.raises(TrackerResponseError, match="action 0, not announce"):
        decode_announce_response(encode_packet(ConnectResponse(1, 2)) + b"\x00" * 4)


@pytest.mark.parametrize(
    "packet",
    [
        ConnectRequest(1 << 32),
        ConnectResponse(1, 1 << 64),
        AnnounceResponsePacket(1, 1 << 31, 0, 0, ()),
        AnnounceResponsePacket(1, 1, 0, 0, (("1.2.3.4", 70000),)),
        ScrapeRequest(1, 1, (b"short",)),
        ScrapeResponse(-1, ()),
    ],
)
def test_encode_rejects_values_that_do_not_fit(packet: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_packet(packet)  # type: ignore[arg-type]


def test_encode_rejects_bad_announce_hash_and_non_packets() -> None:
    p = _announce_packet()
    with pytest.raises(LocalProtocolError, match="info_hash must be 20 bytes"):
        encode_packet(dataclasses.replace(p, info_hash=b"x"))
    with pytest.raises(LocalProtocolError, match="is not a packet"):
        encode_packet("hello")  # type: ignore[arg-type]


def _announce_packet() -> AnnounceRequestPacket:
    return AnnounceRequestPacket(1, 2, b"i" * 20, b"p" * 20, 0, 0, 0, 0, 0, 0, -1, 1)


# --- the state machine, driven by scripts ---------------------------------------------------


class Script:
    """An rng that hands out the transaction ids a test chose."""

    def __init__(self, values: Iterable[int]) -> None:
        self._values = iter(values)

    def getrandbits(self, k: int, /) -> int:
        assert k == 32
        return next(self._values)


REQ = AnnounceRequest(
    info_hash=b"\x11" * 20, peer_id=b"-SC0001-abcdefghijkl", port=51413,
    uploaded=10, downloaded=20, left=30, event="completed", numwant=-1, key=0x1234, ip="10.0.0.5",
)  # fmt: skip


def connect_reply(tid: int, cid: int = 0xC0FFEE) -> bytes:
    return encode_packet(ConnectResponse(tid, cid))


def announce_reply(tid: int, *peers: tuple[str, int], interval: int = 1800) -> bytes:
    return encode_announce_response(tid, interval, 4, 5, peers)


def test_happy_path() -> None:
    m = UdpAnnounce(REQ, rng=Script([100, 200]), base_timeout=15)
    first = m.start(now=0.0)
    assert decode_request(first) == ConnectRequest(100)
    assert m.next_timeout() == 15.0
    second = m.receive(connect_reply(100), now=0.5)
    assert isinstance(second, bytes)
    pkt = decode_request(second)
    assert pkt == AnnounceRequestPacket(
        connection_id=0xC0FFEE, transaction_id=200, info_hash=b"\x11" * 20,
        peer_id=b"-SC0001-abcdefghijkl", downloaded=20, left=30, uploaded=10, event=1,
        ip=0x0A000005, key=0x1234, num_want=-1, port=51413,
    )  # fmt: skip
    assert m.connection == UdpConnection(0xC0FFEE, 0.5)
    assert m.next_timeout() == 15.5  # n restarts at 0 for the announce step
    result = m.receive(announce_reply(200, ("1.2.3.4", 6881)), now=1.0)
    assert result == AnnounceResponse(1800, None, (("1.2.3.4", 6881),), 5, 4, None, None)
    assert m.done
    assert m.receive(announce_reply(200), now=2.0) is None  # a duplicate after the end


@pytest.mark.parametrize("event", [None, "started", "stopped"])
def test_event_codes(event: str | None) -> None:
    req = AnnounceRequest(b"a" * 20, b"b" * 20, 1, 0, 0, 0, event)  # type: ignore[arg-type]
    m = UdpAnnounce(req, rng=Script([1, 2]))
    m.start(0)
    out = m.receive(connect_reply(1), 0)
    assert isinstance(out, bytes)
    pkt = decode_request(out)
    assert isinstance(pkt, AnnounceRequestPacket)
    assert pkt.event == {None: 0, "started": 2, "stopped": 3}[event]
    assert (pkt.num_want, pkt.key, pkt.ip) == (200, 0, 0)  # AnnounceRequest defaults


def test_ipv6_ip_field_left_zero_and_ipv6_peers() -> None:
    req = AnnounceRequest(b"a" * 20, b"b" * 20, 1, 0, 0, 0, None, ip="2001:db8::5")
    m = UdpAnnounce(req, rng=Script([1, 2]), ipv6=True)
    m.start(0)
    out = m.receive(connect_reply(1), 0)
    assert isinstance(out, bytes)
    assert decode_request(out).ip == 0  # type: ignore[union-attr]
    result = m.receive(announce_reply(2, ("2001:db8::7", 9)), 0)
    assert isinstance(result, AnnounceResponse)
    assert result.peers == (("2001:db8::7", 9),)


def test_foreign_and_short_datagrams_are_ignored() -> None:
    m = UdpAnnounce(REQ, rng=Script([100, 200]))
    m.start(0)
    assert m.receive(connect_reply(101), 1) is None  # another transaction
    assert m.receive(b"\x00\x00\x00\x00\x00\x00\x00", 1) is None  # too short for an id
    assert m.receive(b"", 1) is None
    assert isinstance(m.receive(connect_reply(100), 1), bytes)
    assert m.receive(connect_reply(100), 1) is None  # the connect id is spent
    assert m.receive(announce_reply(100), 1) is None
    assert isinstance(m.receive(announce_reply(200), 1), AnnounceResponse)


def test_retransmit_schedule_and_give_up() -> None:
    m = UdpAnnounce(REQ, rng=Script([7]), base_timeout=15)
    first = m.start(0.0)
    now, deadlines = 0.0, []
    for _ in range(8):
        deadlines.append(m.next_timeout())
        now = m.next_timeout()
        assert m.on_timeout(now) == first  # same datagram, same transaction id
    assert deadlines == [15.0 * (2**n - 1) for n in range(1, 9)]
    assert m.next_timeout() == deadlines[-1] + 15 * 2**8  # n = 8: 3840 s
    with pytest.raises(TrackerUnreachable, match="no reply to 9 connect attempts"):
        m.on_timeout(m.next_timeout())
    assert m.done


def test_configurable_base_and_retry_count() -> None:
    m = UdpAnnounce(REQ, rng=Script([7]), base_timeout=0.01, max_retransmits=2)
    m.start(100.0)
    assert m.next_timeout() == pytest.approx(100.01)
    m.on_timeout(100.01)
    assert m.next_timeout() == pytest.approx(100.03)
    m.on_timeout(100.03)
    with pytest.raises(TrackerUnreachable):
        m.on_timeout(100.07)


def test_late_reply_to_first_transmission_is_accepted() -> None:
    m = UdpAnnounce(REQ, rng=Script([7, 8]), base_timeout=1)
    m.start(0)
    m.on_timeout(1)
    m.on_timeout(3)
    assert isinstance(m.receive(connect_reply(7), 3.5), bytes)


def test_cached_connection_skips_connect() -> None:
    cached = UdpConnection(0xABC, obtained_at=100.0)
    m = UdpAnnounce(REQ, rng=Script([5]), connection=cached)
    pkt = decode_request(m.start(159.9))
    assert isinstance(pkt, AnnounceRequestPacket)
    assert (pkt.connection_id, pkt.transaction_id) == (0xABC, 5)
    assert isinstance(m.receive(announce_reply(5), 160.5), AnnounceResponse)


@pytest.mark.parametrize("now", [160.0, 500.0, 99.0])
def test_expired_or_future_cached_connection_is_not_used(now: float) -> None:
    m = UdpAnnounce(REQ, rng=Script([5]), connection=UdpConnection(0xABC, obtained_at=100.0))
    assert decode_request(m.start(now)) == ConnectRequest(5)


def test_connection_id_expires_during_announce_retransmits() -> None:
    m = UdpAnnounce(REQ, rng=Script([1, 2, 3, 4]), base_timeout=15)
    m.start(0)
    announce = m.receive(connect_reply(1, cid=77), 0.0)
    assert isinstance(announce, bytes)
    assert m.on_timeout(15.0) == announce  # 15 s: id still good
    assert m.on_timeout(45.0) == announce  # 45 s: still good
    reconnect = m.on_timeout(105.0)  # 105 s: older than 60 s, so a fresh connect
    assert decode_request(reconnect) == ConnectRequest(3)
    assert m.next_timeout() == 105.0 + 15 * 2**3  # the retry count carries on
    assert m.receive(announce_reply(2), 106) is None  # the old announce's reply is stale now
    fresh = m.receive(connect_reply(3, cid=78), 106)
    assert isinstance(fresh, bytes)
    assert decode_request(fresh).connection_id == 78  # type: ignore[union-attr]
    assert m.connection == UdpConnection(78, 106)


def test_error_action_raises_tracker_failure_with_the_message() -> None:
    m = UdpAnnounce(REQ, rng=Script([1, 2]))
    m.start(0)
    m.receive(connect_reply(1), 0)
    error = encode_packet(ErrorResponse(2, "Connection ID missmatch.\x00"))
    with pytest.raises(TrackerFailure) as info:
        m.receive(error, 0)
    assert info.value.reason == "Connection ID missmatch."
    assert m.done
    assert m.connection is None  # not to be reused
    with pytest.raises(LocalProtocolError):
        m.on_timeout(100)


def test_error_while_connecting() -> None:
    m = UdpAnnounce(REQ, rng=Script([1]))
    m.start(0)
    with pytest.raises(TrackerFailure, match="empty error message"):
        m.receive(encode_packet(ErrorResponse(1, "")), 0)


def test_bare_announce_header_is_a_refusal() -> None:
    # opentracker's answer for an info_hash that is not on its whitelist.
    m = UdpAnnounce(REQ, rng=Script([1, 2]))
    m.start(0)
    m.receive(connect_reply(1), 0)
    with pytest.raises(TrackerFailure, match="announce refused"):
        m.receive(struct.pack("!II", 1, 2), 0)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (announce_reply(2, interval=-1), "interval is -1, negative"),
        (encode_announce_response(2, 60, -4, 0, ()), "leechers is -4, negative"),
        (announce_reply(2, ("1.2.3.4", 0)), "peer 1.2.3.4 has port 0"),
        (announce_reply(2) + b"\x00", "1 bytes of peers, not a multiple of 6"),
        (connect_reply(2), "action 0 in reply to announce"),
    ],
)
def test_absurd_announce_replies(reply: bytes, message: str) -> None:
    m = UdpAnnounce(REQ, rng=Script([1, 2]))
    m.start(0)
    m.receive(connect_reply(1), 0)
    with pytest.raises(TrackerResponseError, match=message):
        m.receive(reply, 0)


def test_wrong_action_while_connecting() -> None:
    m = UdpAnnounce(REQ, rng=Script([1]))
    m.start(0)
    with pytest.raises(TrackerResponseError, match="action 1 in reply to connect"):
        m.receive(announce_reply(1), 0)


def test_misuse_is_local_protocol_error() -> None:
    m = UdpAnnounce(REQ, rng=Script([1, 2]))
    with pytest.raises(LocalProtocolError, match="before start"):
        m.receive(connect_reply(1), 0)
    with pytest.raises(LocalProtocolError):
        m.next_timeout()
    m.start(0)
    with pytest.raises(LocalProtocolError, match="twice"):
        m.start(0)
    with pytest.raises(LocalProtocolError, match="base_timeout"):
        UdpAnnounce(REQ, rng=Script([]), base_timeout=0)


@given(st.lists(st.binary(max_size=60), max_size=20))
def test_machine_survives_random_datagrams(datagrams: list[bytes]) -> None:
    """Random bytes either get ignored or end the exchange with a remote error, never a crash."""
    m = UdpAnnounce(REQ, rng=Script(range(1 << 20)))
    m.start(0)
    for d in datagrams:
        try:
            m.receive(d, 1)
        except RemoteProtocolError:
            assert m.done
            return
