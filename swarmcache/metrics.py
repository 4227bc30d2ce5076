"""The daemon's Prometheus metrics, in one registry the daemon owns.

Why one object: tests start several daemons in one process, and prometheus-client's global
registry would make their counters collide. Names follow Prometheus conventions (``_total``
for counters, ``_bytes`` for sizes); hit ratios are left to PromQL (``rate(hits) /
rate(requests)``) so they can be taken over any window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["RESULTS", "Metrics"]

# The cache result of one request, as it appears in the `result` label and the access log.
RESULTS = ("hit", "miss", "revalidated", "pass", "refused", "error")


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
        for result in RESULTS:
            self.requests.labels(result)
            self.served_bytes.labels(result)
        for listener in ("transparent", "proxy"):
            self.open_connections.labels(listener)
            self.refused_connections.labels(listener)

    def watch_store(self, read: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StoreCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
