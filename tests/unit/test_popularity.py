"""Tests for swarm.popularity: admission exactly once, private torrents, pins, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.errors import LocalProtocolError, SwarmError
from swarm.popularity import KINDS, Admission, PopularityTable

H1 = b"\x01" * 20
H2 = b"\x02" * 20
H3 = b"\x03" * 20


def h(i: int) -> bytes:
    return i.to_bytes(20, "big")


def test_threshold_crossed_exactly_once() -> None:
    t = PopularityTable()
    assert t.sighting(H1, local_peer=("100.64.0.2", 50000), kind="handshake", now=0.0) is None
    assert t.sighting(H1, local_peer=("100.64.0.2", 6881), kind="dht", now=1.0) is None
    assert not t.admitted(H1)
    adm = t.sighting(
        H1,
        local_peer="100.64.0.3",
        kind="http_announce",
        now=2.0,
        tracker="http://tracker.example/announce",
    )
    assert adm is not None
    assert adm == Admission(H1, ("http://tracker.example/announce",), adm.reason)
    assert "2 local peers" in adm.reason
    assert t.admitted(H1)
    for i in range(20):
        assert t.sighting(H1, local_peer=f"100.64.1.{i}", kind="handshake", now=3.0 + i) is None
    assert t.admitted(H1)


def test_one_subscriber_on_many_ports_is_one_peer() -> None:
    t = PopularityTable(min_local_peers=2)
    for port in range(40000, 40050):
        assert t.sighting(H1, local_peer=("100.64.0.2", port), kind="handshake", now=0.0) is None
    snap = t.get(H1, now=0.0)
    assert snap is not None and snap.local_peers == 1 and snap.sources["handshake"] == 50


def test_min_bytes() -> None:
    t = PopularityTable(min_local_peers=2, min_bytes=1000)
    assert t.sighting(H1, local_peer="a", kind="handshake", now=0, bytes_seen=400) is None
    assert t.sighting(H1, local_peer="b", kind="handshake", now=1, bytes_seen=400) is None
    adm = t.sighting(H1, local_peer="b", kind="handshake", now=2, bytes_seen=200)
    assert adm is not None and adm.info_hash == H1
    snap = t.get(H1, now=2)
    assert snap is not None and snap.bytes_seen == 1000


def test_private_never_admitted() -> None:
    t = PopularityTable()
    t.mark_private(H1, now=0.0)
    for i in range(10):
        assert t.sighting(H1, local_peer=f"10.0.0.{i}", kind="handshake", now=1.0) is None
    assert t.pin(H1, now=2.0) is None
    assert not t.admitted(H1) and not t.steerable(H1)
    snap = t.get(H1, now=2.0)
    assert snap is not None and snap.private is True and snap.pinned and not snap.admitted


def test_private_flag_learned_after_admission_revokes_it() -> None:
    t = PopularityTable()
    t.sighting(H1, local_peer="a", kind="handshake", now=0.0)
    assert t.sighting(H1, local_peer="b", kind="handshake", now=0.0) is not None
    assert t.admitted(H1)
    assert not t.steerable(H1)  # flag unknown: no steering yet
    t.mark_private(H1, now=1.0)
    assert not t.admitted(H1) and not t.steerable(H1)
    assert t.sighting(H1, local_peer="c", kind="handshake", now=2.0) is None
    assert not t.admitted(H1)


def test_steerable_needs_known_public_flag() -> None:
    t = PopularityTable()
    t.mark_private(H1, now=0.0, private=False)
    assert not t.steerable(H1)
    t.sighting(H1, local_peer="a", kind="handshake", now=0.0)
    t.sighting(H1, local_peer="b", kind="handshake", now=0.0)
    assert t.admitted(H1) and t.steerable(H1)
    t.pin(H2, now=0.0)
    assert t.admitted(H2) and not t.steerable(H2)
    t.mark_private(H2, now=0.0, private=False)
    assert t.steerable(H2)


def test_pin_admits_once() -> None:
    t = PopularityTable()
    adm = t.pin(H1, now=5.0)
    assert adm is not None and adm.reason == "pinned" and adm.trackers == ()
    assert t.admitted(H1)
    assert t.pin(H1, now=6.0) is None
    assert t.sighting(H1, local_peer="a", kind="handshake", now=7.0) is None
    assert t.sighting(H1, local_peer="b", kind="handshake", now=7.0) is None


def test_unadmit_requires_fresh_popularity() -> None:
    t = PopularityTable()
    t.sighting(H1, local_peer="a", kind="handshake", now=0.0)
    assert t.sighting(H1, local_peer="b", kind="handshake", now=0.0) is not None
    t.unadmit(H1)
    assert not t.admitted(H1)
    assert t.sighting(H1, local_peer="a", kind="handshake", now=1.0) is None
    assert t.sighting(H1, local_peer="b", kind="handshake", now=1.0) is not None


def test_peer_ttl_forgets_old_peers() -> None:
    t = PopularityTable(peer_ttl=100.0)
    t.sighting(H1, local_peer="a", kind="handshake", now=0.0)
    assert t.sighting(H1, local_peer="b", kind="handshake", now=101.0) is None
    snap = t.get(H1, now=101.0)
    assert snap is not None and snap.local_peers == 1
    assert t.sighting(H1, local_peer="a", kind="handshake", now=150.0) is not None


def test_peers_per_entry_capped() -> None:
    t = PopularityTable(min_local_peers=2, max_peers_per_entry=3)
    for i in range(100):
        t.sighting(H1, local_peer=f"10.0.0.{i}", kind="dht", now=float(i))
    snap = t.get(H1, now=100.0)
    assert snap is not None and snap.local_peers == 3


def test_trackers_bounded_and_deduplicated() -> None:
    t = PopularityTable(min_local_peers=3, max_trackers=2)
    for url in ["udp://a:1", "udp://a:1", "http://b/announce", "http://c/announce", "x" * 600]:
        t.sighting(H1, local_peer="a", kind="udp_announce", now=0.0, tracker=url)
    t.sighting(H1, local_peer="b", kind="udp_announce", now=0.0)
    adm = t.sighting(H1, local_peer="c", kind="udp_announce", now=0.0)
    assert adm is not None and adm.trackers == ("udp://a:1", "http://b/announce")


def test_lru_eviction_of_non_admitted() -> None:
    t = PopularityTable(max_entries=3)
    t.pin(H1, now=0.0)
    t.sighting(H2, local_peer="a", kind="handshake", now=1.0)
    t.sighting(H3, local_peer="a", kind="handshake", now=2.0)
    t.sighting(H2, local_peer="a", kind="handshake", now=3.0)  # H2 now more recent than H3
    t.sighting(h(4), local_peer="a", kind="handshake", now=4.0)
    assert H3 not in t and H2 in t and H1 in t and h(4) in t
    t.sighting(h(5), local_peer="a", kind="handshake", now=5.0)
    assert H2 not in t and H1 in t  # the pinned entry is never evicted


def test_full_of_admitted_entries() -> None:
    t = PopularityTable(max_entries=2)
    t.pin(H1, now=0.0)
    t.pin(H2, now=0.0)
    assert t.sighting(H3, local_peer="a", kind="handshake", now=1.0) is None
    assert H3 not in t and len(t) == 2
    with pytest.raises(SwarmError):
        t.pin(H3, now=1.0)


def test_snapshot_order_and_contents() -> None:
    t = PopularityTable(min_local_peers=5)
    t.sighting(H1, local_peer="a", kind="handshake", now=0.0, bytes_seen=10)
    for ip in "abc":
        t.sighting(H2, local_peer=ip, kind="dht", now=1.0)
    t.sighting(H2, local_peer="a", kind="lsd", now=2.0)
    snap = t.snapshot(now=3.0)
    assert [s.info_hash for s in snap] == [H2, H1]
    s2 = snap[0]
    assert (s2.local_peers, s2.first_seen, s2.last_seen, s2.admitted, s2.private) == (
        3,
        1.0,
        2.0,
        False,
        None,
    )
    assert dict(s2.sources) == {"dht": 3, "lsd": 1}


def test_misuse_is_loud() -> None:
    t = PopularityTable()
    with pytest.raises(LocalProtocolError):
        t.sighting(b"short", local_peer="a", kind="handshake", now=0.0)
    with pytest.raises(LocalProtocolError):
        t.sighting(H1, local_peer="a", kind="carrier pigeon", now=0.0)
    with pytest.raises(LocalProtocolError):
        t.sighting(H1, local_peer="a", kind="dht", now=0.0, bytes_seen=-1)
    with pytest.raises(LocalProtocolError):
        PopularityTable(min_local_peers=5, max_peers_per_entry=4)
    with pytest.raises(LocalProtocolError):
        PopularityTable(max_entries=0)


ops = st.lists(
    st.tuples(
        st.sampled_from(["sight", "sight", "sight", "sight", "pin", "private", "unadmit"]),
        st.integers(0, 40),  # info_hash
        st.integers(0, 6),  # peer
        st.sampled_from(sorted(KINDS)),
        st.integers(0, 50),  # time step
    ),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(1, 12), st.integers(1, 3))
def test_random_workload_keeps_invariants(
    workload: list[tuple[str, int, int, str, int]], max_entries: int, threshold: int
) -> None:
    t = PopularityTable(
        max_entries=max_entries,
        min_local_peers=threshold,
        max_peers_per_entry=4,
        peer_ttl=200.0,
    )
    now = 0.0
    admitted: set[bytes] = set()
    private: set[bytes] = set()
    for op, n, peer, kind, step in workload:
        now += step
        ih = h(n)
        if op == "sight":
            adm = t.sighting(ih, local_peer=f"10.0.0.{peer}", kind=kind, now=now)
            if adm is not None:
                assert ih not in admitted, "admitted twice"
                assert ih not in private
                admitted.add(ih)
        elif op == "pin":
            try:
                adm = t.pin(ih, now=now)
            except SwarmError:
                assert len(admitted) == max_entries
                continue
            if adm is not None:
                assert ih not in admitted and ih not in private
                admitted.add(ih)
        elif op == "private":
            t.mark_private(ih, now=now)
            if ih in t:
                private.add(ih)
                admitted.discard(ih)
        else:
            t.unadmit(ih)
            admitted.discard(ih)
        # Invariants after every step.
        assert len(t) <= max_entries
        assert all(t.admitted(x) for x in admitted)
        assert all(x in t for x in admitted)
        snap = t.snapshot(now=now)
        assert {s.info_hash for s in snap if s.admitted} == admitted
        for s in snap:
            assert s.local_peers <= 4
            assert not (s.admitted and s.private)
        # An evicted private entry forgets its flag; a tracked one keeps it.
        private &= {s.info_hash for s in snap}
