"""Tests for swarm.compact: compact IPv4/IPv6 peer lists (BEP 23, BEP 7)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.compact import decode_peers4, decode_peers6, encode_peers4, encode_peers6
from swarm.errors import LocalProtocolError, RemoteProtocolError

ports = st.integers(0, 65535)
peers4 = st.lists(st.tuples(st.ip_addresses(v=4).map(str), ports), max_size=50)
peers6 = st.lists(st.tuples(st.ip_addresses(v=6).map(str), ports), max_size=50)


# --- concrete vectors -----------------------------------------------------------------------


def test_decode_peers4_vector() -> None:
    raw = bytes([10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 254, 0x00, 0x50])
    assert decode_peers4(raw) == [("10.0.0.1", 6881), ("192.168.1.254", 80)]


def test_decode_peers6_vector() -> None:
    raw = bytes.fromhex("20010db8000000000000000000000001") + b"\x1a\xe1"
    assert decode_peers6(raw) == [("2001:db8::1", 6881)]


def test_empty_lists() -> None:
    assert decode_peers4(b"") == []
    assert decode_peers6(b"") == []
    assert encode_peers4([]) == b""
    assert encode_peers6([]) == b""


def test_encode_vectors() -> None:
    assert encode_peers4([("1.2.3.4", 0x1AE1)]) == b"\x01\x02\x03\x04\x1a\xe1"
    assert encode_peers6([("::1", 1)]) == b"\x00" * 15 + b"\x01\x00\x01"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = b"\x7f\x00\x00\x01\x00\x50"
    assert decode_peers4(bytearray(raw)) == decode_peers4(memoryview(raw)) == [("127.0.0.1", 80)]


def test_port_zero_is_decoded_faithfully() -> None:
    # Rejecting port 0 is the tracker parsers' job; a rewriter must see the list as it is.
    assert decode_peers4(b"\x01\x02\x03\x04\x00\x00") == [("1.2.3.4", 0)]


# --- round trips ----------------------------------------------------------------------------


@given(peers4)
def test_peers4_round_trip(peers: list[tuple[str, int]]) -> None:
    raw = encode_peers4(peers)
    assert len(raw) == 6 * len(peers)
    assert decode_peers4(raw) == peers


@given(peers6)
def test_peers6_round_trip(peers: list[tuple[str, int]]) -> None:
    raw = encode_peers6(peers)
    assert len(raw) == 18 * len(peers)
    decoded = decode_peers6(raw)
    # inet_ntop and ipaddress may spell one address two ways (::ffff:0.0.0.0 vs ::ffff:0:0).
    assert [(ipaddress.ip_address(h), p) for h, p in decoded] == [
        (ipaddress.ip_address(h), p) for h, p in peers
    ]


@given(st.binary(max_size=200).map(lambda b: b[: len(b) - len(b) % 6]))
def test_peers4_bytes_round_trip(raw: bytes) -> None:
    assert encode_peers4(decode_peers4(raw)) == raw


@given(st.binary(max_size=400).map(lambda b: b[: len(b) - len(b) % 18]))
def test_peers6_bytes_round_trip(raw: bytes) -> None:
    decoded = decode_peers6(raw)
    assert encode_peers6(decoded) == raw
    for host, _ in decoded:
        assert ipaddress.ip_address(host).packed  # every host string is a real address


# --- hostile input --------------------------------------------------------------------------


@given(st.binary(max_size=100).filter(lambda b: len(b) % 6))
def test_peers4_bad_length(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=rf"{len(raw)} bytes is not a multiple of 6"):
        decode_peers4(raw)


@given(st.binary(max_size=100).filter(lambda b: len(b) % 18))
def test_peers6_bad_length(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match=rf"{len(raw)} bytes is not a multiple of 18"):
        decode_peers6(raw)


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        (("1", 80), "not an IPv4 address"),  # inet_aton would take this as 0.0.0.1
        (("1.2.3.256", 80), "not an IPv4 address"),
        (("::1", 80), "not an IPv4 address"),
        (("example.com", 80), "not an IPv4 address"),
        (("1.2.3.4", 65536), "not in 0..65535"),
        (("1.2.3.4", -1), "not in 0..65535"),
        (("1.2.3.4", True), "not in 0..65535"),
    ],
)
def test_encode_peers4_rejects(peer: tuple[str, int], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        encode_peers4([peer])


@pytest.mark.parametrize("host", ["1.2.3.4", "fe80::1%eth0", "::g", ""])
def test_encode_peers6_rejects_bad_addresses(host: str) -> None:
    with pytest.raises(LocalProtocolError, match="not an IPv6 address"):
        encode_peers6([(host, 1)])


def test_encode_peers6_accepts_mapped_ipv4() -> None:
    raw = encode_peers6([("::ffff:1.2.3.4", 5)])
    assert raw[10:16] == b"\xff\xff\x01\x02\x03\x04"
    assert decode_peers6(raw) == [("::ffff:1.2.3.4", 5)]
