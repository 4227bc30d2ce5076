"""The BitTorrent half of the demo, on the testbed ``deploy/demo.sh`` built (``--prefix``).

The daemon already runs in the gateway with steering on. In the internet namespace: a
tracker (opentracker) and a libtorrent seed. In the subscriber namespace: three libtorrent
clients with ordinary settings and no idea the box exists. Client 1's announce makes the box
admit the torrent and fetch it once; clients 2 and 3 then get the box in their tracker
replies and take their bytes from it while the uplink is slowed to a WAN-like 20 Mbit/s.
Prints the bytes each phase pulled over the uplink and whether every copy is intact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.netns.bt import (
    LtNode,
    Opentracker,
    make_payload,
    make_torrent,
    sha1_file,
    tbf,
)
from tests.netns.testbed import Testbed

SUB, NET = Testbed.SUB_IP, Testbed.NET_IP


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefix", required=True, help="the demo testbed's namespace prefix")
    ap.add_argument("--work", required=True, type=Path, help="the demo's scratch directory")
    ap.add_argument("--mib", type=int, default=32)
    args = ap.parse_args()
    tb = Testbed(args.prefix)
    work = args.work / "bt"
    seed_dir = work / "seed"
    seed_dir.mkdir(parents=True)
    size = args.mib << 20

    def uplink() -> int:
        path = f"/sys/class/net/{tb.prefix}gn/statistics/rx_bytes"
        return int(tb.run("gw", "cat", path).stdout)

    def admin(path: str) -> dict[str, object]:
        out = tb.run("gw", "curl", "-s", f"http://127.0.0.1:9480{path}").stdout
        data: dict[str, object] = json.loads(out)
        return data

    payload = make_payload(seed_dir, "film.bin", size, seed=7)
    tracker = Opentracker(tb, "net", NET)
    torrent = work / "film.torrent"
    _, info_hash = make_torrent(payload, trackers=[tracker.http_url], out=torrent)
    tracker.allow(info_hash)
    print(f"== BitTorrent: {args.mib} MiB torrent {info_hash}, seeded in the internet namespace")
    seed = LtNode(tb, "net", f"{NET}:6881", torrent, seed_dir, work, seed=True, enc="enabled")
    with tracker, seed:
        seed.wait_seeding()
        for n in (1, 2, 3):
            if n == 2:
                # Wait for the box to hold the torrent, then make the uplink WAN-like.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if admin(f"/api/torrents/{info_hash}").get("complete"):
                        break
                    time.sleep(0.2)
                tbf(tb, "net", f"{tb.prefix}n", "20mbit")
                print("box: admitted the torrent by itself and holds all of it")
                print("uplink now limited to 20 Mbit/s, like a WAN link")
            before, served = uplink(), _served(tb)
            dl = work / f"client{n}"
            dl.mkdir()
            started = time.monotonic()
            with LtNode(tb, "sub", f"{SUB}:{6900 + n}", torrent, dl, work, utp=True) as client:
                client.wait_complete(timeout=120)
            took = time.monotonic() - started
            ok = sha1_file(dl / "film.bin") == sha1_file(payload)
            print(
                f"client {n}: {size} bytes in {took:5.1f} s; uplink carried {uplink() - before} "
                f"bytes; the box served it {int(_served(tb) - served)} bytes; "
                f"sha1 {'matches' if ok else 'MISMATCH'}"
            )
            if not ok:
                return 1
    seen = admin("/api/bittorrent/seen")
    print(f"box saw packets {seen['packets']}, steered replies {seen['steered']}")
    return 0


def _served(tb: Testbed) -> float:
    text = tb.run("gw", "curl", "-s", "http://127.0.0.1:9480/metrics").stdout
    for line in text.splitlines():
        if line.startswith("swarmcache_bt_local_served_bytes_total "):
            return float(line.split()[1])
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
