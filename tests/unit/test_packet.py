"""interceptor.packet: checksums against scapy and RFC 1071, UDP payload rewrites, bad input."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from interceptor.classify import Kind, classify
from interceptor.packet import (
    MAX_IPV4_PACKET,
    PacketError,
    ipv4_checksum,
    replace_udp_payload,
    udp_checksum,
)

SUB = "10.77.1.2"
TRACKER = "10.77.2.2"
TID = 0x0BADCAFE


def udp_packet(payload: bytes, **ip: Any) -> bytes:
    return bytes(
        IP(src=TRACKER, dst=SUB, id=4242, ttl=61, **ip)
        / UDP(sport=6969, dport=40001)
        / Raw(payload)
    )


def scapy_recomputed(raw: bytes) -> bytes:
    """What scapy writes for the same packet after recomputing lengths and checksums."""
    pkt = IP(raw)
    del pkt[IP].chksum
    del pkt[UDP].chksum
    return bytes(pkt.__class__(bytes(pkt)))


def assert_valid_rewrite(original: bytes, new_payload: bytes, out: bytes) -> None:
    parsed = IP(out)
    src = IP(original)
    assert parsed.len == len(out)
    assert parsed[UDP].len == 8 + len(new_payload)
    assert bytes(parsed[UDP].payload) == new_payload
    # header kept byte for byte except total length and checksum
    ihl = (out[0] & 0x0F) * 4
    assert (
        out[:2] == original[:2] and out[4:10] == original[4:10] and out[12:ihl] == original[12:ihl]
    )
    assert (parsed.sport, parsed.dport) == (src.sport, src.dport)
    assert out == scapy_recomputed(out)
    # both checksums verify in the ones' complement sense too
    assert scapy_checksum(out[:ihl]) == 0
    pseudo = out[12:20] + struct.pack("!BBH", 0, 17, len(out) - ihl)
    assert scapy_checksum(pseudo + out[ihl:]) == 0


# --------------------------------------------------------------------------- checksums


def test_rfc1071_example() -> None:
    # RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (after the end-around carry)
    assert ipv4_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_ipv4_checksum_of_real_header_matches_scapy() -> None:
    raw = bytes(IP(src=SUB, dst=TRACKER, id=7, ttl=64, flags="DF") / UDP())
    zeroed = raw[:10] + b"\x00\x00" + raw[12:20]
    assert ipv4_checksum(zeroed) == int.from_bytes(raw[10:12], "big")
    assert ipv4_checksum(raw[:20]) == 0  # a header including a correct checksum sums to zero


def test_checksum_edge_values() -> None:
    assert ipv4_checksum(b"") == 0xFFFF
    assert ipv4_checksum(b"\x00\x00") == 0xFFFF
    assert ipv4_checksum(b"\xff\xff") == 0  # folded sum 0xFFFF, not 0
    assert ipv4_checksum(b"\xff\xfe\x00\x01") == 0
    assert ipv4_checksum(b"\x01") == 0xFFFF - 0x0100  # odd length: zero-padded
    assert ipv4_checksum(memoryview(b"\xab\xcd")) == 0xFFFF - 0xABCD


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_ipv4_checksum_matches_scapy_for_any_bytes(data: bytes) -> None:
    assert ipv4_checksum(data) == scapy_checksum(data)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=2000), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)
)
def test_udp_checksum_matches_scapy(payload: bytes, src: bytes, dst: bytes) -> None:
    from socket import inet_ntoa

    raw = bytes(IP(src=inet_ntoa(src), dst=inet_ntoa(dst)) / UDP(sport=1, dport=2) / Raw(payload))
    segment = raw[20:]
    assert udp_checksum(src, dst, segment) == int.from_bytes(segment[6:8], "big")
    # the checksum field of the segment is ignored, whatever it holds
    scribbled = segment[:6] + b"\x12\x34" + segment[8:]
    assert udp_checksum(src, dst, scribbled) == int.from_bytes(segment[6:8], "big")


def test_udp_checksum_never_returns_zero() -> None:
    # choose the 2-byte payload so that the ones' complement sum is 0xFFFF: the checksum
    # then computes to 0, which must go on the wire as 0xFFFF (0 would mean "no checksum")
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    base = struct.pack("!HHHH", 1, 2, 10, 0) + b"\x00\x00"
    word = udp_checksum(src, dst, base)  # = 0xFFFF - (sum so far), the missing addend
    segment = base[:8] + word.to_bytes(2, "big")
    assert udp_checksum(src, dst, segment) == 0xFFFF
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(segment[8:]))
    assert raw[26:28] == b"\xff\xff"  # scapy agrees


@pytest.mark.parametrize(
    ("src", "dst", "segment", "message"),
    [
        (b"\x01\x02\x03", bytes(4), bytes(8), "4 bytes"),
        (bytes(4), bytes(16), bytes(8), "4 bytes"),
        (bytes(4), bytes(4), bytes(7), "shorter than its header"),
        (bytes(4), bytes(4), bytes(MAX_IPV4_PACKET + 1), "exceeds 65535"),
    ],
)
def test_udp_checksum_bad_input(src: bytes, dst: bytes, segment: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        udp_checksum(src, dst, segment)


# --------------------------------------------------------------------------- replace_udp_payload

PEERS = bytes([10, 77, 2, 2, 0x1A, 0xE1])
RESPONSE = struct.pack("!IIIII", 1, TID, 1800, 1, 1) + PEERS
CACHE_PEER = bytes([10, 77, 0, 1, 0x1A, 0xE1])


@pytest.mark.parametrize(
    "new_payload",
    [RESPONSE, RESPONSE + CACHE_PEER, RESPONSE[:20], b"", b"x", bytes(1400)],
    ids=["same", "longer", "shorter", "empty", "odd", "large"],
)
def test_replace_payload(new_payload: bytes) -> None:
    original = udp_packet(RESPONSE)
    out = replace_udp_payload(original, new_payload)
    assert_valid_rewrite(original, new_payload, out)


def test_tracker_response_rewrite_keeps_the_transaction_id() -> None:
    original = udp_packet(RESPONSE)
    before = classify(original, from_tracker=True)
    new = replace_udp_payload(original, RESPONSE + CACHE_PEER)
    after = classify(new, from_tracker=True)
    assert before.kind is after.kind is Kind.UDP_TRACKER_ANNOUNCE_RESPONSE
    assert after.transaction_id == TID
    assert new[after.payload_offset + 26 : after.payload_offset + 32] == CACHE_PEER


def test_ip_options_are_kept() -> None:
    original = udp_packet(RESPONSE, options=[IPOption_RR(routers=["1.1.1.1"]), IPOption_NOP()])
    ihl = (original[0] & 0x0F) * 4
    assert ihl > 20
    out = replace_udp_payload(original, b"hello world")
    assert out[20:ihl] == original[20:ihl]
    assert_valid_rewrite(original, b"hello world", out)
    assert IP(out)[UDP].payload.load == b"hello world"


def test_zero_udp_checksum_stays_zero() -> None:
    original = bytes(IP(src=TRACKER, dst=SUB) / UDP(sport=6969, dport=1, chksum=0) / Raw(RESPONSE))
    assert original[26:28] == b"\x00\x00"
    out = replace_udp_payload(original, RESPONSE + CACHE_PEER)
    assert out[26:28] == b"\x00\x00"
    assert IP(out)[UDP].len == 8 + len(RESPONSE) + 6
    assert scapy_checksum(out[:20]) == 0


def test_padding_after_total_length_is_dropped() -> None:
    original = udp_packet(RESPONSE) + b"\x00" * 6
    out = replace_udp_payload(original, b"abc")
    assert len(out) == 20 + 8 + 3
    assert_valid_rewrite(original[: len(original) - 6], b"abc", out)


def test_input_buffer_types() -> None:
    original = udp_packet(RESPONSE)
    expected = replace_udp_payload(original, b"abc")
    assert replace_udp_payload(bytearray(original), bytearray(b"abc")) == expected
    assert replace_udp_payload(memoryview(original), memoryview(b"abc")) == expected


def test_largest_allowed_and_one_too_many() -> None:
    original = udp_packet(b"x")
    out = replace_udp_payload(original, bytes(MAX_IPV4_PACKET - 28))
    assert len(out) == MAX_IPV4_PACKET
    assert IP(out).len == MAX_IPV4_PACKET
    with pytest.raises(PacketError, match="exceeds the IPv4 maximum"):
        replace_udp_payload(original, bytes(MAX_IPV4_PACKET - 27))


def _bad_packets() -> list[tuple[str, bytes, str]]:
    good = udp_packet(RESPONSE)
    wrong_version = bytes([0x65]) + good[1:]
    low_ihl = bytes([0x44]) + good[1:]
    udp_len = bytes(IP(src=TRACKER, dst=SUB) / UDP(len=12) / Raw(RESPONSE))
    no_udp_header = bytes(IP(src=TRACKER, dst=SUB, proto=17) / Raw(b"abcd"))
    return [
        ("tcp", bytes(IP() / TCP() / Raw(b"x")), "not UDP"),
        ("more fragments", udp_packet(RESPONSE, flags="MF"), "fragment"),
        ("later fragment", bytes(IP(proto=17, frag=3) / Raw(bytes(16))), "fragment"),
        ("truncated", good[:-1], "exceeds the"),
        ("tiny", good[:12], "shorter than an IPv4 header"),
        ("empty", b"", "shorter than an IPv4 header"),
        ("ipv6", wrong_version, "version 6"),
        ("ihl", low_ihl, "IHL"),
        ("udp length", udp_len, "UDP length 12"),
        ("no udp header", no_udp_header, "no room for a UDP header"),
    ]


@pytest.mark.parametrize(("name", "raw", "message"), _bad_packets(), ids=lambda v: str(v)[:20])
def test_bad_packets_raise_packet_error(name: str, raw: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        replace_udp_payload(raw, b"new")


def test_packet_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        replace_udp_payload(b"", b"")


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=1500),
    st.integers(min_value=0, max_value=9000),
    st.sampled_from([0, 1, 2, 10]),
    st.binary(min_size=1, max_size=64),
)
def test_round_trip_against_scapy(
    original_payload: bytes, new_size: int, nops: int, seed: bytes
) -> None:
    new_payload = (seed * (new_size // len(seed) + 1))[:new_size]
    original = udp_packet(original_payload, options=[IPOption_NOP()] * nops)
    out = replace_udp_payload(original, new_payload)
    assert_valid_rewrite(original, new_payload, out)
