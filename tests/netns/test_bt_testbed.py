"""The BitTorrent testbed itself, with no swarmcache running: plain kernel forwarding on gw.

Real clients no one here wrote (libtorrent via lt_node.py, aria2c) and a real tracker
(opentracker) swap real torrents across the gateway namespace. These tests prove the harness
the cache tests build on, and measure the baseline the cache must beat: without a cache, at
least every payload byte crosses the gateway's uplink.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns.bt import (
    LtNode,
    Opentracker,
    aria2_download,
    gw_downlink,
    gw_uplink,
    make_payload,
    make_torrent,
    needs_bt_tools,
    sha1_file,
    tbf,
    tree_sha256,
    veth_bytes,
)
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

NET = Testbed.NET_IP
SUB = Testbed.SUB_IP
MiB = 1 << 20


_bt_tools = needs_bt_tools("opentracker", "aria2c", "tc")


@dataclass
class Dirs:
    seed: Path
    lt: Path
    aria: Path
    work: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    d = Dirs(tmp_path / "seed", tmp_path / "dl-lt", tmp_path / "dl-aria", tmp_path / "work")
    for p in (d.seed, d.lt, d.aria, d.work):
        p.mkdir()
    return d


def uplink_rx(testbed: Testbed) -> int:
    """Bytes the gateway received from the internet side."""
    return veth_bytes(testbed, "gw", gw_uplink(testbed))[0]


def swarm_through_gateway(testbed: Testbed, dirs: Dirs, payload: Path) -> None:
    """Seed ``payload`` from net with an HTTP tracker in net; a libtorrent and an aria2c
    leecher in sub fetch it at the same time; both copies must equal the original and the
    gateway's uplink must have carried at least one full copy."""
    torrent = dirs.work / "t.torrent"
    tracker = Opentracker(testbed, "net", NET)
    _, info_hash = make_torrent(payload, trackers=[tracker.http_url], out=torrent)
    tracker.allow(info_hash)  # before start: no window in which the seed's announce is refused
    seed = LtNode(testbed, "net", f"{NET}:6881", torrent, dirs.seed, dirs.work, seed=True)
    with tracker, seed:
        seed.wait_seeding()
        before = uplink_rx(testbed)
        leecher = LtNode(testbed, "sub", f"{SUB}:6881", torrent, dirs.lt, dirs.work)
        with leecher:
            aria2_download(testbed, "sub", torrent, dirs.aria, timeout=40)
            status = leecher.wait_complete(timeout=40)
        crossed = uplink_rx(testbed) - before
    original = tree_sha256(payload)
    assert tree_sha256(dirs.lt / payload.name) == original
    assert tree_sha256(dirs.aria / payload.name) == original
    assert status["tracker_replies"] >= 1, "the libtorrent leecher never heard from the tracker"
    size = sum(p.stat().st_size for p in [payload, *payload.rglob("*")] if p.is_file())
    assert crossed >= size, f"only {crossed} bytes crossed the uplink for a {size}-byte payload"


def test_single_file_torrent_reaches_libtorrent_and_aria2_through_the_gateway(
    testbed: Testbed, dirs: Dirs
) -> None:
    payload = make_payload(dirs.seed, "video.bin", 20 * MiB, seed=1)
    swarm_through_gateway(testbed, dirs, payload)


def test_multi_file_torrent_reaches_both_clients_intact(testbed: Testbed, dirs: Dirs) -> None:
    # Sizes straddle the 256 KiB piece boundaries, and one file is a single byte.
    files = {"a.bin": 3 * MiB + 17, "sub/b.bin": 1, "c.bin": 2 * MiB - 5}
    payload = make_payload(dirs.seed, "album", files, seed=2)
    swarm_through_gateway(testbed, dirs, payload)
    assert (dirs.aria / "album" / "sub" / "b.bin").stat().st_size == 1


def test_udp_tracker_announce_finds_the_seed(testbed: Testbed, dirs: Dirs) -> None:
    payload = make_payload(dirs.seed, "udp.bin", 8 * MiB, seed=3)
    torrent = dirs.work / "udp.torrent"
    tracker = Opentracker(testbed, "net", NET)
    # The torrent names only the UDP tracker, so the leecher can learn of the seed no other way.
    _, info_hash = make_torrent(payload, trackers=[tracker.udp_url], out=torrent)
    tracker.allow(info_hash)
    seed = LtNode(testbed, "net", f"{NET}:6881", torrent, dirs.seed, dirs.work, seed=True)
    with tracker, seed:
        seed.wait_seeding()
        before = uplink_rx(testbed)
        with LtNode(testbed, "sub", f"{SUB}:6881", torrent, dirs.lt, dirs.work) as leecher:
            status = leecher.wait_complete(timeout=30)
        crossed = uplink_rx(testbed) - before
    assert sha1_file(dirs.lt / "udp.bin") == sha1_file(payload)
    assert status["tracker_replies"] >= 1, status
    assert crossed >= payload.stat().st_size


def test_tracker_serves_only_whitelisted_torrents(testbed: Testbed, dirs: Dirs) -> None:
    listed = "11" * 20
    with Opentracker(testbed, "net", NET, info_hashes=[listed]) as tracker:
        refused = tracker.announce("sub", "22" * 20)
        assert b"not authorized" in refused
        assert b"5:peers" in tracker.announce("sub", listed)
        tracker.allow("22" * 20)  # SIGHUP rereads the whitelist in the chroot

        def accepted() -> bool:
            return b"5:peers" in tracker.announce("sub", "22" * 20)

        deadline = time.monotonic() + 5
        while not accepted():
            assert time.monotonic() < deadline, "a newly allowed info_hash stayed refused"
            time.sleep(0.1)


def test_direct_peers_without_any_tracker(testbed: Testbed, dirs: Dirs) -> None:
    payload = make_payload(dirs.seed, "direct.bin", 4 * MiB, seed=4)
    torrent = dirs.work / "direct.torrent"
    make_torrent(payload, trackers=[], out=torrent)
    seed_addr = f"{NET}:6881"
    with LtNode(testbed, "net", seed_addr, torrent, dirs.seed, dirs.work, seed=True) as seed:
        seed.wait_seeding(announced=False)
        leecher = LtNode(
            testbed, "sub", f"{SUB}:6881", torrent, dirs.lt, dirs.work, peers=[seed_addr]
        )
        with leecher:
            status = leecher.wait_complete(timeout=30)
        aria2_download(testbed, "sub", torrent, dirs.aria, peers=[seed_addr], timeout=30)
    assert status["tracker_replies"] == 0
    assert sha1_file(dirs.lt / "direct.bin") == sha1_file(payload)
    assert sha1_file(dirs.aria / "direct.bin") == sha1_file(payload)


def test_failures_are_reported_with_the_clients_own_words(testbed: Testbed, dirs: Dirs) -> None:
    payload = make_payload(dirs.seed, "lonely.bin", 1 * MiB, seed=5)
    torrent = dirs.work / "lonely.torrent"
    make_torrent(payload, out=torrent)
    # Nobody listens on 10.77.2.2:7000: both clients must give up and say why.
    nobody = f"{NET}:7000"
    leecher = LtNode(
        testbed, "sub", f"{SUB}:6881", torrent, dirs.lt, dirs.work, peers=[nobody], timeout=2
    )
    with leecher:  # runs while aria2 fails, to keep the test short
        with pytest.raises(AssertionError, match=r"(?s)aria2c did not finish.*Download Results"):
            aria2_download(testbed, "sub", torrent, dirs.aria, peers=[nobody], timeout=3)
        with pytest.raises(AssertionError, match=r"did not complete.*timeout after 2s"):
            leecher.wait_complete(timeout=15)
    assert leecher.status()["progress"] == 0.0


def test_tbf_caps_the_rate_towards_subscribers(testbed: Testbed, dirs: Dirs) -> None:
    payload = make_payload(dirs.seed, "shaped.bin", 4 * MiB, seed=6)
    torrent = dirs.work / "shaped.torrent"
    make_torrent(payload, out=torrent)
    rate_bit = 16_000_000
    tbf(testbed, "gw", gw_downlink(testbed), "16mbit")
    seed_addr = f"{NET}:6881"
    with LtNode(testbed, "net", seed_addr, torrent, dirs.seed, dirs.work, seed=True) as seed:
        seed.wait_seeding(announced=False)
        leecher = LtNode(
            testbed, "sub", f"{SUB}:6881", torrent, dirs.lt, dirs.work, peers=[seed_addr]
        )
        with leecher:
            status = leecher.wait_complete(timeout=30)
    assert sha1_file(dirs.lt / "shaped.bin") == sha1_file(payload)
    # Unshaped, this leecher finishes within about 0.6 s of starting (startup included).
    floor = payload.stat().st_size * 8 / rate_bit  # 2.1 s at 16 Mbit/s
    elapsed = status["elapsed"]
    assert elapsed >= floor * 0.9, f"{elapsed:.2f}s is faster than the {floor:.2f}s a cap allows"
    tbf(testbed, "gw", gw_downlink(testbed), None)
    qdisc = testbed.run("gw", "tc", "qdisc", "show", "dev", gw_downlink(testbed)).stdout
    assert "tbf" not in qdisc
