"""The BitTorrent cache end to end: the box fetches each piece from outside once and seeds
every local peer, with real clients no one here wrote (libtorrent, aria2c, opentracker).

Topology: libtorrent seeds and opentracker in ``net``; swarmcache in ``gw`` (seeder on
10.77.1.1:6881, local tracker on 10.77.1.1:6969); leechers in ``sub`` pointed at the box.
What is asserted is what a subscriber or an operator would see: every file's hash, bytes on
the gateway's uplink, the box's metrics and its operator commands' output.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.peerwire import (
    NEED_DATA,
    HaveAll,
    PeerWireReader,
    Request,
    Unchoke,
    encode,
    encode_handshake,
    make_reserved,
    piece_header,
)
from tests.netns.bt import (
    LtNode,
    Opentracker,
    aria2_download,
    make_payload,
    make_torrent,
    needs_bt_tools,
    sha1_file,
    tbf,
    tree_sha256,
)
from tests.netns.gateway import ROOT, Gateway
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

NET = Testbed.NET_IP
SUB = Testbed.SUB_IP
BOX = "10.77.1.1"
MiB = 1 << 20
ADMIN = "http://127.0.0.1:9480"


_bt_tools = needs_bt_tools("opentracker", "aria2c", "tc")


class Box:
    """The gateway daemon with BitTorrent on, and the operator's view of it."""

    def __init__(self, testbed: Testbed, tmp: Path, *, commit_interval: float = 1.0) -> None:
        self.tb = testbed
        self.gw = Gateway(testbed, tmp)
        self.config = tmp / "bt.toml"
        self.config.write_text(
            "[bittorrent]\n"
            f'listen = "{BOX}:6881"\n'
            f'tracker_listen = "{BOX}:6969"\n'
            f"commit_interval = {commit_interval}\n"
        )

    def start(self) -> None:
        self.gw.start_daemon("--no-intercept", "--config", str(self.config))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.tb.run(
            "gw",
            sys.executable,
            "-m",
            "swarmcache",
            *args,
            "--admin",
            ADMIN,
            check=False,
            timeout=timeout,
        )

    def torrents(self) -> list[dict[str, object]]:
        res = self.cli("torrents", "--json")
        assert res.returncode == 0, res.stderr
        rows: list[dict[str, object]] = json.loads(res.stdout)
        return rows

    def metric(self, name: str) -> float:
        return self.gw.metrics().get(name, 0.0)


@pytest.fixture
def box(testbed: Testbed, tmp_path: Path) -> Iterator[Box]:
    b = Box(testbed, tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.gw.stop_daemon()


def _dirs(tmp: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        out.append(tmp / name)
    return out


def test_pinned_torrent_is_fetched_once_and_seeded_to_five_local_leechers(
    testbed: Testbed, box: Box, tmp_path: Path
) -> None:
    seed_dir, work = _dirs(tmp_path, "seed", "work")
    size = 24 * MiB
    payload = make_payload(seed_dir, "film.bin", size, seed=11)
    torrent = work / "film.torrent"
    tracker = Opentracker(testbed, "net", NET)
    _, info_hash = make_torrent(payload, trackers=[tracker.http_url], out=torrent)
    tracker.allow(info_hash)
    # The same info dict announced to the box's local tracker, for aria2 (which cannot be
    # told a peer address): the info_hash is unchanged, only the tracker differs.
    local_torrent = work / "film-local.torrent"
    _, same_hash = make_torrent(
        payload, trackers=[f"http://{BOX}:6969/announce"], out=local_torrent
    )
    assert same_hash == info_hash
    original = sha1_file(payload)
    seeds = [
        LtNode(testbed, "net", f"{NET}:{port}", torrent, seed_dir, work, seed=True, enc="enabled")
        for port in (6881, 6882)
    ]
    with tracker, seeds[0], seeds[1]:
        for s in seeds:
            s.wait_seeding()
        uplink_before = box.gw.uplink_rx_bytes()
        pinned = box.cli("pin", str(torrent))
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
        assert "complete" in pinned.stdout
        fetched = box.gw.uplink_rx_bytes() - uplink_before
        rows = {r["info_hash"]: r for r in box.torrents()}
        assert rows[info_hash]["complete"] and rows[info_hash]["pinned"]

        # Five local leechers pointed at the box (its local tracker; libtorrent is also given
        # the box's address): three libtorrent, two aria2c.
        leechers = []
        for i in range(3):
            (dl,) = _dirs(tmp_path, f"lt{i}")
            node = LtNode(
                testbed, "sub", f"{SUB}:{6900 + i}", local_torrent, dl, work,
                peers=[f"{BOX}:6881"], timeout=90,
            )  # fmt: skip
            leechers.append((node, dl))
        for node, _ in leechers:
            node.start()
        aria_dirs = _dirs(tmp_path, "aria0", "aria1")
        errors: list[BaseException] = []

        def aria(i: int) -> None:
            try:
                aria2_download(
                    testbed, "sub", local_torrent, aria_dirs[i], listen_port=6990 + i,
                    timeout=90, exclude_trackers=False,
                )  # fmt: skip
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=aria, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for node, _ in leechers:
            node.wait_complete(timeout=90)
        for t in threads:
            t.join(timeout=100)
        for node, _ in leechers:
            node.stop()
        assert not errors, errors
        total_fetched = box.gw.uplink_rx_bytes() - uplink_before

    for _, dl in leechers:
        assert sha1_file(dl / "film.bin") == original
    for d in aria_dirs:
        assert sha1_file(d / "film.bin") == original
    # Without the box each of the five would have pulled its own copy over the uplink.
    assert fetched <= size * 1.05, f"pinning moved {fetched} bytes for a {size}-byte torrent"
    assert total_fetched <= size * 1.05, f"{total_fetched} uplink bytes for {size} payload"
    served = box.metric("swarmcache_bt_local_served_bytes_total")
    assert served >= size, f"the box served only {served} bytes to local peers"
    assert box.metric("swarmcache_bt_pieces_fetched_total") == 96  # 24 MiB / 256 KiB
    row = {r["info_hash"]: r for r in box.torrents()}[info_hash]
    assert row["local_peers_served"] >= 1


def _evil_seed(host: str, port: int, info_hash: bytes) -> None:
    """A hostile outside peer: claims every piece and answers each request with garbage.
    Written here because no real client can be told to lie; it speaks real peer wire.
    Runs until killed; prints "ready" once it listens."""
    listener = socket.create_server((host, port))
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_evil_conn, args=(conn, info_hash), daemon=True).start()


def _evil_conn(conn: socket.socket, info_hash: bytes) -> None:
    reader = PeerWireReader()
    try:
        conn.sendall(encode_handshake(info_hash, b"-EV0001-" + b"x" * 12, make_reserved()))
        conn.sendall(encode(HaveAll()) + encode(Unchoke()))
        while data := conn.recv(65536):
            reader.feed(data)
            while (event := reader.next_event()) is not NEED_DATA:
                if isinstance(event, Request):
                    junk = bytes([0xEE]) * event.length
                    conn.sendall(piece_header(event.index, event.begin, event.length) + junk)
    except (OSError, ValueError):
        return
    finally:
        conn.close()


@contextlib.contextmanager
def _running_evil_seed(testbed: Testbed, info_hash: str, port: int) -> Iterator[None]:
    """The evil seed in ``net`` (a child process, so it lives in that namespace)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.netns.test_bt_cache import _evil_seed;"
        "_evil_seed(sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4]))"
    )
    proc = testbed.popen(
        "net", sys.executable, "-c", code, str(ROOT), NET, str(port), info_hash,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "the evil seed did not start"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_a_seed_sending_corrupt_data_is_banned_and_nothing_corrupt_is_stored(
    testbed: Testbed, box: Box, tmp_path: Path
) -> None:
    seed_dir, work = _dirs(tmp_path, "seed", "work")
    payload = make_payload(seed_dir, "iso.bin", 8 * MiB, seed=12)
    torrent = work / "iso.torrent"
    _, info_hash = make_torrent(payload, trackers=[], out=torrent)
    good = LtNode(testbed, "net", f"{NET}:6881", torrent, seed_dir, work, seed=True)
    with _running_evil_seed(testbed, info_hash, 6999), good:
        good.wait_seeding(announced=False)
        # The box learns both peers from the magnet link.
        magnet = f"magnet:?xt=urn:btih:{info_hash}&x.pe={NET}:6999&x.pe={NET}:6881"
        pinned = box.cli("pin", magnet)
        assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    (dl,) = _dirs(tmp_path, "dl")
    with LtNode(testbed, "sub", f"{SUB}:6900", torrent, dl, work, peers=[f"{BOX}:6881"]) as lt:
        lt.wait_complete(timeout=60)
    assert sha1_file(dl / "iso.bin") == sha1_file(payload)
    assert box.metric("swarmcache_bt_bad_pieces_total") >= 1
    assert box.metric("swarmcache_bt_banned_peers_total") >= 1


def test_kill_9_mid_download_resumes_without_refetching_verified_pieces(
    testbed: Testbed, tmp_path: Path
) -> None:
    box = Box(testbed, tmp_path, commit_interval=0.3)
    box.start()
    seed_dir, work = _dirs(tmp_path, "seed", "work")
    size = 16 * MiB
    payload = make_payload(seed_dir, "big.bin", size, seed=13)
    torrent = work / "big.torrent"
    # Only a UDP tracker (BEP 15) names the seed, to the box as to everyone.
    tracker = Opentracker(testbed, "net", NET)
    _, info_hash = make_torrent(payload, trackers=[tracker.udp_url], out=torrent)
    tracker.allow(info_hash)
    # 40 Mbit/s toward the box: 16 MiB take about 3.4 s, time to kill it half-way.
    tbf(testbed, "net", f"{testbed.prefix}n", "40mbit")
    try:
        seed = LtNode(testbed, "net", f"{NET}:6881", torrent, seed_dir, work, seed=True)
        with tracker, seed:
            seed.wait_seeding()
            before = box.gw.uplink_rx_bytes()
            res = box.cli("pin", "--no-wait", str(torrent))
            assert res.returncode == 0, res.stdout + res.stderr
            deadline = time.monotonic() + 30
            have = 0
            while time.monotonic() < deadline:
                rows = {r["info_hash"]: r for r in box.torrents()}
                have = int(rows.get(info_hash, {}).get("have", 0) or 0)  # type: ignore[call-overload]
                if have >= 24:  # of 64 pieces
                    break
                time.sleep(0.1)
            assert have >= 24, "the download did not get going"
            time.sleep(0.6)  # at least one commit after those pieces
            box.gw.kill_daemon()
            box.start()
            rows = {r["info_hash"]: r for r in box.torrents()}
            resumed_with = int(rows[info_hash]["have"])  # type: ignore[call-overload]
            assert resumed_with >= 20, f"only {resumed_with} pieces survived the kill"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = {r["info_hash"]: r for r in box.torrents()}
                if rows[info_hash]["complete"]:
                    break
                time.sleep(0.2)
            assert rows[info_hash]["complete"], rows[info_hash]
            fetched = box.gw.uplink_rx_bytes() - before
        (dl,) = _dirs(tmp_path, "dl")
        with LtNode(
            testbed, "sub", f"{SUB}:6900", torrent, dl, work, peers=[f"{BOX}:6881"]
        ) as leecher:
            leecher.wait_complete(timeout=60)
        assert sha1_file(dl / "big.bin") == sha1_file(payload)
        # Pieces lost in the kill (at most the uncommitted ones) are the only refetch.
        assert fetched <= size * 1.15, f"{fetched} uplink bytes for a {size}-byte torrent"
    finally:
        box.gw.stop_daemon()


def test_a_hybrid_torrent_from_a_magnet_is_cached_served_and_purged(
    testbed: Testbed, box: Box, tmp_path: Path
) -> None:
    """A v1+v2 hybrid, multi-file torrent (with BEP 47 padding files) known only by its magnet
    link: the box gets the info dict from the seed (BEP 9), the pieces through the v1 layout,
    serves a libtorrent leecher, and `purge` takes it out of the cache."""
    seed_dir, work = _dirs(tmp_path, "seed", "work")
    files = {"a.bin": 3 * MiB + 1000, "b/c.bin": 5 * MiB + 7, "d.txt": 100}
    payload = make_payload(seed_dir, "album", files, seed=14)
    torrent = work / "album.torrent"
    _, info_hash = make_torrent(payload, trackers=[], out=torrent, v1_only=False)
    with LtNode(testbed, "net", f"{NET}:6881", torrent, seed_dir, work, seed=True) as seed:
        seed.wait_seeding(announced=False)
        res = box.cli("pin", f"magnet:?xt=urn:btih:{info_hash}&dn=album&x.pe={NET}:6881")
        assert res.returncode == 0, res.stdout + res.stderr
    (dl,) = _dirs(tmp_path, "dl")
    with LtNode(testbed, "sub", f"{SUB}:6900", torrent, dl, work, peers=[f"{BOX}:6881"]) as lt:
        lt.wait_complete(timeout=60)
    assert tree_sha256(dl / "album") == tree_sha256(payload)
    row = {r["info_hash"]: r for r in box.torrents()}[info_hash]
    assert row["name"] == "album" and row["complete"]

    purged = box.cli("purge", info_hash)
    assert purged.returncode == 0, purged.stderr
    assert info_hash not in {r["info_hash"] for r in box.torrents()}
    assert not list((box.gw.cache_dir / "torrents").glob(f"{info_hash}*"))
    again = box.cli("purge", info_hash)
    assert again.returncode == 4 and "no such torrent" in again.stderr
