"""The operator commands (``stats``, ``top``, ``inspect``, ``purge``, ``pin``, ``unpin``, ``pins``,
``torrents``, ``seen``): thin clients of the daemon's admin API.

Why it is built this way: every command is one or two requests to an endpoint of
``swarmcache/admin_api.py`` (or the daemon's torrent endpoints), so a script can use either the
command with ``--json`` (the endpoint's JSON, unchanged) or the API itself. Text output is for
people and may change; ``--json`` output and the exit codes are the stable interface.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from swarmcache.admin_client import AdminClient, AdminError, DaemonUnreachable

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "OPERATOR_COMMANDS",
    "add_operator_commands",
    "run_operator_command",
]

# Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

EXIT_CODES = """\
exit codes:
  0  done
  1  the daemon failed or refused (e.g. 401: wrong or missing --token)
  2  bad usage or input (unknown option, malformed URL, host pattern or info hash)
  3  the daemon is not reachable at --admin (not running, or elsewhere)
  4  not found (nothing cached for that URL, host or prefix; no such torrent or pin rule)
"""

_INFO_HASH = re.compile(r"[0-9a-fA-F]{40}")


class _Usage(Exception):
    """Bad input found before asking the daemon (exit code 2)."""


def _is_info_hash(text: str) -> bool:
    return _INFO_HASH.fullmatch(text) is not None


def _add(sub: Any, name: str, help: str, description: str, examples: str) -> Any:
    return sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, 88),
        epilog=f"examples:\n{examples}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_operator_commands(sub: Any) -> None:
    stats = _add(
        sub,
        "stats",
        "what the cache holds and saves",
        "Objects and bytes in the store, torrents, request and byte hit ratios, bytes served, "
        "fetched upstream and saved (counters since the daemon started), disk and quota use.",
        "  swarmcache stats\n  swarmcache stats --json | jq .http.byte_hit_ratio",
    )
    top = _add(
        sub,
        "top",
        "hottest objects and torrents by bytes saved",
        "HTTP objects by hits x size (bytes not fetched again), and torrents by bytes served "
        "to local peers minus bytes fetched from outside.",
        "  swarmcache top\n  swarmcache top --kind http --limit 50 --json",
    )
    top.add_argument("--limit", type=int, default=20, metavar="N", help="rows (default 20)")
    top.add_argument("--kind", choices=["http", "torrent"], help="only HTTP or only torrents")
    inspect = _add(
        sub,
        "inspect",
        "everything stored for a URL, or about a torrent",
        "For a URL: every stored variant (status, size, headers, freshness and age, "
        "validators, hits, last access, pinned, blob digest), fills under way and the pin "
        "rules that select it. For an info hash: the torrent's progress, pieces, pin and "
        "traffic.",
        "  swarmcache inspect http://example.com/video.mp4\n"
        "  swarmcache inspect 0123456789abcdef0123456789abcdef01234567 --json",
    )
    inspect.add_argument("target", help="http:// URL, or a torrent's info hash (40 hex digits)")
    purge = _add(
        sub,
        "purge",
        "remove a URL, a host, a URL prefix or a torrent from the cache",
        "Remove objects (every variant) so the next request is fetched from the origin: by "
        "exact URL, by host (example.com, *.example.com) or by URL prefix; or a torrent and its "
        "pieces. Clients being served a purged object still get all of it.",
        "  swarmcache purge http://example.com/index.html\n"
        "  swarmcache purge --host '*.cdn.example.com'\n"
        "  swarmcache purge --prefix http://example.com/videos/\n"
        "  swarmcache purge 0123456789abcdef0123456789abcdef01234567",
    )
    _selector(purge, "URL or info hash (40 hex digits)")
    pin = _add(
        sub,
        "pin",
        "never evict a URL, host, prefix or torrent (torrents are fetched)",
        "Pin HTTP objects (also ones cached later) by URL, host pattern or URL prefix; the rules "
        "persist across restarts. Or pin a torrent: a magnet link or .torrent file is fetched "
        "into the cache (progress shown until complete unless --no-wait); an info hash pins a "
        "torrent already cached.",
        "  swarmcache pin http://example.com/big.iso\n"
        "  swarmcache pin --host '*.update.example.com'\n"
        "  swarmcache pin --prefix http://example.com/games/\n"
        "  swarmcache pin ubuntu.iso.torrent\n"
        "  swarmcache pin 'magnet:?xt=urn:btih:...' --no-wait",
    )
    _selector(pin, "URL, magnet link, .torrent file or info hash")
    pin.add_argument("--no-wait", action="store_true", help="torrents: return once accepted")
    unpin = _add(
        sub,
        "unpin",
        "remove a pin (the objects stay cached, but may be evicted)",
        "Remove a URL, host or prefix pin rule (exactly as pinned), or a torrent's pin.",
        "  swarmcache unpin http://example.com/big.iso\n"
        "  swarmcache unpin --host '*.update.example.com'\n"
        "  swarmcache unpin 0123456789abcdef0123456789abcdef01234567",
    )
    _selector(unpin, "URL, magnet link, .torrent file or info hash")
    pins = _add(
        sub,
        "pins",
        "list pin rules and pinned torrents",
        "The URL, host and prefix pin rules, and the pinned torrents.",
        "  swarmcache pins\n  swarmcache pins --json",
    )
    torrents = _add(
        sub,
        "torrents",
        "list torrents in the cache",
        "Every torrent the cache holds or fetches: progress, size, traffic, local peers.",
        "  swarmcache torrents --json",
    )
    seen = _add(
        sub,
        "seen",
        "what the box sees of subscribers' BitTorrent traffic",
        "Torrents sighted in subscribers' traffic (handshakes, tracker announces, DHT), which "
        "ones are admitted, packets by kind, steered replies, verdict latency.",
        "  swarmcache seen",
    )
    for cmd in (stats, top, inspect, purge, pin, unpin, pins, torrents, seen):
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


def _selector(cmd: Any, what: str) -> None:
    group = cmd.add_mutually_exclusive_group(required=True)
    group.add_argument("target", nargs="?", help=what)
    group.add_argument("--host", metavar="PATTERN", help="host name, *.domain or IP address")
    group.add_argument("--prefix", metavar="URL", help="every URL starting with this")


def run_operator_command(args: argparse.Namespace) -> int:
    client = AdminClient(args.admin, args.token)
    command: Callable[[AdminClient, argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return command(client, args)
    except DaemonUnreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except _Usage as exc:
        print(f"swarmcache: {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdminError as exc:
        hint = " (pass --token or set $SWARMCACHE_TOKEN)" if exc.status == 401 else ""
        print(f"swarmcache: {args.command}: {exc}{hint}", file=sys.stderr)
        if exc.status == 404:
            return EXIT_NOT_FOUND
        return EXIT_USAGE if exc.status == 400 else EXIT_ERROR


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], None]) -> int:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        text(data)
    return EXIT_OK


def _query(**params: Any) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def _selector_query(args: argparse.Namespace) -> str:
    if args.host is not None:
        return _query(host=args.host)
    if args.prefix is not None:
        return _query(prefix=args.prefix)
    return _query(url=args.target)


# --- formatting -------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:.1f} %"


def _when(ts: float | None) -> str:
    return "never" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {s // 60} min"


# --- stats ------------------------------------------------------------------------------------
_STATS_SHOWN = frozenset(
    {"objects", "bytes", "blobs", "open_connections", "fetches_in_flight", "uptime_s", "http"}
    | {"bittorrent", "disk", "quota", "pins"}
)


def _stats(client: AdminClient, args: argparse.Namespace) -> int:
    return _emit(args, client.request("GET", "/api/stats"), _print_stats)


def _print_stats(s: dict[str, Any]) -> None:
    print(
        f"HTTP store    {s['objects']} objects, {human_bytes(s['bytes'])}"
        + (f" in {s['blobs']} blobs" if "blobs" in s else "")
    )
    print(
        f"now           {s['open_connections']} client connections, "
        f"{s['fetches_in_flight']} fetches in flight"
    )
    http = s.get("http")
    if http:
        counts = ", ".join(f"{k} {v}" for k, v in http["requests"].items())
        print(f"requests      {http['requests_total']} ({counts})")
        print(
            f"hit ratio     {_pct(http['request_hit_ratio'])} of requests, "
            f"{_pct(http['byte_hit_ratio'])} of bytes"
        )
        print(
            f"bytes         served {human_bytes(http['served_bytes'])}, from upstream "
            f"{human_bytes(http['upstream_bytes'])}, saved {human_bytes(http['saved_bytes'])}"
        )
    bt = s.get("bittorrent")
    if bt:
        print(
            f"BitTorrent    {bt['torrents']} torrents ({bt['pinned']} pinned, "
            f"{bt['complete']} complete), {human_bytes(bt['held_bytes'])} held of "
            f"{human_bytes(bt['size_bytes'])}"
        )
        print(
            f"              served locally {human_bytes(bt['served_bytes'])}, fetched "
            f"{human_bytes(bt['fetched_bytes'])}, saved {human_bytes(bt['saved_bytes'])}"
        )
    disk = s.get("disk")
    if disk:
        print(
            f"disk          {disk['path']}: {human_bytes(disk['used_bytes'])} used of "
            f"{human_bytes(disk['total_bytes'])} ({human_bytes(disk['free_bytes'])} free)"
        )
    quota = s.get("quota")
    if quota:
        print(
            f"quota         {human_bytes(quota.get('used_bytes', 0))} of "
            f"{human_bytes(quota.get('quota_bytes', 0))} ({_pct(quota.get('used_ratio'))})"
        )
        evicted_objects = quota.get("evicted_objects") or {}
        evicted_bytes = quota.get("evicted_bytes") or {}
        if "eviction_runs" in quota:
            kinds = ", ".join(
                f"{kind} {evicted_objects.get(kind, 0)} ({human_bytes(evicted_bytes.get(kind, 0))})"
                for kind in sorted(set(evicted_objects) | set(evicted_bytes))
            )
            print(
                f"eviction      {quota['eviction_runs']} runs; evicted {kinds or 'nothing'}; "
                f"{quota.get('not_admitted', 0)} fills not admitted"
            )
        shown = {"used_bytes", "quota_bytes", "used_ratio", "eviction_runs", "not_admitted"}
        extra = {
            k: v for k, v in quota.items() if k not in shown | {"evicted_objects", "evicted_bytes"}
        }
        if extra:
            print(f"              {json.dumps(extra)}")
    if s.get("pins"):
        print(f"pin rules     {s['pins'].get('rules', 0)}")
    if "uptime_s" in s:
        print(f"uptime        {_duration(s['uptime_s'])} (counters are since then)")
    for key in sorted(set(s) - _STATS_SHOWN):
        print(f"{key:<13} {json.dumps(s[key])}")


# --- top --------------------------------------------------------------------------------------
def _top(client: AdminClient, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise _Usage("--limit must be at least 1")
    data = client.request("GET", "/api/top?" + _query(limit=args.limit, kind=args.kind))
    return _emit(args, data, _print_top)


def _print_top(data: dict[str, Any]) -> None:
    if "http" in data:
        print("HTTP objects by bytes saved (hits x size):")
        if not data["http"]:
            print("  none with hits yet")
        for row in data["http"]:
            where = f" @{row['destination']}" if row["destination"] else ""
            flags = " pinned" if row["pinned"] else ""
            print(
                f"  {human_bytes(row['bytes_saved']):>10}  {row['hits']:>7} hits x "
                f"{human_bytes(row['size']):>10}  {row['url']}{where}{flags}"
            )
    if "torrents" in data:
        print("torrents by bytes saved (served locally - fetched):")
        if not data["torrents"]:
            print("  none")
        for row in data["torrents"]:
            flags = " pinned" if row["pinned"] else ""
            print(
                f"  {human_bytes(row['bytes_saved']):>10}  served "
                f"{human_bytes(row['served_bytes']):>10}  fetched "
                f"{human_bytes(row['fetched_bytes']):>10}  {row['info_hash']} "
                f"{row['name'] or '?'}{flags}"
            )


# --- inspect ----------------------------------------------------------------------------------
def _inspect(client: AdminClient, args: argparse.Namespace) -> int:
    if _is_info_hash(args.target):
        data = client.request("GET", f"/api/torrents/{args.target.lower()}")
        return _emit(args, data, _print_torrent)
    data = client.request("GET", "/api/objects?" + _query(url=args.target))
    return _emit(args, data, _print_object)


def _print_torrent(t: dict[str, Any]) -> None:
    saved = t["bytes_uploaded"] - t["bytes_downloaded"]
    print(f"{t['info_hash']}  {t['name'] or '?'}")
    print(f"  size       {human_bytes(t['size'] or 0)} in {t['pieces'] or '?'} pieces")
    print(f"  progress   {100 * t['progress']:.1f} % ({t['have']} pieces held)")
    print(f"  pinned     {'yes' if t['pinned'] else 'no'}")
    print(
        f"  traffic    served locally {human_bytes(t['bytes_uploaded'])}, fetched "
        f"{human_bytes(t['bytes_downloaded'])}, saved {human_bytes(saved)}"
    )
    print(
        f"  peers      {t['local_peers_served']} local peers served, {t['local_peers']} "
        f"connected; {t['outside_peers']} outside"
    )
    state = "fetching metadata" if t["fetching_metadata"] else "downloading"
    if t["downloading"]:
        print(f"  now        {state} at {human_bytes(t['download_rate'])}/s")


def _print_object(data: dict[str, Any]) -> None:
    print(data["url"])
    rules = ", ".join(f"{r['kind']} {r['pattern']}" for r in data["pinned_by"])
    print(f"  pinned by  {rules or 'no rule'};  in memory: {'yes' if data['hot'] else 'no'}")
    for fill in data["in_flight"]:
        length = "?" if fill["length"] is None else human_bytes(fill["length"])
        print(f"  fetching   {human_bytes(fill['bytes'])} of {length} so far")
    for obj in data["objects"]:
        kind = "variant" if obj["variant"] else "object"
        where = f" via {obj['destination']}" if obj["destination"] else ""
        vary = f" (Vary: {', '.join(obj['vary'])})" if obj["vary"] else ""
        print(f"  {kind}{where}{vary}")
        print(f"    status     {obj['status']}, {human_bytes(obj['size'])}, blob {obj['blob']}")
        print(
            f"    freshness  {obj['freshness']}: age {obj['age_s']:.0f} s of "
            f"{obj['lifetime_s']:.0f} s lifetime"
        )
        validators = obj["validators"]
        print(
            f"    validators ETag {validators['etag'] or '-'}, "
            f"Last-Modified {validators['last_modified'] or '-'}"
        )
        print(
            f"    use        {obj['hits']} hits ({human_bytes(obj['bytes_saved'])} saved), "
            f"last {_when(obj['last_access'])}, stored {_when(obj['stored_at'])}"
        )
        print(f"    pinned     {'yes' if obj['pinned'] else 'no'}")
        for name, value in obj["headers"]:
            print(f"    | {name}: {value}")


# --- purge ------------------------------------------------------------------------------------
def _purge(client: AdminClient, args: argparse.Namespace) -> int:
    if args.target is not None and _is_info_hash(args.target):
        info_hash = args.target.lower()
        result = client.request("DELETE", f"/api/torrents/{info_hash}")
        return _emit(args, result, lambda r: print(f"purged torrent {info_hash}"))
    result = client.request("DELETE", "/api/objects?" + _selector_query(args))

    def text(r: dict[str, Any]) -> None:
        what = next(f"{k} {r[k]}" for k in ("url", "host", "prefix") if k in r)
        fills = f", stopped caching {r['dropped_fills']} fetch(es) under way"
        print(
            f"purged {r['purged_objects']} objects for {what}{fills if r['dropped_fills'] else ''}"
        )

    return _emit(args, result, text)


# --- pin / unpin / pins -----------------------------------------------------------------------
def _torrent_hash(source: str) -> str | None:
    """The info hash a pin/unpin source names, if it names a torrent (None for a URL)."""
    if source.startswith(("http://", "https://")):
        return None
    if _is_info_hash(source) and not os.path.exists(source):
        return source.lower()
    if source.startswith("magnet:"):
        from swarm.magnet import parse_magnet

        try:
            ih = parse_magnet(source).info_hash
        except ValueError as exc:
            raise _Usage(f"bad magnet link: {exc}") from None
        if ih is None:
            raise _Usage("magnet link without a btih info hash")
        return ih.hex()
    from swarm.metainfo import parse_metainfo

    try:
        meta = parse_metainfo(_read_file(source))
    except ValueError as exc:
        raise _Usage(f"{source}: not a .torrent file: {exc}") from None
    if meta.info_hash is None:
        raise _Usage(f"{source}: v2-only torrents are not supported")
    return meta.info_hash.hex()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror}") from None


def _rule(args: argparse.Namespace) -> tuple[str, str]:
    if args.host is not None:
        return "host", args.host
    if args.prefix is not None:
        return "prefix", args.prefix
    return "url", args.target


def _pin(client: AdminClient, args: argparse.Namespace) -> int:
    source: str | None = args.target
    if source is not None and not source.startswith(("http://", "https://")):
        if _is_info_hash(source) and not os.path.exists(source):
            info_hash = source.lower()
            result = client.request("PUT", f"/api/torrents/{info_hash}/pin")
            return _emit(args, result, lambda r: print(f"pinned torrent {info_hash}"))
        return _pin_torrent(client, args, source)
    kind, pattern = _rule(args)
    body = json.dumps({"kind": kind, "pattern": pattern}).encode()
    result = client.request("POST", "/api/pins", body, "application/json")

    def text(r: dict[str, Any]) -> None:
        rule = r["rule"]
        already = "" if r["created"] else " (already pinned)"
        print(
            f"pinned {rule['kind']} {rule['pattern']}{already}: "
            f"{r['objects_pinned']} stored objects newly pinned"
        )

    return _emit(args, result, text)


def _unpin(client: AdminClient, args: argparse.Namespace) -> int:
    if args.target is not None:
        info_hash = _torrent_hash(args.target)
        if info_hash is not None:
            result = client.request("DELETE", f"/api/torrents/{info_hash}/pin")
            return _emit(args, result, lambda r: print(f"unpinned torrent {info_hash}"))
    result = client.request("DELETE", "/api/pins?" + _selector_query(args))

    def text(r: dict[str, Any]) -> None:
        rule = r["rule"]
        print(
            f"unpinned {rule['kind']} {rule['pattern']}: "
            f"{r['objects_unpinned']} stored objects no longer pinned"
        )

    return _emit(args, result, text)


def _pins(client: AdminClient, args: argparse.Namespace) -> int:
    def text(data: dict[str, Any]) -> None:
        if not data["rules"] and not data["torrents"]:
            print("no pins")
        for rule in data["rules"]:
            print(f"{rule['kind']:<7} {rule['pattern']}  (since {_when(rule['created_at'])})")
        for t in data["torrents"]:
            done = "complete" if t["complete"] else "fetching"
            print(f"torrent {t['info_hash']}  {t['name'] or '?'} ({done})")

    return _emit(args, client.request("GET", "/api/pins"), text)


def _progress_line(t: dict[str, Any]) -> str:
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
        f"[{bar}] {pct:5.1f}% of {human_bytes(size)}  {human_bytes(rate)}/s  ETA {eta}  "
        f"peers {t.get('outside_peers', 0)}"
    )


def _pin_torrent(client: AdminClient, args: argparse.Namespace, source: str) -> int:
    body = source.encode() if source.startswith("magnet:") else _read_file(source)
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
            print("\r" + _progress_line(t), end="", flush=True)
        elif not args.json and time.monotonic() - last_plain >= 5:
            print(_progress_line(t), flush=True)
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


# --- torrents / seen --------------------------------------------------------------------------
def _torrents(client: AdminClient, args: argparse.Namespace) -> int:
    def text(rows: list[dict[str, Any]]) -> None:
        if not rows:
            print("no torrents")
        for t in rows:
            print(
                f"{t['info_hash']}  {100 * t['progress']:5.1f}%  "
                f"{human_bytes(t['size'] or 0):>10}  "
                f"up {human_bytes(t['bytes_uploaded']):>10}  "
                f"down {human_bytes(t['bytes_downloaded']):>10}  "
                f"local peers {t['local_peers_served']:>3}  "
                f"{'pinned ' if t['pinned'] else ''}{t['name'] or '?'}"
            )

    return _emit(args, client.request("GET", "/api/torrents"), text)


def _seen(client: AdminClient, args: argparse.Namespace) -> int:
    def text(view: dict[str, Any]) -> None:
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

    return _emit(args, client.request("GET", "/api/bittorrent/seen"), text)


_COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace], int]] = {
    "stats": _stats,
    "top": _top,
    "inspect": _inspect,
    "purge": _purge,
    "pin": _pin,
    "unpin": _unpin,
    "pins": _pins,
    "torrents": _torrents,
    "seen": _seen,
}
OPERATOR_COMMANDS = frozenset(_COMMANDS)
