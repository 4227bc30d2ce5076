"""The operator endpoints of the admin API: stats, top, inspect, purge, pin rules.

Why it is built this way: the ``swarmcache`` commands (``swarmcache/cli.py``) are thin clients
of these endpoints, so everything an operator can do from a shell a script can do over HTTP
with the same JSON. The daemon owns the object graph and mounts these routes next to its own;
this module only reads it, and does the slow parts (index scans, batched index writes) in a
worker thread so serving goes on meanwhile.

Errors are plain text with a status a client can act on: 400 names what was wrong with the
input, 404 says what was not found.

A purge must leave nothing behind that could still be served: the handler's in-memory state
(hot copies, fills under way) is dropped before the index scan, and hot copies again after it
(a hit during the scan may have made the object hot anew).
"""

from __future__ import annotations

import asyncio
import heapq
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from cache import policy
from cache.pins import KINDS, PinError, PinKind, PinRule, PinRules, RuleSet, parse_host_pattern
from cache.store import ObjectMeta, Store
from swarm.service import SwarmService
from swarmcache.http.handler import CacheHandler
from swarmcache.http.parser import RemoteProtocolError
from swarmcache.http.target import split_authority, url_rule_key
from swarmcache.metrics import RESULTS, Metrics

__all__ = ["OperatorAPI", "info_hash_param", "normalize_prefix", "normalize_url"]

_MAX_TOP = 10_000


def info_hash_param(request: web.Request) -> bytes:
    """The ``{info_hash}`` of a route as 20 bytes; 400 if it is not 40 hex digits."""
    text = request.match_info["info_hash"]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise web.HTTPBadRequest(text=f"not a 40-hex-digit info hash: {text!r}\n")
    return raw


def normalize_url(text: str) -> bytes:
    """An operator's URL as the cache stores it (``http://Host:80/a#x`` → ``http://host/a``).

    Raises ValueError naming what is wrong; https is tunnelled, never cached.
    """
    raw = text.strip().encode("utf-8")
    if raw[:8].lower() == b"https://":
        raise ValueError(f"{text!r}: https is tunnelled (CONNECT), never cached")
    if raw[:7].lower() != b"http://":
        raise ValueError(f"{text!r}: expected an http:// URL")
    rest = raw[7:]
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    try:
        host, port = split_authority(authority, 80)
    except RemoteProtocolError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if any(c in path for c in b" \t\r\n"):
        raise ValueError(f"{text!r}: a URL has no white space")
    # As swarmcache.http.target spells stored URLs: lowercase host, no default port.
    shown = f"[{host}]" if ":" in host else host
    authority = (shown if port == 80 else f"{shown}:{port}").encode()
    return b"http://" + authority + path.partition(b"#")[0]


def normalize_prefix(text: str) -> bytes:
    """A URL prefix as stored URLs start (``http://Host:80/a`` → ``http://host/a``).

    A prefix that ends inside the host (``http://cdn``) is only lowercased.
    """
    stripped = text.strip()
    if stripped[:7].lower() == "http://" and "/" not in stripped[7:]:
        return stripped.lower().encode("utf-8")
    return normalize_url(stripped)  # also says what is wrong with anything but http://


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the registry as ``name{label="v",...}`` → value (one collection)."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _split_key(key: bytes) -> tuple[str | None, bool]:
    """(destination of a transparent key, is a Vary variant) from a store key.

    Neither separator can occur in a URL or a key rule's key (see ``swarmcache/http/target``).
    """
    base, variant, _ = key.partition(b"\x00")
    _, at, destination = base.rpartition(b" @")
    return (_text(destination) if at else None), bool(variant)


def _header(meta: ObjectMeta, name: bytes) -> str | None:
    value = next((v for n, v in meta.headers if n == name), None)
    return None if value is None else value.decode("latin-1")


def _object_json(key: bytes, meta: ObjectMeta, now: float) -> dict[str, Any]:
    destination, variant = _split_key(key)
    times = {"request_time": meta.request_time, "response_time": meta.response_time}
    age = policy.current_age(meta.headers, now=now, **times)
    lifetime = policy.freshness_lifetime(
        meta.status, meta.headers, date_fallback=meta.response_time
    )
    freshness = policy.evaluate_freshness(
        meta.status, meta.headers, policy.RequestDirectives(), now=now, **times
    )
    return {
        "url": _text(meta.url),
        "destination": destination,
        "variant": variant,
        "vary": [v.decode("latin-1") for v in meta.vary],
        "status": meta.status,
        "size": meta.blob.size,
        "blob": meta.blob.digest,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in meta.headers],
        "freshness": freshness.value,
        "age_s": round(age, 1),
        "lifetime_s": round(lifetime, 1),
        "fresh_for_s": round(max(0.0, lifetime - age), 1),
        "validators": {
            "etag": _header(meta, b"etag"),
            "last_modified": _header(meta, b"last-modified"),
        },
        "stored_at": meta.stored_at,
        "hits": meta.hits,
        "last_access": meta.last_access or None,
        "bytes_saved": meta.hits * meta.blob.size,
        "pinned": meta.pinned,
    }


class OperatorAPI:
    def __init__(
        self,
        *,
        store: Store,
        handler: CacheHandler,
        pins: PinRules,
        metrics: Metrics,
        swarm: SwarmService | None,
        cache_dir: str,
        narrow_scans: bool = True,
    ) -> None:
        self.store = store
        self.handler = handler
        self.pins = pins
        self.metrics = metrics
        self.swarm = swarm
        self.cache_dir = cache_dir
        # Keys start with the URL unless per-site key rules rewrite them: only then may a
        # lookup by URL read just the index range of that URL instead of the whole index.
        self.narrow_scans = narrow_scans
        self.started = time.time()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/top", self._top_view)
        app.router.add_get("/api/objects", self._inspect_view)
        app.router.add_delete("/api/objects", self._purge_view)
        app.router.add_get("/api/pins", self._pins_view)
        app.router.add_post("/api/pins", self._pin_view)
        app.router.add_delete("/api/pins", self._unpin_view)
        app.router.add_put("/api/torrents/{info_hash}/pin", self._torrent_pin_view)
        app.router.add_delete("/api/torrents/{info_hash}/pin", self._torrent_unpin_view)

    # --- stats ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Figures for ``/api/stats`` beyond the daemon's own (counters are since start)."""
        samples = _samples(self.metrics.registry)

        def total(name: str, **labels: str) -> int:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            return int(samples.get(f"{name}{{{text}}}" if text else name, 0))

        requests = {r: total("swarmcache_http_requests_total", result=r) for r in RESULTS}
        served = sum(total("swarmcache_http_served_bytes_total", result=r) for r in RESULTS)
        saved = total("swarmcache_http_saved_bytes_total")
        all_requests = sum(requests.values())
        disk = shutil.disk_usage(self.cache_dir)
        figures: dict[str, Any] = {
            "blobs": self.store.stats().blobs,
            "uptime_s": round(time.time() - self.started, 1),
            "http": {
                "requests": requests,
                "requests_total": all_requests,
                "request_hit_ratio": _ratio(
                    requests["hit"] + requests["revalidated"], all_requests
                ),
                "served_bytes": served,
                "upstream_bytes": total("swarmcache_http_upstream_bytes_total"),
                "saved_bytes": saved,
                "byte_hit_ratio": _ratio(saved, served),
            },
            "bittorrent": self._bt_stats(samples),
            "disk": {
                "path": self.cache_dir,
                "total_bytes": disk.total,
                "used_bytes": disk.used,
                "free_bytes": disk.free,
            },
            "quota": self._quota(samples),
            "pins": {"rules": len(self.pins.rules())},
        }
        return figures

    def _bt_stats(self, samples: dict[str, float]) -> dict[str, Any] | None:
        if self.swarm is None:
            return None
        torrents = self.swarm.torrents.list()
        served = int(samples.get("swarmcache_bt_local_served_bytes_total", 0))
        fetched = int(samples.get("swarmcache_bt_outside_bytes_total", 0))
        return {
            "torrents": len(torrents),
            "pinned": sum(t.pinned for t in torrents),
            "complete": sum(t.complete for t in torrents),
            "size_bytes": sum(t.total_length for t in torrents),
            "held_bytes": sum(min(t.total_length, t.have_count * t.piece_length) for t in torrents),
            "served_bytes": served,
            "fetched_bytes": fetched,
            "saved_bytes": served - fetched,
        }

    @staticmethod
    def _quota(samples: dict[str, float]) -> dict[str, Any] | None:
        """Quota figures if the evictor publishes them (swarmcache_store_quota_bytes)."""
        quota = samples.get("swarmcache_store_quota_bytes")
        if quota is None:
            return None
        http = int(samples.get("swarmcache_store_bytes", 0))
        bt = int(samples.get("swarmcache_bt_store_bytes", 0))
        out: dict[str, Any] = {
            "quota_bytes": int(quota),
            "used_bytes": http + bt,
            "used_ratio": _ratio(http + bt, quota),
            "eviction_runs": int(samples.get("swarmcache_eviction_runs_total", 0)),
            "not_admitted": int(samples.get("swarmcache_store_not_admitted_total", 0)),
        }
        for what in ("objects", "bytes"):
            out[f"evicted_{what}"] = {
                kind: int(samples.get(f'swarmcache_evicted_{what}_total{{kind="{kind}"}}', 0))
                for kind in ("http", "torrent")
            }
        return out

    # --- top --------------------------------------------------------------------------------
    async def _top_view(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise web.HTTPBadRequest(text="limit: expected a whole number\n") from None
        if not 1 <= limit <= _MAX_TOP:
            raise web.HTTPBadRequest(text=f"limit: must be 1 to {_MAX_TOP}\n")
        kind = request.query.get("kind", "all")
        if kind not in ("all", "http", "torrent"):
            raise web.HTTPBadRequest(text=f"kind: expected http or torrent, got {kind!r}\n")
        result: dict[str, Any] = {}
        if kind in ("all", "http"):
            loop = asyncio.get_running_loop()
            result["http"] = await loop.run_in_executor(None, self._top_http, limit)
        if kind in ("all", "torrent"):
            result["torrents"] = self._top_torrents(limit)
        return web.json_response(result)

    def _top_http(self, limit: int) -> list[dict[str, Any]]:
        """The stored objects that saved the most bytes (hits x size), hottest first."""
        top = heapq.nlargest(
            limit,
            (
                (meta.hits * meta.blob.size, meta.hits, key, meta)
                for key, meta in self.store.iter_objects()
                if meta.hits
            ),
            key=lambda row: (row[0], row[1]),
        )
        rows = []
        for saved, hits, key, meta in top:
            destination, variant = _split_key(key)
            rows.append(
                {
                    "url": _text(meta.url),
                    "destination": destination,
                    "variant": variant,
                    "size": meta.blob.size,
                    "hits": hits,
                    "bytes_saved": saved,
                    "last_access": meta.last_access or None,
                    "pinned": meta.pinned,
                }
            )
        return rows

    def _top_torrents(self, limit: int) -> list[dict[str, Any]]:
        """Torrents by bytes served to local peers minus bytes fetched from outside."""
        if self.swarm is None:
            return []
        rows = [
            {
                "info_hash": t.info_hash.hex(),
                "name": t.name,
                "size": t.total_length,
                "progress": round(t.progress, 4),
                "served_bytes": t.bytes_uploaded,
                "fetched_bytes": t.bytes_downloaded,
                "bytes_saved": t.bytes_uploaded - t.bytes_downloaded,
                "local_peers_served": t.local_peers_served,
                "pinned": t.pinned,
            }
            for t in self.swarm.torrents.list()
        ]
        rows.sort(key=lambda r: (r["bytes_saved"], r["served_bytes"]), reverse=True)
        return rows[:limit]

    # --- inspect ----------------------------------------------------------------------------
    @staticmethod
    def _url_param(request: web.Request) -> bytes:
        text = request.query.get("url")
        if not text:
            raise web.HTTPBadRequest(text="url: missing (?url=http://...)\n")
        try:
            return normalize_url(text)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"url: {exc}\n") from None

    def _same_object(self, url: bytes) -> Callable[[bytes], bool]:
        """Which stored URLs are ``url`` to an operator: itself, and under a key rule every URL
        the rule keys alike (another token, or another host of a service): the object stored
        under the first such URL fetched is this URL's object too."""
        wanted = self._rule_key(url)
        if wanted is None:
            return lambda u: u == url
        return lambda u: u == url or self._rule_key(u) == wanted

    def _rule_key(self, url: bytes) -> tuple[bytes, bool] | None:
        return url_rule_key(url, self.handler.key_rules)

    async def _inspect_view(self, request: web.Request) -> web.Response:
        url = self._url_param(request)
        same = self._same_object(url)
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(
            None, lambda: [(k, m) for k, m in self._scan(url) if same(m.url)]
        )
        fills = self.handler.fills_of(url)
        if not found and not fills:
            raise web.HTTPNotFound(text=f"not in the cache: {_text(url)}\n")
        now = time.time()
        return web.json_response(
            {
                "url": _text(url),
                "objects": [_object_json(k, m, now) for k, m in found],
                "hot": self.handler.hot.holds(url),
                "in_flight": [
                    {
                        "destination": _split_key(target.key)[0],
                        "bytes": fill.size,
                        "length": fill.head.length,
                        "complete": fill.complete,
                    }
                    for target, fill in fills
                ],
                "pinned_by": [r.as_json() for r in self.pins.matching(url)],
            }
        )

    def _scan(self, prefix: bytes | None) -> Iterator[tuple[bytes, ObjectMeta]]:
        if prefix is None or not self.narrow_scans:
            return self.store.iter_objects()
        return self.store.iter_prefix(prefix)

    # --- purge ------------------------------------------------------------------------------
    def _selector(
        self, request: web.Request
    ) -> tuple[PinKind, str, Callable[[bytes], bool], bytes | None]:
        """(kind, pattern, matcher, key prefix to scan) of ``?url=|host=|prefix=``."""
        given = [k for k in KINDS if k in request.query]
        if len(given) != 1:
            raise web.HTTPBadRequest(text="give exactly one of url=, host=, prefix=\n")
        kind = given[0]
        try:
            kind, pattern, match, scan = self._matcher(kind, request.query[kind])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{kind}: {exc}\n") from None
        if kind == "url":
            match = self._same_object(normalize_url(pattern))
        return kind, pattern, match, scan

    @staticmethod
    def _matcher(
        kind: PinKind, text: str
    ) -> tuple[PinKind, str, Callable[[bytes], bool], bytes | None]:
        """Normalise a url/host/prefix selector; ValueError (PinError) names what is wrong."""
        if kind == "url":
            url = normalize_url(text)
            return kind, _text(url), lambda u: u == url, url
        if kind == "prefix":
            prefix = normalize_prefix(text)
            return kind, _text(prefix), lambda u: u.startswith(prefix), prefix
        pattern = parse_host_pattern(text)
        match = RuleSet.of([PinRule("host", pattern)]).is_pinned
        scan = None if pattern.startswith("*.") else b"http://" + _bracketed(pattern).encode()
        return kind, pattern, match, scan

    async def _purge_view(self, request: web.Request) -> web.Response:
        kind, pattern, match, scan = self._selector(request)
        fills = self.handler.purge(match)
        loop = asyncio.get_running_loop()
        purged = await loop.run_in_executor(
            None,
            lambda: self.store.delete_where(
                lambda _k, m: match(m.url), prefix=scan if self.narrow_scans else None
            ),
        )
        self.handler.hot.drop_urls(match)
        if not purged and not fills:
            raise web.HTTPNotFound(text=f"nothing in the cache matches {kind} {pattern}\n")
        return web.json_response({kind: pattern, "purged_objects": purged, "dropped_fills": fills})

    # --- pins -------------------------------------------------------------------------------
    async def _pins_view(self, request: web.Request) -> web.Response:
        torrents = []
        if self.swarm is not None:
            torrents = [
                {"info_hash": t.info_hash.hex(), "name": t.name, "complete": t.complete}
                for t in self.swarm.torrents.list()
                if t.pinned
            ]
        return web.json_response(
            {"rules": [r.as_json() for r in self.pins.rules()], "torrents": torrents}
        )

    async def _pin_view(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            kind, text = body["kind"], body["pattern"]
            if kind not in KINDS or not isinstance(text, str):
                raise PinError(f"kind must be one of {', '.join(KINDS)} and pattern a string")
            kind, pattern, match, scan = self._matcher(kind, text)
            rule, created = self.pins.add(kind, pattern)
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(
                text=f'send {{"kind": "url|host|prefix", "pattern": "..."}}: {exc}\n'
            ) from None
        changed = await self._repin(match, scan)
        return web.json_response(
            {"rule": rule.as_json(), "created": created, "objects_pinned": changed},
            status=201 if created else 200,
        )

    async def _unpin_view(self, request: web.Request) -> web.Response:
        kind, pattern, match, scan = self._selector(request)
        rule = self.pins.remove(kind, pattern)
        if rule is None:
            raise web.HTTPNotFound(text=f"no pin rule {kind} {pattern}\n")
        changed = await self._repin(match, scan)
        return web.json_response({"rule": rule.as_json(), "objects_unpinned": changed})

    async def _repin(self, match: Callable[[bytes], bool], scan: bytes | None) -> int:
        """Bring the pinned flag of the objects a changed rule selects in line with all rules."""
        is_pinned = self.pins.is_pinned

        def decide(_key: bytes, meta: ObjectMeta) -> bool | None:
            return is_pinned(meta.url) if match(meta.url) else None

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            lambda: self.store.set_pinned_where(decide, prefix=scan if self.narrow_scans else None),
        )

    # --- torrent pins -----------------------------------------------------------------------
    def _known_torrent(self, request: web.Request) -> tuple[SwarmService, bytes]:
        if self.swarm is None:
            raise web.HTTPNotFound(text="BitTorrent is disabled (bittorrent.enabled = false)\n")
        info_hash = info_hash_param(request)
        if self.swarm.torrents.get(info_hash) is None:
            raise web.HTTPNotFound(
                text=f"torrent {info_hash.hex()} is not in the cache "
                "(pin a magnet link or .torrent file to fetch it)\n"
            )
        return self.swarm, info_hash

    async def _torrent_pin_view(self, request: web.Request) -> web.Response:
        swarm, info_hash = self._known_torrent(request)
        # The magnet path of a known torrent pins it, steers to it, and resumes a download.
        swarm.pin(f"magnet:?xt=urn:btih:{info_hash.hex()}")
        return web.json_response({"info_hash": info_hash.hex(), "pinned": True})

    async def _torrent_unpin_view(self, request: web.Request) -> web.Response:
        swarm, info_hash = self._known_torrent(request)
        swarm.torrents.unpin(info_hash)
        return web.json_response({"info_hash": info_hash.hex(), "pinned": False})


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
