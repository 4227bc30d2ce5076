"""``swarmcache`` command line. Flags override the TOML config; errors name the key."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from swarmcache.config import Config, ConfigError, load_config

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmcache", description="Transparent ISP-side HTTP and BitTorrent cache."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway daemon")
    check = sub.add_parser("check-config", help="load and validate a config, print it")
    for cmd in (run, check):
        cmd.add_argument("--config", metavar="FILE", help="TOML config file")
        cmd.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
        cmd.add_argument(
            "--proxy-listen", metavar="HOST:PORT", help="explicit HTTP proxy (http.proxy_listen)"
        )
        cmd.add_argument(
            "--admin-listen", metavar="HOST:PORT", help="admin API and /metrics (admin.listen)"
        )
        cmd.add_argument(
            "--no-intercept",
            action="store_true",
            help="install no rules, explicit proxy only (no root needed)",
        )
        cmd.add_argument(
            "--subscribers",
            metavar="CIDR[,CIDR]",
            help="subscriber prefixes served (intercept.subscribers)",
        )
        cmd.add_argument("--access-log", metavar="PATH", help="access log file, - for stdout")
        cmd.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _add_torrent_commands(sub)
    return parser


# Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


def _add_torrent_commands(sub: Any) -> None:
    pin = sub.add_parser(
        "pin",
        help="pin a torrent (magnet link or .torrent file) and fetch it into the cache",
        description="Pin a torrent: the box fetches every piece once from the outside swarm "
        "and seeds it to local peers. Shows progress until complete unless --no-wait.",
    )
    pin.add_argument("source", help="magnet link, or path to a .torrent file")
    pin.add_argument("--no-wait", action="store_true", help="return once the pin is accepted")
    torrents = sub.add_parser("torrents", help="list torrents in the cache")
    purge = sub.add_parser("purge", help="remove a torrent and its pieces from the cache")
    purge.add_argument("info_hash", help="40 hex digits")
    seen = sub.add_parser(
        "seen",
        help="what the box sees of subscribers' BitTorrent traffic",
        description="Torrents sighted in subscribers' traffic (handshakes, tracker announces, "
        "DHT), which ones are admitted, packets by kind, steered replies, verdict latency.",
    )
    for cmd in (pin, torrents, purge, seen):
        cmd.add_argument(
            "--admin",
            metavar="URL",
            default=os.environ.get("SWARMCACHE_ADMIN", "http://127.0.0.1:9480"),
            help="admin API base URL (default: $SWARMCACHE_ADMIN or http://127.0.0.1:9480)",
        )
        cmd.add_argument(
            "--token",
            default=os.environ.get("SWARMCACHE_TOKEN", ""),
            help="admin token (default: $SWARMCACHE_TOKEN)",
        )
        cmd.add_argument("--json", action="store_true", help="machine-readable output")


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    changes: dict[str, dict[str, Any]] = {}
    if args.cache_dir is not None:
        changes.setdefault("cache", {})["dir"] = args.cache_dir
    if args.proxy_listen is not None:
        changes.setdefault("http", {})["proxy_listen"] = args.proxy_listen
    if args.admin_listen is not None:
        changes.setdefault("admin", {})["listen"] = args.admin_listen
    if args.no_intercept:
        changes.setdefault("intercept", {})["enabled"] = False
    if args.subscribers is not None:
        prefixes = [p.strip() for p in args.subscribers.split(",") if p.strip()]
        changes.setdefault("intercept", {})["subscribers"] = prefixes
    if args.access_log is not None:
        changes.setdefault("log", {})["access_log"] = args.access_log
    if args.log_level is not None:
        changes.setdefault("log", {})["level"] = args.log_level
    return config.override(**changes) if changes else config


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _progress_line(t: dict[str, Any], started: float, start_have: int) -> str:
    size = t.get("size") or 0
    pct = 100.0 * float(t.get("progress") or 0.0)
    rate = float(t.get("download_rate") or 0.0)
    if t.get("fetching_metadata"):
        return f"{t['info_hash']}  fetching metadata from {t.get('outside_peers', 0)} peers"
    left = size * (1 - pct / 100)
    eta = "--:--" if rate <= 0 else time.strftime("%H:%M:%S", time.gmtime(left / rate))
    width = 30
    filled = int(width * pct / 100)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {pct:5.1f}% of {_human_bytes(size)}  {_human_bytes(rate)}/s  ETA {eta}  "
        f"peers {t.get('outside_peers', 0)}"
    )


def _run_torrent_command(args: argparse.Namespace) -> int:
    from swarmcache.admin_client import AdminClient, AdminError, DaemonUnreachable

    client = AdminClient(args.admin, args.token)
    try:
        if args.command == "torrents":
            rows = client.request("GET", "/api/torrents")
            if args.json:
                print(json.dumps(rows, indent=2))
                return EXIT_OK
            if not rows:
                print("no torrents")
            for t in rows:
                print(
                    f"{t['info_hash']}  {100 * t['progress']:5.1f}%  "
                    f"{_human_bytes(t['size'] or 0):>10}  "
                    f"up {_human_bytes(t['bytes_uploaded']):>10}  "
                    f"down {_human_bytes(t['bytes_downloaded']):>10}  "
                    f"local peers {t['local_peers_served']:>3}  "
                    f"{'pinned ' if t['pinned'] else ''}{t['name'] or '?'}"
                )
            return EXIT_OK
        if args.command == "seen":
            view = client.request("GET", "/api/bittorrent/seen")
            if args.json:
                print(json.dumps(view, indent=2))
                return EXIT_OK
            for t in view["torrents"]:
                flags = "admitted" if t["admitted"] else "seen"
                if t["private"]:
                    flags = "private"
                sources = ",".join(f"{k}:{v}" for k, v in sorted(t["sources"].items()))
                print(f"{t['info_hash']}  {flags:8}  local peers {t['local_peers']:>3}  {sources}")
            packets = ", ".join(f"{k.lower()} {v}" for k, v in sorted(view["packets"].items()))
            print(f"packets: {packets or 'none'}; rewritten {view['rewritten']}")
            steered = ", ".join(f"{k} {v}" for k, v in sorted(view["steered"].items()))
            print(f"steered replies: {steered or 'none'}")
            latency = view.get("verdict_latency_s")
            if latency:
                print(
                    f"verdict latency p50 {latency['p50'] * 1e6:.0f} us, "
                    f"p99 {latency['p99'] * 1e6:.0f} us"
                )
            return EXIT_OK
        if args.command == "purge":
            result = client.request("DELETE", f"/api/torrents/{args.info_hash}")
            print(json.dumps(result) if args.json else f"purged {args.info_hash}")
            return EXIT_OK
        return _pin(client, args)
    except DaemonUnreachable as exc:
        print(f"swarmcache: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AdminError as exc:
        print(f"swarmcache: {args.command}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND if exc.status == 404 else EXIT_ERROR


def _pin(client: Any, args: argparse.Namespace) -> int:
    source: str = args.source
    if source.startswith("magnet:"):
        body = source.encode()
    else:
        try:
            with open(source, "rb") as fh:
                body = fh.read()
        except OSError as exc:
            print(f"swarmcache: pin: cannot read {source}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    result = client.request("POST", "/api/torrents", body, "application/x-bittorrent")
    info_hash = result["info_hash"]
    if args.no_wait:
        print(json.dumps(result) if args.json else f"pinned {info_hash} {result['name'] or ''}")
        return EXIT_OK
    tty = sys.stdout.isatty() and not args.json
    started = time.monotonic()
    last_plain = 0.0
    while True:
        t = client.request("GET", f"/api/torrents/{info_hash}")
        if tty:
            print("\r" + _progress_line(t, started, 0), end="", flush=True)
        elif not args.json and time.monotonic() - last_plain >= 5:
            print(_progress_line(t, started, 0), flush=True)
            last_plain = time.monotonic()
        if t.get("complete"):
            break
        time.sleep(0.5)
    if tty:
        print()
    if args.json:
        print(json.dumps(t))
    else:
        print(f"complete: {info_hash} {t.get('name') or ''} in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("pin", "torrents", "purge", "seen"):
        return _run_torrent_command(args)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"swarmcache: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(config)
        return 0
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from swarmcache.daemon import run

    try:
        asyncio.run(run(config))
    except OSError as exc:
        print(f"swarmcache: cannot start: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # start-up errors from the interceptor name their command
        if type(exc).__name__ == "InterceptError":
            print(f"swarmcache: cannot install interception rules: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
