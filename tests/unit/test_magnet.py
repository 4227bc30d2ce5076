"""Magnet links: vectors, rejections, a round trip property, and agreement with libtorrent's
own magnet parser on what both accept."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.magnet import Magnet, MagnetError, format_magnet, parse_magnet

V1_HEX = "215b4252b75413217c5c63f07caefac8582fe8f3"
V1 = bytes.fromhex(V1_HEX)
V2 = bytes(range(32))


def test_testbed_magnet() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{V1_HEX.upper()}&dn=data50.bin"
        "&tr=http%3A%2F%2F10.77.2.2%3A6969%2Fannounce&tr=udp://10.77.2.2:6969/announce"
    )
    assert m.info_hash == V1
    assert m.info_hash_v2 is None
    assert m.handshake_hash == V1
    assert m.display_name == "data50.bin"
    assert m.trackers == ("http://10.77.2.2:6969/announce", "udp://10.77.2.2:6969/announce")
    assert m.peers == ()
    assert m.length is None


def test_base32_btih() -> None:
    b32 = base64.b32encode(V1).decode()
    assert len(b32) == 32
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32}").info_hash == V1
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32.lower()}").info_hash == V1


def test_v2_and_hybrid() -> None:
    only_v2 = parse_magnet(f"magnet:?xt=urn:btmh:1220{V2.hex()}")
    assert only_v2.info_hash is None
    assert only_v2.info_hash_v2 == V2
    assert only_v2.handshake_hash == V2[:20]
    hybrid = parse_magnet(f"magnet:?xt=urn:btih:{V1_HEX}&xt=urn:btmh:1220{V2.hex().upper()}")
    assert (hybrid.info_hash, hybrid.info_hash_v2) == (V1, V2)
    # Numbered parameters, repeated identical hash, case-insensitive keys and URN prefix.
    again = parse_magnet(f"MAGNET:?XT.1=URN:BTIH:{V1_HEX}&xt.2=urn:btih:{V1_HEX}&Tr.1=udp://a:1")
    assert again.info_hash == V1 and again.trackers == ("udp://a:1",)


def test_peers_length_and_name_decoding() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{V1_HEX}&x.pe=10.0.0.1:6881&x.pe=[2001:DB8::1]:51413"
        "&x.pe=Peer.Example.org:1&x.pe=10.0.0.1:6881&xl=52428800&dn=a+b%2Bc%20%C3%A9"
        "&ws=http://ignored/&kt=x&unknown=1#fragment&tr=not-a-tracker"
    )
    assert m.peers == (("10.0.0.1", 6881), ("2001:db8::1", 51413), ("peer.example.org", 1))
    assert m.length == 52428800
    assert m.display_name == "a b+c é"
    assert m.trackers == ()


def test_empty_and_duplicate_trackers_dropped() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{V1_HEX}&tr=&tr=udp://a:1&&tr=udp://a:1&tr=%20")
    assert m.trackers == ("udp://a:1",)


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("http://example.com/", "does not start with 'magnet:?'"),
        ("magnet:xt=urn:btih:" + V1_HEX, "does not start with 'magnet:?'"),
        ("magnet:?", "no 'xt=urn:btih:'"),
        ("magnet:?dn=x&tr=udp://a:1", "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:ed2k:abcdef", "no 'xt=urn:btih:'"),
        ("magnet:?xt", "has no '='"),
        ("magnet:?xt=urn:btih:" + V1_HEX[:-1], "40 hex or 32 base32"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "00", "40 hex or 32 base32"),
        ("magnet:?xt=urn:btih:" + "g" * 40, "40 hex or 32 base32"),
        ("magnet:?xt=urn:btih:" + "1" * 32, "not valid base32"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&xt=urn:btih:" + "0" * 40, "two different urn:btih"),
        ("magnet:?xt=urn:btmh:1114" + "a" * 40, "not a SHA-256 multihash"),
        ("magnet:?xt=urn:btmh:1220" + "a" * 63, "64 hex characters"),
        ("magnet:?xt=urn:btmh:1220" + "z" * 64, "64 hex characters"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&dn=%zz", "bad percent escape '%zz' in 'dn'"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&dn=%4", "bad percent escape '%4'"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&dn=%ff", "not UTF-8"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&dn=a&dn=b", "more than one 'dn'"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&xl=-1", "'xl' is not a byte count"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&xl=1&xl=2", "more than one 'xl'"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=1.2.3.4", "not host:port"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=1.2.3.4:0", "port out of range"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=1.2.3.4:65536", "port out of range"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=1.2.3.4:٣", "not host:port"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=[zz::1]:5", "bad IPv6"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=::1:5", "bad host"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=1.2.3.999:5", "bad host"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=a_b:5", "bad host"),
        ("magnet:?xt=urn:btih:" + V1_HEX + "&x.pe=:5", "bad host"),
    ],
)
def test_rejects(link: str, message: str) -> None:
    with pytest.raises(MagnetError) as exc:
        parse_magnet(link)
    assert message in str(exc.value)
    assert str(exc.value).startswith("magnet: ")
    assert isinstance(exc.value, RemoteProtocolError)


def test_limits() -> None:
    base = f"magnet:?xt=urn:btih:{V1_HEX}"
    with pytest.raises(MagnetError, match="longer than 100"):
        parse_magnet(base + "&dn=" + "x" * 100, max_length=100)
    many = base + "".join(f"&tr=udp://t{i}:1" for i in range(4))
    assert len(parse_magnet(many, max_trackers=4).trackers) == 4
    with pytest.raises(MagnetError, match="more than 3 trackers"):
        parse_magnet(many, max_trackers=3)
    peers = base + "".join(f"&x.pe=10.0.0.{i}:1" for i in range(4))
    with pytest.raises(MagnetError, match="more than 3 peers"):
        parse_magnet(peers, max_peers=3)


def test_magnet_construction_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="needs info_hash"):
        Magnet()
    with pytest.raises(LocalProtocolError, match="20 bytes"):
        Magnet(info_hash=b"x")
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        Magnet(info_hash_v2=b"x" * 20)
    with pytest.raises(LocalProtocolError, match="empty tracker"):
        Magnet(info_hash=V1, trackers=("",))
    with pytest.raises(LocalProtocolError, match="bad peer"):
        Magnet(info_hash=V1, peers=(("h", 0),))
    with pytest.raises(LocalProtocolError, match="negative length"):
        Magnet(info_hash=V1, length=-1)
    with pytest.raises(LocalProtocolError, match="cannot put"):
        format_magnet(Magnet(info_hash=V1, display_name="\udcff"))


def test_format_is_canonical() -> None:
    m = Magnet(
        info_hash=V1,
        info_hash_v2=V2,
        display_name="a b&c=d",
        trackers=("http://t/a?x=1&y=2",),
        peers=(("10.0.0.1", 6881), ("::1", 5)),
        length=7,
    )
    assert format_magnet(m) == (
        f"magnet:?xt=urn:btih:{V1_HEX}&xt=urn:btmh:1220{V2.hex()}&dn=a%20b%26c%3Dd&xl=7"
        "&tr=http%3A%2F%2Ft%2Fa%3Fx%3D1%26y%3D2&x.pe=10.0.0.1:6881&x.pe=[::1]:5"
    )


# --- properties ---------------------------------------------------------------------------------

_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a))),
    st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
)
_text = st.text(st.characters(codec="utf-8"), max_size=30)
magnets = st.builds(
    Magnet,
    info_hash=st.none() | st.binary(min_size=20, max_size=20),
    info_hash_v2=st.binary(min_size=32, max_size=32),
    display_name=st.none() | _text,
    trackers=st.lists(_text.map(str.strip).filter(bool), unique=True, max_size=5).map(tuple),
    peers=st.lists(st.tuples(_hosts, st.integers(1, 65535)), unique=True, max_size=5).map(tuple),
    length=st.none() | st.integers(0, 2**62),
) | st.builds(Magnet, info_hash=st.binary(min_size=20, max_size=20))


@given(magnets)
def test_round_trip(m: Magnet) -> None:
    link = format_magnet(m)
    assert parse_magnet(link) == m


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_random_text_raises_only_magnet_error(tail: str) -> None:
    for link in (tail, "magnet:?" + tail, f"magnet:?xt=urn:btih:{V1_HEX}&" + tail):
        try:
            m = parse_magnet(link)
        except MagnetError:
            continue
        # Whatever is accepted is a usable, re-formattable magnet.
        assert parse_magnet(format_magnet(m)) == m


lt: Any
try:
    import libtorrent as lt
except ImportError:  # pragma: no cover - the test extras install it
    lt = None


_urls = st.from_regex(
    r"(http|https|udp)://[a-z0-9.]{1,12}(:[0-9]{1,5})?/[a-z?=&%]{0,12}", fullmatch=True
)


@pytest.mark.skipif(lt is None, reason="libtorrent wheel not installed (pip install libtorrent)")
@given(magnets, st.lists(_urls, unique=True, max_size=4))
def test_libtorrent_reads_our_links_the_same(m: Magnet, urls: list[str]) -> None:
    # libtorrent drops tracker strings that are not URLs; compare on URL-shaped ones.
    m = dataclasses.replace(m, trackers=tuple(urls))
    params = lt.parse_magnet_uri(format_magnet(m))
    hashes = params.info_hashes
    assert (str(hashes.v1) if m.info_hash else "0" * 40) == (m.info_hash or bytes(20)).hex()
    assert str(hashes.v2) == (m.info_hash_v2 or bytes(32)).hex()
    assert list(params.trackers) == list(m.trackers)
    assert [(str(ipaddress.ip_address(h)), p) for h, p in params.peers] == [
        (h, p) for h, p in m.peers if _is_ip(h)
    ]
    if m.display_name:
        assert params.name == m.display_name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
