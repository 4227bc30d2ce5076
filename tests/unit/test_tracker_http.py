"""Tests for swarm.tracker_http: announce URLs, reply parsing, scrape URLs."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.bencode import BValue, bencode
from swarm.compact import encode_peers4, encode_peers6
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.tracker_http import (
    MAX_RESPONSE_SIZE,
    AnnounceRequest,
    AnnounceResponse,
    TrackerError,
    TrackerFailure,
    TrackerResponseError,
    announce_url,
    parse_announce_response,
    scrape_url,
)

IH = bytes(range(20))
PID = b"-SC0001-" + bytes(range(0xF0, 0xFC))


def req(**kw: object) -> AnnounceRequest:
    fields: dict[str, object] = {
        "info_hash": IH,
        "peer_id": PID,
        "port": 6881,
        "uploaded": 1,
        "downloaded": 2,
        "left": 3,
        "event": "started",
    }
    fields.update(kw)
    return AnnounceRequest(**fields)  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, bytes]:
    """Split a query by hand: parse_qs would decode the raw bytes as UTF-8."""
    out: dict[str, bytes] = {}
    for part in urlsplit(url).query.split("&"):
        k, _, v = part.partition("=")
        assert k not in out, f"{k} twice in {url}"
        out[k] = unquote_to_bytes(v)
    return out


# --- announce_url ---------------------------------------------------------------------------


def test_announce_url_fields() -> None:
    url = announce_url("http://t.example:6969/announce", req(key=0xBEEF, numwant=50))
    assert url.startswith("http://t.example:6969/announce?info_hash=")
    q = query_of(url)
    assert q["info_hash"] == IH
    assert q["peer_id"] == PID
    assert q["port"] == b"6881"
    assert (q["uploaded"], q["downloaded"], q["left"]) == (b"1", b"2", b"3")
    assert q["compact"] == b"1"
    assert q["event"] == b"started"
    assert q["numwant"] == b"50"
    assert q["key"] == b"0000beef"
    assert "ip" not in q


def test_announce_url_encodes_every_byte_value() -> None:
    for start in range(0, 256, 20):
        chunk = bytes((start + i) % 256 for i in range(20))
        url = announce_url("http://t/announce", req(info_hash=chunk, peer_id=chunk[::-1]))
        assert query_of(url)["info_hash"] == chunk
        assert query_of(url)["peer_id"] == chunk[::-1]
        # Only unreserved characters may stay literal; '&', '=', '+', '%', '/' must not.
        raw_value = urlsplit(url).query.split("&")[0].removeprefix("info_hash=")
        assert all(c.isalnum() or c in "-._~%" for c in raw_value), raw_value


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_announce_url_round_trips_raw_bytes(info_hash: bytes, peer_id: bytes) -> None:
    q = query_of(announce_url("http://t/a", req(info_hash=info_hash, peer_id=peer_id)))
    assert (q["info_hash"], q["peer_id"]) == (info_hash, peer_id)


@pytest.mark.parametrize(
    ("base", "prefix"),
    [
        ("http://t/announce.php?passkey=a%2Fb", "http://t/announce.php?passkey=a%2Fb&info_hash="),
        ("http://t/announce?", "http://t/announce?info_hash="),
        ("http://t/announce?x=1&", "http://t/announce?x=1&info_hash="),
        ("https://t/ann#frag", "https://t/ann?info_hash="),
        ("HTTP://T:80/x?k=v#f", "HTTP://T:80/x?k=v&info_hash="),
    ],
)
def test_announce_url_keeps_existing_query_verbatim(base: str, prefix: str) -> None:
    url = announce_url(base, req())
    assert url.startswith(prefix)
    assert "#" not in url


def test_announce_url_optional_fields() -> None:
    q = query_of(announce_url("http://t/a", req(event=None, numwant=-1, compact=False, ip="::1")))
    assert "event" not in q
    assert "numwant" not in q
    assert "key" not in q
    assert q["compact"] == b"0"
    assert q["ip"] == b"::1"


@pytest.mark.parametrize("base", ["udp://t:1/announce", "ftp://t/a", "http:///announce", "t/a"])
def test_announce_url_rejects_non_http(base: str) -> None:
    with pytest.raises(LocalProtocolError, match="not an http"):
        announce_url(base, req())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("info_hash", b"x" * 19, "info_hash must be 20 bytes"),
        ("peer_id", "x" * 20, "peer_id must be 20 bytes"),
        ("port", 65536, "port must be an integer in 0..65535"),
        ("uploaded", -1, "uploaded must be"),
        ("left", 1 << 64, "left must be"),
        ("numwant", -2, "numwant must be"),
        ("key", 1 << 32, "key must be"),
        ("event", "paused", "unknown event 'paused'"),
        ("ip", "a\nb", "ip must be a printable string"),
        ("port", True, "port must be"),
    ],
)
def test_announce_request_validates(field: str, value: object, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        req(**{field: value})


# --- parse_announce_response: good replies --------------------------------------------------


def test_parse_opentracker_style_reply() -> None:
    body = (
        b"d8:completei1e10:downloadedi0e10:incompletei2e8:intervali1885e"
        b"12:min intervali942e5:peers12:\x7f\x00\x00\x01\x1b\x58\x0a\x00\x00\x02\x1a\xe1e"
    )
    assert parse_announce_response(body) == AnnounceResponse(
        interval=1885,
        min_interval=942,
        peers=(("127.0.0.1", 7000), ("10.0.0.2", 6881)),
        complete=1,
        incomplete=2,
        warning=None,
        tracker_id=None,
    )


def test_parse_dictionary_peers() -> None:
    body = bencode(
        {
            b"interval": 60,
            b"peers": [
                {b"ip": b"10.1.2.3", b"port": 6881, b"peer id": b"A" * 20},
                {b"ip": b"2001:0db8:0:0::1", b"port": 51413},
                {b"ip": b"peer.example.net", b"port": 1},
            ],
        }
    )
    r = parse_announce_response(body)
    # IPv6 comes back in the canonical form the compact decoder produces.
    assert r.peers == (("10.1.2.3", 6881), ("2001:db8::1", 51413), ("peer.example.net", 1))


def test_parse_peers6_and_extras() -> None:
    body = bencode(
        {
            b"interval": 1800,
            b"peers": encode_peers4([("1.2.3.4", 5)]),
            b"peers6": encode_peers6([("fe80::1", 6), ("::1", 7)]),
            b"warning message": "slow down \u00e9".encode(),
            b"tracker id": b"\x00id",
        }
    )
    r = parse_announce_response(body)
    assert r.peers == (("1.2.3.4", 5), ("fe80::1", 6), ("::1", 7))
    assert r.warning == "slow down \u00e9"
    assert r.tracker_id == b"\x00id"
    assert (r.complete, r.incomplete, r.min_interval) == (None, None, None)


def test_parse_tolerates_unsorted_keys_missing_peers_and_trailing_newline() -> None:
    body = b"d8:intervali30e8:completei0ee\r\n"
    r = parse_announce_response(body)
    assert (r.interval, r.complete, r.peers) == (30, 0, ())


# --- parse_announce_response: failures and hostile replies ----------------------------------


def test_failure_reason_carries_tracker_text() -> None:
    body = b"d14:failure reason63:Requested download is not authorized for use with this tracker.e"
    with pytest.raises(TrackerFailure) as info:
        parse_announce_response(body)
    assert info.value.reason == "Requested download is not authorized for use with this tracker."
    assert isinstance(info.value, RemoteProtocolError)
    assert isinstance(info.value, TrackerError)


def test_failure_reason_wins_even_without_interval_and_is_truncated() -> None:
    with pytest.raises(TrackerFailure) as info:
        parse_announce_response(bencode({b"failure reason": b"x" * 5000, b"peers": 3}))
    assert info.value.reason == "x" * 500 + "..."


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({b"peers": b""}, "no 'interval'"),
        ({b"interval": -5}, "'interval' is -5, not in 0..2147483647"),
        ({b"interval": b"60"}, "'interval' is a 2-byte string, not an integer"),
        ({b"interval": 1 << 40}, "'interval' is 1099511627776"),
        ({b"interval": 5, b"min interval": -1}, "'min interval' is -1"),
        ({b"interval": 5, b"complete": -3}, "'complete' is -3"),
        ({b"interval": 5, b"peers": b"\x01\x02\x03\x04\x00\x00"}, "1.2.3.4 in 'peers' has port 0"),
        ({b"interval": 5, b"peers": b"12345"}, "5 bytes is not a multiple of 6"),
        ({b"interval": 5, b"peers6": b"1" * 17}, "17 bytes is not a multiple of 18"),
        ({b"interval": 5, b"peers6": []}, "'peers6' is a list of 0 items, not a string"),
        ({b"interval": 5, b"peers": 7}, "'peers' is the integer 7, not a string or a list"),
        ({b"interval": 5, b"peers": [b"x"]}, r"peers\[0\] is a 1-byte string, not a dictionary"),
        ({b"interval": 5, b"peers": [{b"port": 1}]}, r"peers\[0\] has no 'ip' string"),
        ({b"interval": 5, b"peers": [{b"ip": b"1.2.3.4"}]}, r"peers\[0\] has no 'port' integer"),
        (
            {b"interval": 5, b"peers": [{b"ip": b"1.2.3.4", b"port": 70000}]},
            r"peers\[0\] has port 70000, not in 1..65535",
        ),
        (
            {b"interval": 5, b"peers": [{b"ip": b"1.2.3.4", b"port": 0}]},
            r"peers\[0\] has port 0",
        ),
        (
            {b"interval": 5, b"peers": [{b"ip": b"999.1.1.1", b"port": 1}]},
            r"peers\[0\] 'ip' b'999.1.1.1' is not an address or host name",
        ),
        (
            {b"interval": 5, b"peers": [{b"ip": b"a b", b"port": 1}]},
            r"is not an address or host name",
        ),
        (
            {b"interval": 5, b"peers": [{b"ip": b"fe80::1%eth0", b"port": 1}]},
            r"is not an address or host name",
        ),
        ({b"interval": 5, b"tracker id": 4}, "'tracker id' is the integer 4, not a string"),
    ],
)
def test_bad_values_are_rejected_with_the_key(value: dict[bytes, BValue], message: str) -> None:
    with pytest.raises(TrackerResponseError, match=message):
        parse_announce_response(bencode(value))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"<html>503 Service Unavailable</html>", "tracker response: bencode"),
        (b"d8:intervali5ee junk", "junk after the bencoded value"),
        (b"li5ee", "top level is a list of 1 items, not a dictionary"),
        (b"d8:intervali5e", "tracker response: bencode"),  # truncated
        (b"d8:intervali5e8:intervali6ee", "tracker response: bencode"),  # duplicate key
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(TrackerResponseError, match=message):
        parse_announce_response(body)


def test_oversized_body_refused_before_decoding() -> None:
    body = b"d5:peers" + str(MAX_RESPONSE_SIZE).encode() + b":" + b"\x00" * MAX_RESPONSE_SIZE
    with pytest.raises(TrackerResponseError, match="more than the 2097152 accepted"):
        parse_announce_response(body)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_tracker_response_error(body: bytes) -> None:
    try:
        r = parse_announce_response(body)
    except TrackerResponseError as exc:
        assert str(exc).startswith(("tracker response:", "tracker failure:"))
        return
    assert r.interval >= 0


bvalues: st.SearchStrategy[BValue] = st.recursive(
    st.integers(-(1 << 40), 1 << 40) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"interval",
                    b"peers",
                    b"peers6",
                    b"ip",
                    b"port",
                    b"min interval",
                    b"complete",
                    b"failure reason",
                    b"warning message",
                    b"tracker id",
                    b"x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@given(bvalues)
def test_random_structures_parse_or_raise_tracker_response_error(value: BValue) -> None:
    try:
        r = parse_announce_response(bencode(value))
    except TrackerResponseError:
        return
    assert r.interval >= 0
    assert all(1 <= port <= 65535 for _, port in r.peers)


@given(
    interval=st.integers(0, (1 << 31) - 1),
    min_interval=st.none() | st.integers(0, 1 << 20),
    complete=st.none() | st.integers(0, 1 << 40),
    peers4=st.lists(st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)), max_size=20),
    peers6=st.lists(st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)), max_size=5),
    dict_form=st.booleans(),
)
def test_reply_round_trip(
    interval: int,
    min_interval: int | None,
    complete: int | None,
    peers4: list[tuple[str, int]],
    peers6: list[tuple[object, int]],
    dict_form: bool,
) -> None:
    v6 = [(str(a), p) for a, p in peers6]
    d: dict[bytes, BValue] = {b"interval": interval}
    if min_interval is not None:
        d[b"min interval"] = min_interval
    if complete is not None:
        d[b"complete"] = complete
    if dict_form:
        d[b"peers"] = [{b"ip": h.encode(), b"port": p} for h, p in peers4]
    else:
        d[b"peers"] = encode_peers4(peers4)
    d[b"peers6"] = encode_peers6(v6)
    r = parse_announce_response(bencode(d))
    assert (r.interval, r.min_interval, r.complete) == (interval, min_interval, complete)
    assert r.peers[: len(peers4)] == tuple(peers4)
    assert encode_peers6(r.peers[len(peers4) :]) == d[b"peers6"]


# --- scrape_url (BEP 48 examples) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("announce", "scrape"),
    [
        ("http://example.com/announce", "http://example.com/scrape"),
        ("http://example.com/x/announce", "http://example.com/x/scrape"),
        ("http://example.com/announce.php", "http://example.com/scrape.php"),
        ("http://example.com/a", None),
        ("http://example.com/announce?x2%0644", "http://example.com/scrape?x2%0644"),
        ("http://example.com/announce?x=2/4", "http://example.com/scrape?x=2/4"),
        ("http://example.com/x%064announce", None),
        ("https://example.com:8443/announce/", None),
        ("https://t/p/announce.php?passkey=K#f", "https://t/p/scrape.php?passkey=K#f"),
        ("http://announce.example.com/", None),
        ("udp://tracker:6969/announce", None),
        ("http://[::1/announce", None),
    ],
)
def test_scrape_url(announce: str, scrape: str | None) -> None:
    assert scrape_url(announce) == scrape
