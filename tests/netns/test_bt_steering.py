"""BitTorrent without client configuration: the box senses what subscribers fetch, admits a
torrent by itself, and steers later local peers to itself (tracker replies over HTTP and UDP,
DHT replies), through the real gateway with real clients (libtorrent, opentracker).

Each test: libtorrent seeds (and opentracker, or a small DHT) in ``net``; swarmcache in
``gw`` with interception and steering on (admission after one local peer, so the first client
makes the box fetch the torrent); client 1 in ``sub`` downloads normally; once the box holds
the torrent, the uplink is slowed to a WAN-like rate and clients 2-4 download: most of their
bytes must come from the box, counted on the gateway's uplink and by the box's metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.bt import (
    LtNode,
    Opentracker,
    make_payload,
    make_torrent,
    needs_bt_tools,
    sha1_file,
    tbf,
)
from tests.netns.gateway import Gateway
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

NET = Testbed.NET_IP
SUB = Testbed.SUB_IP
BOX = "10.77.1.1"
MiB = 1 << 20
SIZE = 24 * MiB


_bt_tools = needs_bt_tools("opentracker", "tc")


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(testbed, tmp_path)
    config = tmp_path / "steer.toml"
    config.write_text(
        "[bittorrent]\n"
        f'listen = "{BOX}:6881"\n'
        "steering = true\n"
        "admit_min_local_peers = 1\n"
        "tracker_ports = [6969]\n"
        "commit_interval = 0.5\n"
    )
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def _api(gw: Gateway, path: str) -> Any:
    out = gw.tb.run(gw.tb.gw, "curl", "-sf", f"http://127.0.0.1:9480{path}", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout else None


def _wait_box_complete(gw: Gateway, info_hash: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = _api(gw, f"/api/torrents/{info_hash}")
        if last and last.get("complete"):
            return
        time.sleep(0.25)
    seen = _api(gw, "/api/bittorrent/seen")
    raise AssertionError(f"the box did not cache {info_hash}: {last}\nseen: {seen}")


def _metric(gw: Gateway, name: str) -> float:
    return gw.metrics().get(name, 0.0)


def _clients_after_admission(
    testbed: Testbed,
    gw: Gateway,
    tmp: Path,
    torrent: Path,
    payload: Path,
    info_hash: str,
    **node: Any,
) -> None:
    """Client 1 makes the box admit and fetch the torrent; clients 2-4 then get >= 90 % of
    their bytes from the box while the uplink runs at a WAN-like rate."""
    work = tmp / "work"
    dirs = [tmp / f"c{i}" for i in range(1, 5)]
    for d in dirs:
        d.mkdir()
    with LtNode(testbed, "sub", f"{SUB}:6901", torrent, dirs[0], work, utp=True, **node) as c1:
        c1.wait_complete(timeout=90)
    _wait_box_complete(gw, info_hash)
    served_before = _metric(gw, "swarmcache_bt_local_served_bytes_total")
    uplink_before = gw.uplink_rx_bytes()
    tbf(testbed, "net", f"{testbed.prefix}n", "16mbit")  # the WAN is slower than the LAN
    # One after the other: each finds the box and the outside seeds (not the other clients,
    # which exit when done), so what the box serves is what it saved the uplink.
    for i, d in enumerate(dirs[1:], start=1):
        port = f"{SUB}:{6901 + i}"
        with LtNode(testbed, "sub", port, torrent, d, work, utp=True, **node) as client:
            client.wait_complete(timeout=120)
    from_outside = gw.uplink_rx_bytes() - uplink_before
    from_box = _metric(gw, "swarmcache_bt_local_served_bytes_total") - served_before
    original = sha1_file(payload)
    for d in dirs:
        assert sha1_file(d / payload.name) == original
    wanted = 3 * SIZE
    assert from_outside <= 0.10 * wanted, f"{from_outside} of {wanted} bytes came from outside"
    assert from_box >= 0.90 * wanted, f"the box served only {from_box} of {wanted} bytes"


def _seeds(
    testbed: Testbed, torrent: Path, seed_dir: Path, work: Path, **node: Any
) -> list[LtNode]:
    opts: dict[str, Any] = {"seed": True, "enc": "enabled", "utp": True, **node}
    return [
        LtNode(testbed, "net", f"{NET}:{port}", torrent, seed_dir, work, **opts)
        for port in (6881, 6882)
    ]


@pytest.mark.parametrize("scheme", ["http", "udp"])
def test_tracker_replies_steer_later_clients_to_the_box(
    testbed: Testbed, gateway: Gateway, tmp_path: Path, scheme: str
) -> None:
    seed_dir, work = tmp_path / "seed", tmp_path / "work"
    seed_dir.mkdir()
    work.mkdir()
    payload = make_payload(seed_dir, "show.bin", SIZE, seed=21)
    tracker = Opentracker(testbed, "net", NET)
    url = tracker.http_url if scheme == "http" else tracker.udp_url
    torrent = work / "show.torrent"
    _, info_hash = make_torrent(payload, trackers=[url], out=torrent)
    tracker.allow(info_hash)
    seeds = _seeds(testbed, torrent, seed_dir, work)
    with tracker, seeds[0], seeds[1]:
        for s in seeds:
            s.wait_seeding()
        _clients_after_admission(testbed, gateway, tmp_path, torrent, payload, info_hash)
    out = testbed.run(
        "gw", sys.executable, "-m", "swarmcache", "seen", "--json",
        "--admin", "http://127.0.0.1:9480",
    )  # fmt: skip
    seen = json.loads(out.stdout)
    row = next(t for t in seen["torrents"] if t["info_hash"] == info_hash)
    kind = "HTTP_ANNOUNCE" if scheme == "http" else "UDP_TRACKER_ANNOUNCE"
    assert scheme == "http" or seen["packets"].get(kind, 0) >= 1, seen["packets"]
    assert row["admitted"] and row["private"] is False
    channel = "http_tracker" if scheme == "http" else "udp_tracker"
    steered = _metric(gateway, f'swarmcache_bt_steered_replies_total{{channel="{channel}"}}')
    assert steered >= 3, f"only {steered} {channel} replies were steered"


def test_dht_only_torrent_is_sensed_and_steered(
    testbed: Testbed, gateway: Gateway, tmp_path: Path
) -> None:
    seed_dir, work = tmp_path / "seed", tmp_path / "work"
    seed_dir.mkdir()
    work.mkdir()
    payload = make_payload(seed_dir, "dht.bin", SIZE, seed=22)
    torrent = work / "dht.torrent"
    _, info_hash = make_torrent(payload, trackers=[], out=torrent)
    # A small DHT inside the namespaces: the two seeds bootstrap from each other, the
    # clients from the first seed.
    seeds = [
        *_seeds(testbed, torrent, seed_dir, work, dht_bootstrap=[f"{NET}:6882"])[:1],
        *_seeds(testbed, torrent, seed_dir, work, dht_bootstrap=[f"{NET}:6881"])[1:],
    ]
    with seeds[0], seeds[1]:
        for s in seeds:
            s.wait_seeding(announced=False)
        time.sleep(3)  # let the seeds announce to each other in the DHT
        _clients_after_admission(
            testbed, gateway, tmp_path, torrent, payload, info_hash,
            dht_bootstrap=[f"{NET}:6881"],
        )  # fmt: skip
    assert _metric(gateway, 'swarmcache_bt_steered_replies_total{channel="dht"}') >= 1
    assert _metric(gateway, 'swarmcache_bt_sightings_total{source="dht"}') >= 1


def test_killing_the_daemon_mid_transfer_does_not_break_the_download(
    testbed: Testbed, gateway: Gateway, tmp_path: Path
) -> None:
    seed_dir, work, dl = tmp_path / "seed", tmp_path / "work", tmp_path / "dl"
    for d in (seed_dir, work, dl):
        d.mkdir()
    payload = make_payload(seed_dir, "long.bin", SIZE, seed=23)
    tracker = Opentracker(testbed, "net", NET)
    torrent = work / "long.torrent"
    _, info_hash = make_torrent(payload, trackers=[tracker.http_url], out=torrent)
    tracker.allow(info_hash)
    seeds = _seeds(testbed, torrent, seed_dir, work)
    tbf(testbed, "net", f"{testbed.prefix}n", "32mbit")  # about 6 s for the whole torrent
    with tracker, seeds[0], seeds[1]:
        for s in seeds:
            s.wait_seeding()
        with LtNode(testbed, "sub", f"{SUB}:6901", torrent, dl, work, utp=True) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and client.status().get("progress", 0) < 0.2:
                time.sleep(0.1)
            assert client.status().get("progress", 0) >= 0.2, client.status()
            gateway.kill_daemon()  # the sensing reader, the seeder and the proxy, at once
            client.wait_complete(timeout=90)
    assert sha1_file(dl / "long.bin") == sha1_file(payload)


def test_a_datagram_the_classifier_cannot_parse_arrives_untouched(
    testbed: Testbed, gateway: Gateway
) -> None:
    # Starts like a KRPC dict (so the kernel queues it to the reader) but is not one.
    junk = b"d1:" + bytes(range(256)) + b"\xff" * 100
    receiver = testbed.popen(
        "sub", sys.executable, "-c",
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        f"s.bind(('{SUB}', 7777)); s.settimeout(10); d,_=s.recvfrom(4096);"
        "sys.stdout.write(d.hex()); sys.stdout.flush()",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    testbed.run(
        "net", sys.executable, "-c",
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        f"s.sendto(bytes.fromhex('{junk.hex()}'), ('{SUB}', 7777))",
    )  # fmt: skip
    out, _ = receiver.communicate(timeout=15)
    assert bytes.fromhex(out) == junk
    packets = gateway.metrics()
    queued = sum(v for k, v in packets.items() if k.startswith("swarmcache_bt_sensed_packets"))
    assert queued >= 1, "the datagram never reached the sensing reader"
