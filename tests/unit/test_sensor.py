"""The sensor: sightings become one admission; replies are steered only for steerable torrents,
matched to the subscriber's request; outside peers are learnt from replies (no sockets)."""

from __future__ import annotations

import struct

from swarm.bencode import bdecode, bencode
from swarm.compact import decode_peers4, encode_peers4
from swarm.popularity import Admission, PopularityTable
from swarm.sensor import Sensor
from swarm.tracker_udp import decode_announce_response, encode_announce_response

IH = bytes(range(20))
BOX = ("10.0.0.1", 6881)
SUB = ("10.0.0.7", 51413)
TRACKER = ("192.0.2.9", 6969)
SEED = ("192.0.2.50", 6881)


class World:
    def __init__(self, min_local_peers: int = 1) -> None:
        self.now = 100.0
        self.admitted: list[Admission] = []
        self.learnt: list[tuple[bytes, list[tuple[str, int]]]] = []
        self.popularity = PopularityTable(min_local_peers=min_local_peers)
        self.sensor = Sensor(
            box=BOX,
            popularity=self.popularity,
            admit=self.admitted.append,
            learn_peers=lambda ih, peers: self.learnt.append((ih, peers)),
            clock=lambda: self.now,
        )

    def make_steerable(self) -> None:
        self.popularity.mark_private(IH, now=self.now, private=False)


def _udp_announce(tid: int) -> bytes:
    return struct.pack(
        ">QII20s20sQQQIIIiH", 0x1234, 1, tid, IH, b"-LT2110-abcdefghijkl", 0, 100, 0, 2, 0, 7, -1,
        SUB[1],
    )  # fmt: skip


def _query(tid: bytes) -> bytes:
    return bencode(
        {b"a": {b"id": b"n" * 20, b"info_hash": IH}, b"q": b"get_peers", b"t": tid, b"y": b"q"}
    )


def _reply(tid: bytes) -> bytes:
    return bencode(
        {
            b"r": {b"id": b"m" * 20, b"token": b"tok", b"values": [encode_peers4([SEED])]},
            b"t": tid,
            b"y": b"r",
        }
    )


def test_http_announces_admit_once_and_steer_only_once_public() -> None:
    w = World(min_local_peers=2)
    body = bencode({b"interval": 1800, b"peers": encode_peers4([SEED])})
    query = b"info_hash=" + b"".join(b"%%%02X" % c for c in IH) + b"&peer_id=-LT-&port=6881"
    rewrite = w.sensor.http_announce(SUB[0], b"http://192.0.2.9:6969/announce?x", query)
    assert rewrite is not None and w.admitted == []
    assert rewrite(body, None) is None  # not admitted: untouched, nothing learnt
    w.sensor.http_announce("10.0.0.8", b"http://192.0.2.9:6969/announce", query)
    assert [a.info_hash for a in w.admitted] == [IH]
    assert w.admitted[0].trackers == ("http://192.0.2.9:6969/announce",)
    w.sensor.http_announce("10.0.0.9", b"http://192.0.2.9:6969/announce", query)
    assert len(w.admitted) == 1  # exactly once
    assert rewrite(body, None) is None  # admitted, but not yet known to be public
    assert w.learnt == [(IH, [SEED])]
    w.make_steerable()
    steered = rewrite(body, None)
    assert steered is not None
    reply = bdecode(steered)
    assert isinstance(reply, dict) and isinstance(reply[b"peers"], bytes)
    assert decode_peers4(reply[b"peers"])[0] == BOX and SEED in decode_peers4(reply[b"peers"])


def test_udp_tracker_replies_are_matched_to_the_subscribers_request() -> None:
    w = World()
    w.sensor.udp_tracker_request(SUB, TRACKER, _udp_announce(77))
    assert [a.trackers for a in w.admitted] == [("udp://192.0.2.9:6969/announce",)]
    w.make_steerable()
    reply = encode_announce_response(77, 1800, 1, 1, [SEED])
    other_tid = encode_announce_response(78, 1800, 1, 1, [SEED])
    assert w.sensor.udp_tracker_response(SUB, TRACKER, other_tid) is None
    assert w.sensor.udp_tracker_response(("10.0.0.99", 1), TRACKER, reply) is None
    steered = w.sensor.udp_tracker_response(SUB, TRACKER, reply)
    assert steered is not None
    assert decode_announce_response(steered).peers[0] == BOX
    # The request is matched once: a replayed reply is left alone.
    assert w.sensor.udp_tracker_response(SUB, TRACKER, reply) is None
    assert w.sensor.steered["udp_tracker"] == 1


def test_dht_get_peers_replies_are_steered_and_teach_outside_peers() -> None:
    w = World()
    w.sensor.dht_query(SUB, SEED, _query(b"aa"))
    assert [a.info_hash for a in w.admitted] == [IH]
    w.make_steerable()
    steered = w.sensor.dht_response(SUB, SEED, _reply(b"aa"))
    assert steered is not None
    msg = bdecode(steered)
    assert isinstance(msg, dict)
    r = msg[b"r"]
    assert isinstance(r, dict) and isinstance(r[b"values"], list)
    assert next(decode_peers4(v)[0] for v in r[b"values"] if isinstance(v, bytes)) == BOX
    assert (IH, [SEED]) in w.learnt
    assert w.sensor.dht_response(SUB, SEED, _reply(b"bb")) is None  # no such query


def test_private_torrents_are_never_admitted_or_steered() -> None:
    w = World()
    w.popularity.mark_private(IH, now=w.now)
    w.sensor.dht_query(SUB, SEED, _query(b"aa"))
    assert w.admitted == []
    assert w.sensor.dht_response(SUB, SEED, _reply(b"aa")) is None


def test_garbage_is_ignored() -> None:
    w = World()
    w.sensor.udp_tracker_request(SUB, TRACKER, b"\x00" * 40)
    w.sensor.dht_query(SUB, SEED, b"d1:xe")
    assert w.sensor.http_announce(SUB[0], b"http://x/announce", b"info_hash=short") is None
    assert w.sensor.udp_tracker_response(SUB, TRACKER, b"\x00\x00") is None
    assert w.admitted == []
