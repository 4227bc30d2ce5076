"""interceptor.classify: every kind from scapy-built packets, hostile headers, and fuzzing."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from interceptor.classify import (
    BT_PROTOCOL,
    HTTP_TARGET_WINDOW,
    UDP_TRACKER_PROTOCOL_ID,
    Classified,
    Kind,
    PacketError,
    classify,
)

SUB = "10.77.1.2"
NET = "10.77.2.2"
INFO_HASH = bytes.fromhex("215b4252b75413217c5c63f07caefac8582fe8f3")
NODE_ID = bytes(range(20))
RNG = random.Random(1234)


def rand(n: int) -> bytes:
    return RNG.randbytes(n)


def tcp(payload: bytes, *, sport: int = 40000, dport: int = 6881, **ip: Any) -> bytes:
    return bytes(
        IP(src=SUB, dst=NET, **ip) / TCP(sport=sport, dport=dport, flags="PA") / Raw(payload)
    )


def udp(payload: bytes, *, sport: int = 40001, dport: int = 6881, **ip: Any) -> bytes:
    return bytes(IP(src=SUB, dst=NET, **ip) / UDP(sport=sport, dport=dport) / Raw(payload))


def payload_of(pkt: bytes, c: Classified) -> bytes:
    return pkt[c.payload_offset : c.payload_offset + c.payload_length]


# --------------------------------------------------------------------------- real-world payloads

LT_PEER_ID = b"-LT2110-" + b"k2Jd8Zq0Lp4X"
A2_PEER_ID = b"A2-1-36-0-" + bytes.fromhex("9f3c01aa5e7d22b0c4e1")
# libtorrent: extension protocol (0x10 in byte 5), fast (0x04) + DHT (0x01) in byte 7
LT_RESERVED = bytes.fromhex("0000000000100005")
A2_RESERVED = bytes.fromhex("0000000000100004")
LT_HANDSHAKE = BT_PROTOCOL + LT_RESERVED + INFO_HASH + LT_PEER_ID
A2_HANDSHAKE = BT_PROTOCOL + A2_RESERVED + INFO_HASH + A2_PEER_ID
# the extended handshake that follows in the same segment (BEP 10), as a seeder's reply shows
EXT_HANDSHAKE = b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei5025e1:pi6881e4:reqqi500ee"
EXT_MSG = struct.pack("!IBB", 2 + len(EXT_HANDSHAKE), 20, 0) + EXT_HANDSHAKE

ANNOUNCE_TARGET = (
    b"/announce?info_hash=%21%5BBR%B7T%13%21%7C%5Cc%F0%7C%AE%FA%C8X%2F%E8%F3"
    b"&peer_id=-LT2110-k2Jd8Zq0Lp4X&port=6881&uploaded=0&downloaded=0&left=52428800"
    b"&corrupt=0&key=6A1B2C3D&event=started&numwant=200&compact=1&no_peer_id=1"
)
HTTP_ANNOUNCE = (
    b"GET " + ANNOUNCE_TARGET + b" HTTP/1.1\r\nHost: 10.77.2.2:6969\r\n"
    b"User-Agent: libtorrent/2.1.1.0\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
)
HTTP_PAGE = b"GET /index.txt HTTP/1.1\r\nHost: 10.77.2.2\r\nUser-Agent: curl/8.5.0\r\n\r\n"

MAGIC = UDP_TRACKER_PROTOCOL_ID.to_bytes(8, "big")
CONN_ID = bytes.fromhex("5a0c3e11d2f4a687")
TID = 0x1F2E3D4C
UDP_CONNECT = MAGIC + struct.pack("!II", 0, TID)
UDP_CONNECT_RESPONSE = struct.pack("!II", 0, TID) + CONN_ID
UDP_ANNOUNCE = (
    CONN_ID
    + struct.pack("!II", 1, TID)
    + INFO_HASH
    + LT_PEER_ID
    + struct.pack("!QQQIIIiH", 0, 52428800, 0, 2, 0, 0x1234ABCD, -1, 6881)
)
PEERS = bytes([10, 77, 2, 2]) + struct.pack("!H", 6881) + bytes([10, 77, 1, 9]) + b"\x1a\xe1"
UDP_ANNOUNCE_RESPONSE = struct.pack("!IIIII", 1, TID, 1800, 1, 1) + PEERS
UDP_SCRAPE = CONN_ID + struct.pack("!II", 2, TID) + INFO_HASH
UDP_SCRAPE_RESPONSE = struct.pack("!IIIII", 2, TID, 5, 10, 3)
UDP_ERROR = struct.pack("!II", 3, TID) + b"unregistered torrent"

KRPC_GET_PEERS = (
    b"d1:ad2:id20:" + NODE_ID + b"9:info_hash20:" + INFO_HASH + b"e"
    b"1:q9:get_peers1:t2:\x8a\x01" + b"1:v4:LT\x02\x10" + b"1:y1:qe"
)
KRPC_VALUES = (
    b"d2:ip6:" + bytes([10, 77, 1, 2]) + b"\x9c\x41"
    b"1:rd2:id20:" + NODE_ID + b"5:token8:" + bytes.fromhex("0011223344556677")
    + b"6:valuesl6:" + bytes([10, 77, 2, 2]) + b"\x1a\xe1"
    + b"6:" + bytes([10, 77, 1, 9]) + b"\x1a\xe1"
    + b"ee1:t2:\x8a\x011:y1:re"
)  # fmt: skip
KRPC_ERROR = b"d1:eli203e14:Protocol Errore1:t2:\x8a\x011:y1:ee"


def utp_header(utype: int, ext: int = 0, *, version: int = 1, wnd: int = 0) -> bytes:
    return struct.pack(
        "!BBHIIIHH", (utype << 4) | version, ext, 0x3A7B, 0x11223344, 0, wnd, 0x4321, 0
    )


UTP_SYN_LT = utp_header(4)  # libtorrent: no extension, 20 bytes
UTP_SYN_LIBUTP = utp_header(4, ext=2) + b"\x00\x08" + bytes(8)  # libutp: 8-byte ext-bits block
UTP_STATE_SACK = utp_header(2, ext=1, wnd=1 << 20) + b"\x00\x04" + b"\x05\x00\x00\x00"
UTP_DATA = utp_header(0, wnd=1 << 20) + LT_HANDSHAKE

# one valid packet of every positive kind, for the truncation and property tests
VALID: dict[str, tuple[bytes, Kind]] = {
    "lt_handshake": (tcp(LT_HANDSHAKE), Kind.BT_HANDSHAKE),
    "a2_handshake": (tcp(A2_HANDSHAKE, sport=6881, dport=51413), Kind.BT_HANDSHAKE),
    "http_announce": (tcp(HTTP_ANNOUNCE, dport=6969), Kind.HTTP_ANNOUNCE),
    "http_get": (tcp(HTTP_PAGE, dport=80), Kind.HTTP_GET),
    "mse": (tcp(rand(458)), Kind.MSE_CANDIDATE),
    "udp_connect": (udp(UDP_CONNECT), Kind.UDP_TRACKER_CONNECT),
    "udp_connect_response": (udp(UDP_CONNECT_RESPONSE), Kind.UDP_TRACKER_CONNECT_RESPONSE),
    "udp_announce": (udp(UDP_ANNOUNCE), Kind.UDP_TRACKER_ANNOUNCE),
    "udp_announce_response": (udp(UDP_ANNOUNCE_RESPONSE), Kind.UDP_TRACKER_ANNOUNCE_RESPONSE),
    "udp_scrape": (udp(UDP_SCRAPE), Kind.UDP_TRACKER_OTHER),
    "dht_query": (udp(KRPC_GET_PEERS), Kind.DHT_QUERY),
    "dht_response": (udp(KRPC_VALUES), Kind.DHT_RESPONSE),
    "dht_error": (udp(KRPC_ERROR), Kind.DHT_ERROR),
    "utp_syn": (udp(UTP_SYN_LT), Kind.UTP_SYN),
    "utp_data": (udp(UTP_DATA), Kind.UTP_OTHER),
}


# --------------------------------------------------------------------------- TCP kinds


def test_libtorrent_handshake_fields() -> None:
    pkt = tcp(LT_HANDSHAKE)
    c = classify(pkt)
    assert c.kind is Kind.BT_HANDSHAKE
    assert c.proto == 6
    assert c.src == (SUB, 40000) and c.dst == (NET, 6881)
    assert (c.payload_offset, c.payload_length) == (40, 68)
    assert payload_of(pkt, c) == LT_HANDSHAKE
    assert c.info_hash == INFO_HASH
    assert c.peer_id == LT_PEER_ID
    assert c.reserved == LT_RESERVED
    assert c.reserved[5] & 0x10 and c.reserved[7] & 0x04  # extension protocol, fast extension
    assert c.transaction_id is None and c.reason is None


def test_aria2_handshake_fields() -> None:
    c = classify(tcp(A2_HANDSHAKE, sport=6881, dport=51413))
    assert c.kind is Kind.BT_HANDSHAKE
    assert c.peer_id == A2_PEER_ID and c.reserved == A2_RESERVED and c.info_hash == INFO_HASH
    assert c.src == (SUB, 6881) and c.dst == (NET, 51413)


def test_handshake_sharing_its_segment_with_the_extended_handshake() -> None:
    payload = LT_HANDSHAKE + EXT_MSG + struct.pack("!IB", 1, 15)  # + have_all
    assert 96 <= len(payload) <= 608  # would be an MSE-sized segment otherwise
    c = classify(tcp(payload))
    assert c.kind is Kind.BT_HANDSHAKE
    assert c.payload_length == len(payload)
    assert c.info_hash == INFO_HASH and c.peer_id == LT_PEER_ID


def test_handshake_without_peer_id_yet() -> None:
    c = classify(tcp(LT_HANDSHAKE[:48]))
    assert c.kind is Kind.BT_HANDSHAKE
    assert c.info_hash == INFO_HASH and c.peer_id is None and c.reserved == LT_RESERVED


def test_handshake_prefix_too_short_for_the_info_hash() -> None:
    c = classify(tcp(LT_HANDSHAKE[:47]))
    assert c.kind is Kind.TCP_OTHER
    assert c.info_hash is None
    assert c.reason is not None and "47 bytes" in c.reason


def test_http_announce() -> None:
    pkt = tcp(HTTP_ANNOUNCE, dport=6969)
    c = classify(pkt)
    assert c.kind is Kind.HTTP_ANNOUNCE
    assert c.info_hash is None  # the handler parses the query
    assert payload_of(pkt, c) == HTTP_ANNOUNCE
    assert c.dst == (NET, 6969)


def test_http_announce_with_info_hash_not_first() -> None:
    req = b"GET /a/b/announce.php?passkey=x&info_hash=%00%01 HTTP/1.1\r\n\r\n"
    assert classify(tcp(req, dport=80)).kind is Kind.HTTP_ANNOUNCE


@pytest.mark.parametrize(
    "request_bytes",
    [
        HTTP_PAGE,
        # info_hash only in a header, not in the request-target
        b"GET /list HTTP/1.1\r\nReferer: http://x/?info_hash=abc\r\n\r\n",
        # not a parameter name: the tail of another name, and a path segment
        b"GET /search?xinfo_hash=1 HTTP/1.1\r\n\r\n",
        b"GET /info_hash=1 HTTP/1.1\r\n\r\n",
        # beyond the bounded search window
        b"GET /?" + b"a" * HTTP_TARGET_WINDOW + b"&info_hash=1 HTTP/1.1\r\n\r\n",
    ],
)
def test_http_get_that_is_not_an_announce(request_bytes: bytes) -> None:
    assert classify(tcp(request_bytes, dport=80)).kind is Kind.HTTP_GET


def test_http_announce_split_before_the_end_of_the_target() -> None:
    # the first segment ends inside the request-target: still an announce
    req = b"GET /announce?info_hash=%21%5BBR"
    assert classify(tcp(req, dport=6969)).kind is Kind.HTTP_ANNOUNCE


@pytest.mark.parametrize("size", [96, 97, 300, 458, 607, 608])
def test_mse_candidate_sizes(size: int) -> None:
    pkt = tcp(rand(size).replace(b"\x13", b"\x14"))
    c = classify(pkt)
    assert c.kind is Kind.MSE_CANDIDATE
    assert c.payload_length == size


@pytest.mark.parametrize("size", [0, 1, 20, 95, 609, 1400])
def test_outside_the_mse_size_range_is_tcp_other(size: int) -> None:
    assert classify(tcp(rand(size).replace(b"\x13", b"\x14"))).kind is Kind.TCP_OTHER


@pytest.mark.parametrize(
    "opening",
    [
        b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03",  # TLS ClientHello record
        b"POST /upload HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_plaintext_protocols_of_mse_size_are_not_candidates(opening: bytes) -> None:
    payload = opening + b"x" * (300 - len(opening))
    assert classify(tcp(payload)).kind is Kind.TCP_OTHER


def test_bare_syn_is_tcp_other_with_empty_payload() -> None:
    pkt = bytes(IP(src=SUB, dst=NET) / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460)]))
    c = classify(pkt)
    assert c.kind is Kind.TCP_OTHER
    assert (c.payload_offset, c.payload_length) == (44, 0)


# --------------------------------------------------------------------------- UDP tracker


def test_udp_connect_request() -> None:
    pkt = udp(UDP_CONNECT, dport=6969)
    c = classify(pkt)
    assert c.kind is Kind.UDP_TRACKER_CONNECT
    assert c.proto == 17
    assert c.transaction_id == TID
    assert (c.payload_offset, c.payload_length) == (28, 16)
    assert c.dst == (NET, 6969)


def test_udp_connect_request_of_the_wrong_action_is_not_a_connect() -> None:
    c = classify(udp(MAGIC + struct.pack("!II", 7, TID)))
    assert c.kind is not Kind.UDP_TRACKER_CONNECT


def test_udp_announce_request() -> None:
    pkt = udp(UDP_ANNOUNCE, dport=6969)
    assert len(UDP_ANNOUNCE) == 98
    c = classify(pkt)
    assert c.kind is Kind.UDP_TRACKER_ANNOUNCE
    assert c.info_hash == INFO_HASH and c.peer_id == LT_PEER_ID
    assert c.transaction_id == TID


def test_udp_announce_request_with_bep41_options() -> None:
    c = classify(udp(UDP_ANNOUNCE + b"\x02\x09/announce\x00"))
    assert c.kind is Kind.UDP_TRACKER_ANNOUNCE


def test_udp_announce_request_with_impossible_event_is_not_an_announce() -> None:
    bad = UDP_ANNOUNCE[:80] + struct.pack("!I", 9) + UDP_ANNOUNCE[84:]
    assert classify(udp(bad)).kind is Kind.UDP_OTHER


def test_udp_announce_request_whose_connection_id_starts_with_d() -> None:
    # a random connection id may open with "d"; the KRPC test must not swallow it
    c = classify(udp(b"d" + UDP_ANNOUNCE[1:]))
    assert c.kind is Kind.UDP_TRACKER_ANNOUNCE


@pytest.mark.parametrize("hint", [None, True])
def test_udp_responses(hint: bool | None) -> None:
    for payload, kind in [
        (UDP_CONNECT_RESPONSE, Kind.UDP_TRACKER_CONNECT_RESPONSE),
        (UDP_ANNOUNCE_RESPONSE, Kind.UDP_TRACKER_ANNOUNCE_RESPONSE),
        (UDP_ANNOUNCE_RESPONSE[:20], Kind.UDP_TRACKER_ANNOUNCE_RESPONSE),  # no peers
        (UDP_SCRAPE_RESPONSE, Kind.UDP_TRACKER_OTHER),
        (UDP_ERROR, Kind.UDP_TRACKER_OTHER),
    ]:
        c = classify(udp(payload, sport=6969, dport=40001), from_tracker=hint)
        assert c.kind is kind, payload
        assert c.transaction_id == TID


def test_from_tracker_false_never_reports_a_response() -> None:
    for payload in (UDP_CONNECT_RESPONSE, UDP_ANNOUNCE_RESPONSE, UDP_ERROR):
        assert classify(udp(payload), from_tracker=False).kind is Kind.UDP_OTHER
    # requests are still recognised
    assert classify(udp(UDP_ANNOUNCE), from_tracker=False).kind is Kind.UDP_TRACKER_ANNOUNCE


def test_from_tracker_true_accepts_what_the_content_heuristic_rejects() -> None:
    odd_interval = struct.pack("!IIIII", 1, TID, 0, 1, 1) + PEERS  # interval 0
    odd_connect = UDP_CONNECT_RESPONSE + b"\x00"  # trailing byte
    assert classify(udp(odd_interval)).kind is Kind.UDP_OTHER
    assert classify(udp(odd_connect)).kind is Kind.UDP_OTHER
    assert classify(udp(odd_interval), from_tracker=True).kind is Kind.UDP_TRACKER_ANNOUNCE_RESPONSE
    assert classify(udp(odd_connect), from_tracker=True).kind is Kind.UDP_TRACKER_CONNECT_RESPONSE


def test_from_tracker_true_rejects_bad_announce_response_length() -> None:
    c = classify(udp(UDP_ANNOUNCE_RESPONSE + b"\x01"), from_tracker=True)
    assert c.kind is Kind.UDP_OTHER


def test_announce_response_whose_peer_list_is_not_a_multiple_of_six() -> None:
    c = classify(udp(struct.pack("!IIIII", 1, TID, 1800, 1, 1) + bytes(19)))
    assert c.kind is Kind.UDP_OTHER


def test_udp_scrape_request() -> None:
    c = classify(udp(UDP_SCRAPE + INFO_HASH))
    assert c.kind is Kind.UDP_TRACKER_OTHER and c.transaction_id == TID


def test_error_response_with_binary_message_is_not_recognised_without_hint() -> None:
    binary = struct.pack("!II", 3, TID) + b"\xff\xfe\x00"
    assert classify(udp(binary)).kind is Kind.UDP_OTHER
    assert classify(udp(binary), from_tracker=True).kind is Kind.UDP_TRACKER_OTHER


# --------------------------------------------------------------------------- DHT


def test_krpc_get_peers_query() -> None:
    pkt = udp(KRPC_GET_PEERS)
    c = classify(pkt)
    assert c.kind is Kind.DHT_QUERY
    assert payload_of(pkt, c) == KRPC_GET_PEERS
    assert c.transaction_id is None and c.info_hash is None  # left to the handler


def test_krpc_get_peers_response_with_values() -> None:
    assert classify(udp(KRPC_VALUES, sport=6881, dport=40001)).kind is Kind.DHT_RESPONSE


def test_krpc_error() -> None:
    assert classify(udp(KRPC_ERROR)).kind is Kind.DHT_ERROR


def test_krpc_with_y_not_last_uses_the_full_search() -> None:
    msg = b"d1:t2:aa1:y1:r1:zi1ee"  # an unknown key sorted after "y"
    assert classify(udp(msg)).kind is Kind.DHT_RESPONSE


@pytest.mark.parametrize(
    "payload",
    [
        b"d1:t2:aa1:y1:xe",  # unknown message type
        b"d1:t2:aae",  # no type at all
        b"d1:t2:aa1:y1:q",  # not closed: ends without "e"
        b"d1:t2:aa1:y1:q1:z",  # not closed, type found early
        b"dns-probe-ish but not bencode e",
        b"d1:y1:",  # too short to hold a type
    ],
)
def test_not_krpc(payload: bytes) -> None:
    assert classify(udp(payload)).kind is Kind.UDP_OTHER


def test_krpc_dict_with_y_value_at_the_very_end_of_a_search() -> None:
    # "1:y1:" whose type byte would be the closing "e" of the dict is not a DHT error
    assert classify(udp(b"d1:t2:aa1:y1:e")).kind is Kind.UDP_OTHER


# --------------------------------------------------------------------------- uTP


def test_utp_syn_libtorrent() -> None:
    c = classify(udp(UTP_SYN_LT))
    assert c.kind is Kind.UTP_SYN
    assert c.payload_length == 20


def test_utp_syn_libutp_with_extension_bits() -> None:
    assert classify(udp(UTP_SYN_LIBUTP)).kind is Kind.UTP_SYN


@pytest.mark.parametrize(
    "payload",
    [
        UTP_STATE_SACK,
        UTP_DATA,
        utp_header(1),  # ST_FIN
        utp_header(3),  # ST_RESET
        utp_header(2, ext=3) + b"\x00\x04" + b"\x00\x00\x00\x02",  # close reason
    ],
)
def test_utp_other(payload: bytes) -> None:
    assert classify(udp(payload)).kind is Kind.UTP_OTHER


@pytest.mark.parametrize(
    "payload",
    [
        utp_header(4, version=0),  # deprecated version 0
        utp_header(5),  # no type 5
        utp_header(4, ext=9) + b"\x00\x00",  # unknown extension
        utp_header(4, ext=1) + b"\x00\x10" + bytes(4),  # extension runs past the end
        utp_header(4, ext=1),  # extension announced, none present
        utp_header(4) + b"payload",  # SYN with data
        utp_header(2) + b"x",  # STATE with data
        utp_header(0),  # DATA without data
        utp_header(4, ext=1) + b"\x01\x00" * 6,  # endless extension chain
        utp_header(4)[:19],  # shorter than the header
    ],
)
def test_not_utp(payload: bytes) -> None:
    assert classify(udp(payload)).kind is Kind.UDP_OTHER


def test_quic_sized_packet_with_utp_like_first_bytes_is_not_a_syn() -> None:
    quic = b"\x41\x02" + rand(1250)
    assert classify(udp(quic, dport=443)).kind is not Kind.UTP_SYN


# ------------------------------------------------------------------ headers and hostile input


def test_ip_options_shift_the_payload() -> None:
    pkt = tcp(LT_HANDSHAKE, options=[IPOption_RR(routers=["1.2.3.4", "5.6.7.8"]), IPOption_NOP()])
    assert pkt[0] & 0x0F > 5
    c = classify(pkt)
    assert c.kind is Kind.BT_HANDSHAKE
    assert c.payload_offset == (pkt[0] & 0x0F) * 4 + 20
    assert payload_of(pkt, c) == LT_HANDSHAKE

    u = udp(UDP_ANNOUNCE, options=[IPOption_NOP()] * 4)
    cu = classify(u)
    assert cu.kind is Kind.UDP_TRACKER_ANNOUNCE and cu.payload_offset == 24 + 8


def test_trailing_bytes_after_total_length_are_ignored() -> None:
    pkt = tcp(LT_HANDSHAKE) + b"\x00" * 6  # Ethernet-style padding
    c = classify(pkt)
    assert c.kind is Kind.BT_HANDSHAKE and c.payload_length == 68
    u = udp(UTP_SYN_LT) + b"\x00" * 4
    assert classify(u).kind is Kind.UTP_SYN


def test_bytearray_and_memoryview_inputs() -> None:
    pkt = tcp(LT_HANDSHAKE)
    assert classify(bytearray(pkt)) == classify(pkt)
    assert classify(memoryview(pkt)) == classify(pkt)
    assert classify(memoryview(b"\x00" + pkt)[1:]) == classify(pkt)


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncation_is_malformed(name: str) -> None:
    pkt, kind = VALID[name]
    assert classify(pkt).kind is kind
    for cut in range(len(pkt)):
        c = classify(pkt[:cut])
        assert c.kind is Kind.MALFORMED, (cut, c)
        assert c.reason


@pytest.mark.parametrize("name", sorted(VALID))
def test_truncating_the_payload_consistently_never_raises(name: str) -> None:
    # shorten the payload *and* fix the lengths, as a sender of a short packet would
    pkt, _kind = VALID[name]
    ip = IP(pkt)
    layer = ip[TCP] if TCP in ip else ip[UDP]
    data = bytes(layer.payload)
    for cut in range(len(data) + 1):
        layer.remove_payload()
        layer.add_payload(Raw(data[:cut]))
        del ip.len, ip.chksum
        if UDP in ip:
            del ip[UDP].len
        raw = bytes(ip)
        c = classify(raw)
        assert isinstance(c, Classified)
        assert c.kind is not Kind.MALFORMED
        assert c.payload_length == cut


def test_wrong_ihl_below_five() -> None:
    pkt = bytearray(tcp(LT_HANDSHAKE))
    pkt[0] = 0x44
    c = classify(bytes(pkt))
    assert c.kind is Kind.MALFORMED and "IHL" in (c.reason or "")


def test_ihl_larger_than_total_length() -> None:
    pkt = bytes(IP(src=SUB, dst=NET, ihl=15, len=40, proto=6) / Raw(bytes(20)))
    c = classify(pkt)
    assert c.kind is Kind.MALFORMED and "shorter than the 60-byte header" in (c.reason or "")


def test_total_length_larger_than_buffer() -> None:
    pkt = bytes(IP(src=SUB, dst=NET, len=2000) / TCP() / Raw(LT_HANDSHAKE))
    c = classify(pkt)
    assert c.kind is Kind.MALFORMED
    assert c.reason == f"IP total length 2000 exceeds the {len(pkt)} bytes captured"
    assert c.src == (SUB, 0) and c.proto == 6


def test_tcp_data_offset_past_the_end() -> None:
    pkt = bytes(IP(src=SUB, dst=NET) / TCP(dataofs=15) / Raw(b"abc"))
    c = classify(pkt)
    assert c.kind is Kind.MALFORMED and "data offset" in (c.reason or "")


def test_tcp_data_offset_below_five() -> None:
    pkt = bytes(IP(src=SUB, dst=NET) / TCP(dataofs=2) / Raw(LT_HANDSHAKE))
    assert classify(pkt).kind is Kind.MALFORMED


@pytest.mark.parametrize("delta", [-1, 1, -8, 100])
def test_udp_length_mismatch(delta: int) -> None:
    good = udp(UDP_CONNECT)
    bad = bytes(IP(src=SUB, dst=NET) / UDP(len=8 + 16 + delta) / Raw(UDP_CONNECT))
    assert classify(good).kind is Kind.UDP_TRACKER_CONNECT
    c = classify(bad)
    assert c.kind is Kind.MALFORMED and "UDP length" in (c.reason or "")


def test_udp_length_below_header() -> None:
    bad = bytes(IP(src=SUB, dst=NET) / UDP(len=4))
    assert classify(bad).kind is Kind.MALFORMED


@pytest.mark.parametrize("proto_layer", [TCP, UDP])
def test_non_first_fragment(proto_layer: type) -> None:
    # a later fragment whose bytes happen to look like a handshake/connect header
    body = LT_HANDSHAKE if proto_layer is TCP else UDP_CONNECT
    pkt = bytes(IP(src=SUB, dst=NET, proto=6 if proto_layer is TCP else 17, frag=185) / Raw(body))
    c = classify(pkt)
    assert c.kind is (Kind.TCP_OTHER if proto_layer is TCP else Kind.UDP_OTHER)
    assert c.src == (SUB, 0) and c.dst == (NET, 0)
    assert c.reason == "non-first IP fragment"
    assert c.info_hash is None and c.transaction_id is None


def test_first_tcp_fragment_is_still_classified() -> None:
    pkt = tcp(LT_HANDSHAKE, flags="MF")
    assert classify(pkt).kind is Kind.BT_HANDSHAKE


def test_first_udp_fragment_is_udp_other() -> None:
    full = IP(src=SUB, dst=NET, flags="MF") / UDP(sport=1, dport=2) / Raw(KRPC_VALUES)
    raw = bytes(full)
    # a first fragment carries part of the datagram: cut it, keeping the UDP length field
    first = bytearray(raw[: 28 + 64])
    first[2:4] = len(first).to_bytes(2, "big")
    c = classify(bytes(first))
    assert c.kind is Kind.UDP_OTHER and c.reason and "fragment" in c.reason
    assert c.src == (SUB, 1)


def test_ipv6_is_not_ipv4() -> None:
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(UDP_CONNECT))
    c = classify(pkt)
    assert c.kind is Kind.NOT_IPV4 and c.reason == "IP version 6"
    assert classify(pkt[:10]).kind is Kind.NOT_IPV4


def test_icmp_is_ip_other() -> None:
    c = classify(bytes(IP(src=SUB, dst=NET) / ICMP() / Raw(b"ping")))
    assert c.kind is Kind.IP_OTHER and c.proto == 1 and c.payload_length == 12


def test_empty_input() -> None:
    c = classify(b"")
    assert c.kind is Kind.MALFORMED and c.src == ("", 0)


def test_packet_error_is_a_value_error() -> None:
    assert issubclass(PacketError, ValueError)


# --------------------------------------------------------------------------- properties


def _check_invariants(pkt: bytes, c: Classified) -> None:
    assert isinstance(c, Classified)
    assert c.payload_offset >= 0 and c.payload_offset + c.payload_length <= len(pkt)
    if c.kind is Kind.MALFORMED or c.kind is Kind.NOT_IPV4:
        assert c.reason
    if c.info_hash is not None:
        assert len(c.info_hash) == 20


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_invariants(data, classify(data))


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=1500), st.sampled_from([6, 17]), st.binary(max_size=40))
def test_random_l4_under_a_valid_ip_header_never_raises(
    body: bytes, proto: int, options: bytes
) -> None:
    options = options[: len(options) // 4 * 4]
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(body)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, 0, 64, proto, 0,
                      bytes([10, 77, 1, 2]), bytes([10, 77, 2, 2]))  # fmt: skip
    pkt = hdr + options + body
    for hint in (None, True, False):
        _check_invariants(pkt, classify(pkt, from_tracker=hint))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.sampled_from([None, True, False]))
def test_random_udp_payload_is_classified_and_located(payload: bytes, hint: bool | None) -> None:
    pkt = udp(payload)
    c = classify(pkt, from_tracker=hint)
    assert c.kind is not Kind.MALFORMED
    assert payload_of(pkt, c) == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_random_tcp_payload_is_classified_and_located(payload: bytes) -> None:
    pkt = tcp(payload)
    c = classify(pkt)
    assert c.kind is not Kind.MALFORMED
    assert payload_of(pkt, c) == payload
