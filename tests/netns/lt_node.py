"""One libtorrent peer (seed or leecher) for the namespace testbed, run as its own process.

    python tests/netns/lt_node.py --listen IP:PORT --torrent F --save DIR [--seed]
        [--exit-on-complete] [--peer IP:PORT ...] [--timeout S] [--status-file F]
        [--enc disabled|enabled|forced] [--utp] [--download-limit BYTES_PER_S]

Why it is built this way:
- A real client that no one here wrote is the only honest counterpart for a BitTorrent cache,
  and it must run inside a namespace (``ip netns exec``), so it is a script, not a library call.
- Settings follow testbed-notes §6: DHT, LSD, UPnP and NAT-PMP off and no DHT bootstrap node
  (nothing may try to reach the outside); uTP off by default so the payload moves over TCP, the
  path the gateway intercepts (``--utp`` turns it back on for tests about uTP); several peers per
  IP allowed, because every seed of the testbed shares 10.77.2.2 and every leecher 10.77.1.2;
  plaintext handshakes by default so an observer on the gateway sees the info_hash.
- The process talks to the test only through a JSON status file, replaced atomically about
  twice a second, and its exit status: 0 complete, 2 error, 3 timeout. Seeds run until killed
  (SIGTERM stops them cleanly: the tracker gets its "stopped" announce).
- Only the non-deprecated 2.1 API is used (settings dict, torrent_flags, info_hashes()).
  ``peer_info.utp_socket`` is not exposed by the 2.1.1 bindings, so peer info is read by
  address only (testbed-notes §9.10).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

STATUS_INTERVAL = 0.5
RECONNECT_INTERVAL = 2.0
EXIT_OK, EXIT_ERROR, EXIT_TIMEOUT = 0, 2, 3


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="libtorrent seed/leecher for the namespace testbed")
    p.add_argument("--listen", required=True, type=parse_endpoint, help="IP:PORT to listen on")
    p.add_argument("--torrent", required=True, type=Path, help=".torrent file")
    p.add_argument("--save", required=True, type=Path, help="directory holding/receiving data")
    p.add_argument("--seed", action="store_true", help="the data is already in --save")
    p.add_argument("--exit-on-complete", action="store_true", help="leecher: exit 0 when done")
    p.add_argument(
        "--peer", action="append", default=[], type=parse_endpoint, help="connect to IP:PORT"
    )
    p.add_argument("--timeout", type=float, default=0.0, help="give up after S seconds (0: never)")
    p.add_argument("--status-file", type=Path, help="JSON status, rewritten ~2x per second")
    p.add_argument("--enc", choices=("disabled", "enabled", "forced"), default="disabled")
    p.add_argument("--utp", action="store_true", help="allow uTP (off: TCP only)")
    p.add_argument("--download-limit", type=int, default=0, help="bytes/s, 0 = unlimited")
    p.add_argument(
        "--dht-bootstrap",
        action="append",
        default=[],
        metavar="IP:PORT",
        help="turn the DHT on, bootstrapped only from these nodes (repeatable)",
    )
    return p


def session_settings(args: argparse.Namespace) -> lt.settings_pack:
    ip, port = args.listen
    enc = getattr(lt.enc_policy, args.enc)
    return {
        "listen_interfaces": f"{ip}:{port}",
        # The DHT stays inside the namespaces: on only with explicit bootstrap nodes, and
        # allowed to route among private addresses that share a /24 (as the testbed's do).
        "enable_dht": bool(args.dht_bootstrap),
        "dht_bootstrap_nodes": ",".join(args.dht_bootstrap),
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": args.utp,
        "enable_incoming_utp": args.utp,
        "out_enc_policy": enc,
        "in_enc_policy": enc,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "download_rate_limit": args.download_limit,
        "alert_mask": (
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.tracker
            | lt.alert_category.storage
        ),
    }


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.session = lt.session(session_settings(args))
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(args.torrent))
        atp.save_path = str(args.save)
        # Neither paused nor auto-managed: the queueing logic must not hold the torrent back.
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        self.handle = self.session.add_torrent(atp)
        self.info_hash = str(atp.ti.info_hashes().v1)
        self.tracker_replies = 0
        self.tracker_errors: list[str] = []
        self.listening: list[str] = []
        self.error = ""
        self.last_connect = 0.0

    def pump_alerts(self) -> None:
        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.tracker_reply_alert):
                self.tracker_replies += 1
            elif isinstance(alert, lt.tracker_error_alert | lt.tracker_warning_alert):
                self.tracker_errors.append(f"{alert.tracker_url}: {alert.message()}")
                del self.tracker_errors[:-10]  # a dead tracker must not grow the file forever
            elif isinstance(alert, lt.listen_succeeded_alert):
                self.listening.append(f"{alert.address}:{alert.port}/{alert.socket_type}")
            elif isinstance(alert, lt.listen_failed_alert):
                self.error = f"listen failed: {alert.message()}"
            elif isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
                self.error = alert.message()

    def connect_peers(self, status: Any) -> None:
        # Repeated because a peer added while the torrent is still checking may be dropped, and
        # a seed that was not up yet must be retried; connecting to a known peer is a no-op.
        now = time.monotonic()
        if not self.args.peer or status.is_seeding or now - self.last_connect < RECONNECT_INTERVAL:
            return
        self.last_connect = now
        for endpoint in self.args.peer:
            self.handle.connect_peer(endpoint)

    def snapshot(self, status: Any) -> dict[str, Any]:
        peers = [f"{p.ip[0]}:{p.ip[1]}" for p in self.handle.get_peer_info()]
        return {
            "info_hash": self.info_hash,
            "role": "seed" if self.args.seed else "leech",
            "progress": status.progress,
            "total_done": status.total_done,
            "total_wanted": status.total_wanted,
            "state": str(status.state),
            "is_seeding": bool(status.is_seeding),
            "download_rate": status.download_rate,
            "upload_rate": status.upload_rate,
            "total_payload_download": status.total_payload_download,
            "total_payload_upload": status.total_payload_upload,
            "peers": len(peers),
            "peer_addresses": peers,
            "tracker_replies": self.tracker_replies,
            "tracker_errors": self.tracker_errors,
            "listening": self.listening,
            "elapsed": round(time.monotonic() - self.started, 3),
            "error": self.error,
            "pid": os.getpid(),
        }

    def write_status(self, snap: dict[str, Any]) -> None:
        path: Path | None = self.args.status_file
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, path)  # readers never see a half-written file

    def run(self) -> int:
        deadline = self.started + self.args.timeout if self.args.timeout > 0 else None
        while True:
            self.pump_alerts()
            status = self.handle.status()
            if not self.error and status.errc.value() != 0:
                self.error = status.errc.message()
            self.connect_peers(status)
            snap = self.snapshot(status)
            if self.error:
                snap["error"] = self.error
                self.write_status(snap)
                print(f"lt_node: error: {self.error}", file=sys.stderr)
                return EXIT_ERROR
            if self.args.exit_on_complete and not self.args.seed and status.is_seeding:
                self.write_status(snap)
                return EXIT_OK
            if deadline is not None and time.monotonic() > deadline:
                snap["error"] = (
                    f"timeout after {self.args.timeout:g}s: state {snap['state']}, progress "
                    f"{status.progress:.3f}, {snap['peers']} peers, tracker replies "
                    f"{self.tracker_replies}, tracker errors {self.tracker_errors}"
                )
                self.write_status(snap)
                print(f"lt_node: {snap['error']}", file=sys.stderr)
                return EXIT_TIMEOUT
            self.write_status(snap)
            self.session.wait_for_alert(int(STATUS_INTERVAL * 1000))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed and args.exit_on_complete:
        print("lt_node: --exit-on-complete makes no sense with --seed", file=sys.stderr)
        return EXIT_ERROR
    args.save.mkdir(parents=True, exist_ok=True)
    # SIGTERM becomes SystemExit, so the session is destroyed normally (tracker "stopped").
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = Node(args)
    try:
        return node.run()
    finally:
        # Destroy the session before the interpreter tears down: its destructor flushes the disk
        # thread, so a file read right after exit is complete.
        del node


if __name__ == "__main__":
    sys.exit(main())
