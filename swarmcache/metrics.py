"""The daemon's Prometheus metrics, in one registry the daemon owns.

Why one object: tests start several daemons in one process, and prometheus-client's global
registry would make their counters collide. Names follow Prometheus conventions (``_total``
for counters, ``_bytes`` for sizes); hit ratios are left to PromQL (``rate(hits) /
rate(requests)``) so they can be taken over any window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cache.evictor import EvictionFigures

__all__ = ["RESULTS", "Metrics"]

# The cache result of one request, as it appears in the `result` label and the access log.
RESULTS = ("hit", "miss", "revalidated", "pass", "refused", "error")
SOCKS_OUTCOMES = ("cached", "relayed", "refused", "unreachable", "bad_handshake")


class _StoreCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        objects, size = self._read()
        yield GaugeMetricFamily(
            "swarmcache_store_objects", "HTTP objects in the store", value=objects
        )
        yield GaugeMetricFamily(
            "swarmcache_store_bytes", "Bytes of blob files in the store", value=size
        )


# name -> (kind, help) of the BitTorrent figures read from the swarm service's counters().
_SWARM_METRICS: dict[str, tuple[str, str, str]] = {
    "pieces_fetched": ("counter", "swarmcache_bt_pieces_fetched", "Pieces fetched and verified"),
    "outside_bytes": (
        "counter",
        "swarmcache_bt_outside_bytes",
        "Payload bytes fetched from outside peers",
    ),
    "wasted_bytes": (
        "counter",
        "swarmcache_bt_wasted_bytes",
        "Bytes from outside peers that were discarded (duplicates, bad pieces)",
    ),
    "bad_pieces": ("counter", "swarmcache_bt_bad_pieces", "Pieces that failed their hash"),
    "banned_peers": ("counter", "swarmcache_bt_banned_peers", "Outside peers banned for bad data"),
    "local_served_bytes": (
        "counter",
        "swarmcache_bt_local_served_bytes",
        "Payload bytes served to local peers",
    ),
    "local_rejected_requests": (
        "counter",
        "swarmcache_bt_local_rejected_requests",
        "Block requests of local peers the box could not serve",
    ),
    "refused_connections": (
        "counter",
        "swarmcache_bt_refused_connections",
        "Seeder connections refused because the peer is not a subscriber",
    ),
    "admissions": (
        "counter",
        "swarmcache_bt_admissions",
        "Torrents admitted because enough local peers were seen using them",
    ),
    "outside_peers": ("gauge", "swarmcache_bt_outside_peers", "Connected outside peers"),
    "local_peers": ("gauge", "swarmcache_bt_local_peers", "Connected local peers"),
}


class _SwarmCollector(Collector):
    def __init__(
        self,
        counters: Callable[[], dict[str, int]],
        torrents: Callable[[], list[tuple[str, str, float]]],
    ) -> None:
        self._counters = counters
        self._torrents = torrents

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        values = self._counters()
        for key, (kind, name, text) in _SWARM_METRICS.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, text, value=values.get(key, 0))
        progress = GaugeMetricFamily(
            "swarmcache_bt_torrent_progress_ratio",
            "Share of a torrent's pieces the store holds (0-1)",
            labels=["info_hash", "name"],
        )
        for info_hash, name, value in self._torrents():
            progress.add_metric([info_hash, name], value)
        yield progress


class _SensingCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self._read()
        packets = CounterMetricFamily(
            "swarmcache_bt_sensed_packets",
            "Packets the sensing queue classified, by kind",
            labels=["kind"],
        )
        for kind, n in sorted(f["packets"].items()):
            packets.add_metric([kind.lower()], n)
        yield packets
        yield CounterMetricFamily(
            "swarmcache_bt_rewritten_packets",
            "Datagrams to subscribers rewritten to add the box to a peer list",
            value=f["rewritten"],
        )
        yield CounterMetricFamily(
            "swarmcache_bt_sensing_errors",
            "Packets whose handling failed (accepted untouched)",
            value=f["handler_errors"],
        )
        yield CounterMetricFamily(
            "swarmcache_bt_sensing_stale_packets",
            "Packets accepted unseen because the daemon had stalled",
            value=f["stale"],
        )
        yield CounterMetricFamily(
            "swarmcache_bt_sensing_overflow_packets",
            "Packets accepted unseen because one queue read used its time budget",
            value=f["overflow"],
        )
        sightings = CounterMetricFamily(
            "swarmcache_bt_sightings", "Torrent sightings by source", labels=["source"]
        )
        for source, n in sorted(f["sightings"].items()):
            sightings.add_metric([source], n)
        yield sightings
        steered = CounterMetricFamily(
            "swarmcache_bt_steered_replies",
            "Peer lists sent to subscribers with the box added, by channel",
            labels=["channel"],
        )
        for channel in ("http_tracker", "udp_tracker", "dht"):
            steered.add_metric([channel], f["steered"].get(channel, 0))
        yield steered
        yield GaugeMetricFamily(
            "swarmcache_bt_torrents_seen",
            "Torrents in the popularity table",
            value=f["torrents_seen"],
        )
        latency = GaugeMetricFamily(
            "swarmcache_bt_verdict_latency_seconds",
            "Recent NFQUEUE verdict latency (queue time + handling)",
            labels=["quantile"],
        )
        if f["latency"] is not None:
            latency.add_metric(["0.5"], f["latency"][0])
            latency.add_metric(["0.99"], f["latency"][1])
        yield latency


class _EvictionCollector(Collector):
    """Quota and eviction figures, read from ``cache.evictor.Evictor.figures`` at scrape time."""

    def __init__(self, read: Callable[[], EvictionFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self._read()
        yield GaugeMetricFamily(
            "swarmcache_store_quota_bytes",
            "Disk quota for HTTP blobs and torrent pieces together",
            value=f.quota_bytes,
        )
        yield GaugeMetricFamily(
            "swarmcache_bt_store_bytes",
            "Torrent payload bytes on disk (held pieces, and evicted ones not yet freed)",
            value=f.torrent_bytes,
        )
        objects = CounterMetricFamily(
            "swarmcache_evicted_objects",
            "HTTP objects and torrent piece ranges evicted to keep under the quota",
            labels=["kind"],
        )
        evicted = CounterMetricFamily(
            "swarmcache_evicted_bytes",
            "Bytes evicted to keep under the quota, by kind",
            labels=["kind"],
        )
        for kind in ("http", "torrent"):
            objects.add_metric([kind], f.evicted_objects.get(kind, 0))
            evicted.add_metric([kind], f.evicted_bytes.get(kind, 0))
        yield objects
        yield evicted
        yield CounterMetricFamily(
            "swarmcache_eviction_runs",
            "Eviction runs (usage passed the high watermark)",
            value=f.runs,
        )
        yield CounterMetricFamily(
            "swarmcache_store_not_admitted",
            "Cacheable responses relayed without storing (admission filter or full quota)",
            value=f.refused,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "swarmcache_http_requests_total",
            "HTTP requests by cache result",
            ["result"],
            registry=r,
        )
        self.served_bytes = Counter(
            "swarmcache_http_served_bytes_total",
            "Response bytes (head and body) sent to clients, by cache result",
            ["result"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "swarmcache_http_upstream_bytes_total",
            "Response bytes received from origins",
            registry=r,
        )
        self.saved_bytes = Counter(
            "swarmcache_http_saved_bytes_total",
            "Body bytes served from the cache instead of the uplink",
            registry=r,
        )
        self.coalesced = Counter(
            "swarmcache_http_coalesced_total",
            "Requests that joined another request's upstream fetch",
            registry=r,
        )
        self.open_connections = Gauge(
            "swarmcache_http_open_connections",
            "Open client connections by listener",
            ["listener"],
            registry=r,
        )
        self.refused_connections = Counter(
            "swarmcache_http_refused_connections_total",
            "Client connections refused because the client is not a subscriber",
            ["listener"],
            registry=r,
        )
        self.corrupt_blobs = Counter(
            "swarmcache_store_corrupt_blobs_total",
            "Blobs that failed size or hash verification and were dropped",
            registry=r,
        )
        self.tunnel_bytes = Counter(
            "swarmcache_http_tunnel_bytes_total",
            "Bytes relayed through CONNECT tunnels",
            registry=r,
        )
        self.socks_connections = Counter(
            "swarmcache_socks_connections_total",
            "SOCKS5 connections by outcome (cached: HTTP through the cache; relayed: a raw "
            "tunnel; refused: bad credentials or a forbidden destination; unreachable: the "
            "destination could not be reached; bad_handshake: not SOCKS5)",
            ["outcome"],
            registry=r,
        )
        for outcome in SOCKS_OUTCOMES:
            self.socks_connections.labels(outcome)
        # Live fan-out; the gauges are read from the running streams at scrape time.
        self.live_streams = Gauge(
            "swarmcache_live_streams", "Live streams with an open upstream", registry=r
        )
        self.live_clients = Gauge(
            "swarmcache_live_clients", "Clients attached to live streams", registry=r
        )
        self.live_ring_bytes = Gauge(
            "swarmcache_live_ring_bytes", "Bytes held by the rings of all live streams", registry=r
        )
        self.live_dropped = Counter(
            "swarmcache_live_clients_dropped_total",
            "Live clients that fell behind the ring, by what was done to them",
            ["action"],
            registry=r,
        )
        self.live_upstream_bytes = Counter(
            "swarmcache_live_upstream_bytes_total",
            "Body bytes received from origins for live streams",
            registry=r,
        )
        self.live_served_bytes = Counter(
            "swarmcache_live_served_bytes_total",
            "Body bytes of live streams sent to clients",
            registry=r,
        )
        for action in ("skipped", "disconnected"):
            self.live_dropped.labels(action)
        # Content fingerprints (cache/fingerprint.py, swarmcache/http/dedup.py).
        self.fingerprint_candidates = Counter(
            "swarmcache_fingerprint_candidates_total",
            "Large fills whose first bytes and length matched a stored blob",
            registry=r,
        )
        self.fingerprint_confirmed = Counter(
            "swarmcache_fingerprint_confirmed_total",
            "Fingerprint candidates the origin's bytes confirmed (served from the stored blob)",
            registry=r,
        )
        self.fingerprint_mismatches = Counter(
            "swarmcache_fingerprint_mismatches_total",
            "Fingerprint candidates that turned out to be different files",
            registry=r,
        )
        self.fingerprint_saved_bytes = Counter(
            "swarmcache_fingerprint_saved_bytes_total",
            "Body bytes taken from a stored blob instead of the origin after a confirmed match",
            registry=r,
        )
        for result in RESULTS:
            self.requests.labels(result)
            self.served_bytes.labels(result)
        for listener in ("transparent", "proxy", "socks"):
            self.open_connections.labels(listener)
            self.refused_connections.labels(listener)

    def watch_store(self, read: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StoreCollector(read))

    def watch_swarm(
        self,
        counters: Callable[[], dict[str, int]],
        torrents: Callable[[], list[tuple[str, str, float]]],
    ) -> None:
        self.registry.register(_SwarmCollector(counters, torrents))

    def watch_sensing(self, read: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_SensingCollector(read))

    def watch_eviction(self, read: Callable[[], EvictionFigures]) -> None:
        self.registry.register(_EvictionCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
