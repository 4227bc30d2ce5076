"""The composition root: the one place that builds the object graph and owns its lifetime.

Order matters for failing open: listeners come up before the interception rules are
installed (so no SYN is ever diverted to a port nobody listens on), and at stop the rules go
first, then the listeners. The watchdog child removes the rules if this process dies or hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cache.eviction import Quota
from cache.evictor import Evictor, disk_quota
from cache.pins import PinRules
from cache.store import Store, StoreError
from cache.torrents import TorrentStore
from swarm.downloader import DownloadLimits
from swarm.errors import SwarmError
from swarm.popularity import PopularityTable
from swarm.seeder import ServedBatch
from swarm.sensor import Sensor
from swarm.service import SwarmOptions, SwarmService
from swarmcache.admin_api import OperatorAPI, info_hash_param
from swarmcache.btsensing import BitTorrentSensing
from swarmcache.config import Config, parse_hostport
from swarmcache.http.accesslog import AccessLog
from swarmcache.http.handler import CacheHandler
from swarmcache.http.server import ConnectionLimits, ServerContext, connection_factory
from swarmcache.metrics import Metrics
from swarmcache.systemd import sd_notify

if TYPE_CHECKING:
    from interceptor.rules import InterceptSpec

__all__ = ["Daemon", "intercept_spec", "run"]

log = logging.getLogger("swarmcache")


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = Store(config.cache.dir, map_size=config.cache.index_map_bytes)
        self.metrics.watch_store(self._store_stats)
        self.access_log = AccessLog(config.log.access_log)
        self.handler = CacheHandler(
            store=self.store, metrics=self.metrics, config=config, access_log=self.access_log
        )
        # Operator pin rules; is_pinned is also the evictor's "never evict" predicate.
        self.pins = PinRules(self.store)
        self.handler.is_pinned = self.pins.is_pinned
        self.limits = ConnectionLimits(config.http.max_connections_per_client)
        self.torrents: TorrentStore | None = None
        self.swarm: SwarmService | None = None
        self.popularity: PopularityTable | None = None
        self.sensing: BitTorrentSensing | None = None
        self._sensequeue: Any = None
        bt = config.bittorrent
        if bt.enabled:
            if bt.steering and config.intercept.enabled:
                self.popularity = PopularityTable(min_local_peers=bt.admit_min_local_peers)
            self.torrents = TorrentStore(self.store)
            self.swarm = SwarmService(
                self.torrents, config.cache.dir, self._swarm_options(), self.popularity
            )
            swarm = self.swarm
            swarm.seeder.on_batch = self._log_torrent_batch
            if self.popularity is not None:
                sensor = Sensor(
                    box=bt.steer_host_port(),
                    popularity=self.popularity,
                    admit=swarm.admit,
                    learn_peers=swarm.learn_peers,
                )
                self.sensing = BitTorrentSensing(sensor, config.intercept.subscriber_networks)
                self.handler.announce_hook = self.sensing
                self.metrics.watch_sensing(self._sensing_figures)
            self.metrics.watch_swarm(
                swarm.counters,
                lambda: [
                    (s.info_hash.hex(), s.info.name if s.info else "", s.info.progress)
                    for s in swarm.statuses()
                    if s.info is not None
                ],
            )
        self.evictor = self._make_evictor()
        self._tracker: web.AppRunner | None = None
        self._servers: list[asyncio.Server] = []
        self._contexts: list[ServerContext] = []
        self._admin: web.AppRunner | None = None
        self._intercept: Any = None
        self._synqueue: Any = None
        self._watchdog: Any = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._touch_flusher: asyncio.Task[None] | None = None
        self.proxy_address: tuple[str, int] | None = None
        self.transparent_port: int | None = None
        self.admin_address: tuple[str, int] | None = None

    def _log_torrent_batch(self, batch: ServedBatch) -> None:
        self.access_log.record_torrent(
            peer=batch.peer,
            info_hash=batch.info_hash,
            piece_length=batch.piece_length,
            pieces=batch.pieces,
            sent=batch.sent,
            fetched=batch.fetched,
            seconds=batch.seconds,
        )

    def _sensing_figures(self) -> dict[str, Any]:
        assert self.sensing is not None and self.popularity is not None
        queue = self._sensequeue
        sensor = self.sensing.sensor
        figures: dict[str, Any] = {
            "packets": {},
            "rewritten": 0,
            "handler_errors": 0,
            "stale": 0,
            "overflow": 0,
            "latency": None,
        }
        if queue is not None:
            figures.update(
                packets=dict(queue.kinds),
                rewritten=queue.rewritten,
                handler_errors=queue.handler_errors,
                stale=queue.stale,
                overflow=queue.overflow,
                latency=queue.latency_quantiles(),
            )
        figures.update(
            sightings=dict(sensor.sightings),
            steered=dict(sensor.steered),
            torrents_seen=len(self.popularity),
        )
        return figures

    def _swarm_options(self) -> SwarmOptions:
        bt = self.config.bittorrent
        return SwarmOptions(
            listen=parse_hostport(bt.listen, key="bittorrent.listen"),
            announce_port=bt.announce_port,
            subscribers=self.config.intercept.subscriber_networks,
            limits=DownloadLimits(
                max_peers=bt.max_peers_per_torrent,
                request_queue_time=bt.request_queue_time,
                max_queue=bt.max_request_queue,
                request_timeout=bt.request_timeout,
            ),
            download_rate_limit=bt.download_rate_limit,
            torrent_rate_limit=bt.torrent_rate_limit,
            commit_interval=bt.commit_interval,
            bind=bt.bind or None,
            hashing_threads=bt.hashing_threads,
        )

    def _store_stats(self) -> tuple[int, int]:
        stats = self.store.stats()
        return stats.objects, stats.bytes

    def _context(self, listener: str, transparent: bool) -> ServerContext:
        http = self.config.http
        ctx = ServerContext(
            handler=self.handler,
            metrics=self.metrics,
            subscribers=self.config.intercept.subscriber_networks,
            limits=self.limits,
            listener=listener,
            transparent=transparent,
            idle_timeout=http.client_idle_timeout,
            max_head_bytes=http.max_head_bytes,
            max_headers=http.max_headers,
        )
        self._contexts.append(ctx)
        return ctx

    def _make_evictor(self) -> Evictor:
        """The quota keeper, observing both stores (rebuilt from the index: slow at start-up
        for a large cache, before anything is served)."""
        c = self.config.cache
        quota = Quota(
            disk_quota(self.store.directory, c.quota_bytes, held=self._bytes_held()),
            c.high_watermark,
            c.low_watermark,
        )
        evictor = Evictor(
            self.store,
            quota,
            torrents=self.torrents,
            policy=c.eviction_policy,
            admission=c.admission,
            is_pinned=self.pins.is_pinned,
            downloading=self._downloading,
        )
        evictor.rebuild()
        evictor.install()
        self.handler.admission = evictor.admit
        if self.swarm is not None:
            self.swarm.seeder.on_serve = evictor.piece_served
        self.metrics.watch_eviction(evictor.figures)
        return evictor

    def _bytes_held(self) -> int:
        """Disk the cache occupies now: HTTP blobs (from the index) and torrent payload files
        (a few large files: their allocated blocks)."""
        held = self.store.stats().bytes
        for root, _, files in os.walk(os.path.join(self.store.directory, "torrents")):
            for name in files:
                with contextlib.suppress(OSError):
                    held += os.stat(os.path.join(root, name)).st_blocks * 512
        return held

    def _downloading(self, info_hash: bytes) -> bool:
        # Called from the evictor's thread: one dict lookup and a flag, no await.
        download = self.swarm.downloads.get(info_hash) if self.swarm is not None else None
        return download is not None and not download.done.is_set()

    async def _flush_touches_forever(self, interval: float = 30.0) -> None:
        """Write buffered hit counts back to the index, so a crash loses at most ``interval``
        seconds of them (they inform eviction, inspect and top)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(None, self.store.flush_touches)
            except StoreError as exc:
                log.warning("could not write hit counts back: %s", exc)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._touch_flusher = loop.create_task(
            self._flush_touches_forever(), name="flush hit counts"
        )
        self.evictor.attach(
            loop, in_flight=self.swarm.seeder.in_flight if self.swarm is not None else None
        )
        if self.config.http.proxy_listen:
            host, port = parse_hostport(self.config.http.proxy_listen, key="http.proxy_listen")
            server = await loop.create_server(
                connection_factory(self._context("proxy", transparent=False)),
                host,
                port,
                reuse_address=True,
                backlog=4096,
            )
            self._servers.append(server)
            self.proxy_address = server.sockets[0].getsockname()[:2]
            log.info("explicit proxy listening on %s:%d", *self.proxy_address)
        if self.config.socks.listen:
            from swarmcache.http.socks_listener import SocksOptions, socks_connection_factory

            host, port = parse_hostport(self.config.socks.listen, key="socks.listen")
            options = SocksOptions(
                http_ports=self.config.intercept.ports,
                users=self.config.socks.accounts(),
                connect_timeout=self.config.http.upstream_connect_timeout,
                idle_timeout=self.config.http.upstream_idle_timeout,
            )
            # Transparent: the SOCKS destination keys the cache, as TPROXY's does.
            ctx = self._context("socks", transparent=True)
            server = await loop.create_server(
                socks_connection_factory(ctx, options), host, port, reuse_address=True
            )
            self._servers.append(server)
            log.info("SOCKS5 listening on %s", self.config.socks.listen)
        if self.swarm is not None:
            await self.swarm.start()
            log.info("BitTorrent seeder listening on %s:%d", *self.swarm.seeder.address)
            await self._start_tracker()
        await self._start_admin()
        if self.config.intercept.enabled:
            await self._start_interception()

    async def _start_interception(self) -> None:
        from interceptor import rules
        from interceptor.synqueue import SynQueue
        from interceptor.tproxy import transparent_listener
        from interceptor.watchdog import Watchdog

        loop = asyncio.get_running_loop()
        icfg = self.config.intercept
        spec = intercept_spec(self.config)
        sense_queue = spec.sense_queue
        sock = transparent_listener("0.0.0.0", icfg.listen_port)
        server = await loop.create_server(
            connection_factory(self._context("transparent", transparent=True)), sock=sock
        )
        self._servers.append(server)
        self.transparent_port = icfg.listen_port
        self._synqueue = SynQueue(icfg.queue_num)
        self._synqueue.start(loop)
        if self.sensing is not None and sense_queue is not None:
            from interceptor.sensequeue import SenseQueue

            self._sensequeue = SenseQueue(sense_queue, self.sensing)
            self._sensequeue.start(loop)
        rules.install(spec)
        self._intercept = spec
        self._watchdog = Watchdog.start(spec, timeout=icfg.watchdog_timeout)
        self._beat()
        log.info(
            "intercepting TCP ports %s from %s via TPROXY to :%d",
            ",".join(map(str, icfg.ports)),
            ",".join(icfg.subscribers),
            icfg.listen_port,
        )

    def _beat(self) -> None:
        if self._watchdog is None:
            return
        self._watchdog.heartbeat()
        self._heartbeat = asyncio.get_running_loop().call_later(0.5, self._beat)

    async def _start_admin(self) -> None:
        if not self.config.admin.listen:
            return
        host, port = parse_hostport(self.config.admin.listen, key="admin.listen")
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._health_view)
        app.router.add_get("/api/stats", self._stats_view)
        app.router.add_get("/api/torrents", self._torrents_view)
        app.router.add_post("/api/torrents", self._pin_view)
        app.router.add_get("/api/torrents/{info_hash}", self._torrent_view)
        app.router.add_delete("/api/torrents/{info_hash}", self._purge_view)
        app.router.add_get("/api/bittorrent/seen", self._seen_view)
        self.operator = OperatorAPI(
            store=self.store,
            handler=self.handler,
            pins=self.pins,
            metrics=self.metrics,
            swarm=self.swarm,
            cache_dir=self.config.cache.dir,
            narrow_scans=not self.config.cache.key_rules,
        )
        self.operator.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._admin = runner
        server = site._server
        if isinstance(server, asyncio.Server) and server.sockets:
            self.admin_address = server.sockets[0].getsockname()[:2]
        log.info("admin API listening on %s", self.config.admin.listen)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.config.admin.token
        if token and request.path != "/healthz":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {token}".encode()):
                return web.Response(status=401, text="admin token required\n")
        result: web.StreamResponse = await handler(request)
        return result

    async def _metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _health_view(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats_view(self, request: web.Request) -> web.Response:
        stats = self.store.stats()
        return web.json_response(
            {
                "objects": stats.objects,
                "bytes": stats.bytes,
                "open_connections": sum(len(c.connections) for c in self._contexts),
                "fetches_in_flight": len(self.handler.coalescer),
                **self.operator.stats(),
            }
        )

    async def _start_tracker(self) -> None:
        listen = self.config.bittorrent.tracker_listen
        if not listen:
            return
        host, port = parse_hostport(listen, key="bittorrent.tracker_listen")
        app = web.Application()
        app.router.add_get("/announce", self._announce_view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        self._tracker = runner
        log.info("local tracker listening on %s", listen)

    async def _announce_view(self, request: web.Request) -> web.Response:
        assert self.swarm is not None
        body = self.swarm.announce_reply(request.remote or "", request.rel_url.raw_query_string)
        if body is None:
            return web.Response(status=403, text="not a subscriber\n")
        return web.Response(body=body, content_type="text/plain")

    def _swarm_or_404(self) -> SwarmService:
        if self.swarm is None:
            raise web.HTTPNotFound(text="BitTorrent is disabled (bittorrent.enabled = false)\n")
        return self.swarm

    @staticmethod
    def _info_hash(request: web.Request) -> bytes:
        return info_hash_param(request)

    async def _torrents_view(self, request: web.Request) -> web.Response:
        swarm = self._swarm_or_404()
        return web.json_response([s.as_json() for s in swarm.statuses()])

    async def _torrent_view(self, request: web.Request) -> web.Response:
        swarm = self._swarm_or_404()
        status = swarm.status(self._info_hash(request))
        if status is None:
            raise web.HTTPNotFound(text="no such torrent\n")
        return web.json_response(status.as_json())

    async def _pin_view(self, request: web.Request) -> web.Response:
        swarm = self._swarm_or_404()
        body = await request.read()
        if not body:
            raise web.HTTPBadRequest(text="send a magnet link or a .torrent file as the body\n")
        try:
            result = swarm.pin(body)
        except SwarmError as exc:
            raise web.HTTPBadRequest(text=f"cannot pin: {exc}\n") from None
        return web.json_response(
            {"info_hash": result.info_hash.hex(), "name": result.name, "known": result.known},
            status=201,
        )

    async def _seen_view(self, request: web.Request) -> web.Response:
        """What the interceptor sees of subscribers' BitTorrent traffic."""
        if self.popularity is None or self.sensing is None:
            raise web.HTTPNotFound(
                text="BitTorrent sensing is off (bittorrent.steering, intercept.enabled)\n"
            )
        now = time.monotonic()
        torrents = [
            {
                "info_hash": t.info_hash.hex(),
                "local_peers": t.local_peers,
                "bytes_seen": t.bytes_seen,
                "seen_for_s": round(now - t.first_seen, 1),
                "last_seen_s_ago": round(now - t.last_seen, 1),
                "admitted": t.admitted,
                "private": t.private,
                "trackers": list(t.trackers),
                "sources": dict(t.sources),
            }
            for t in self.popularity.snapshot(now=now)
        ]
        figures = self._sensing_figures()
        latency = figures.pop("latency")
        figures["verdict_latency_s"] = (
            None if latency is None else {"p50": latency[0], "p99": latency[1]}
        )
        return web.json_response({"torrents": torrents, **figures})

    async def _purge_view(self, request: web.Request) -> web.Response:
        swarm = self._swarm_or_404()
        info_hash = self._info_hash(request)
        if not await swarm.purge(info_hash):
            raise web.HTTPNotFound(text="no such torrent\n")
        return web.json_response({"info_hash": info_hash.hex(), "purged": True})

    async def stop(self) -> None:
        if self._touch_flusher is not None:
            self._touch_flusher.cancel()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._intercept is not None:
            from interceptor import rules

            rules.remove(self._intercept)
            self._intercept = None
        if self._synqueue is not None:
            self._synqueue.close()
            self._synqueue = None
        if self._sensequeue is not None:
            self._sensequeue.close()
            self._sensequeue = None
        for server in self._servers:
            server.close()
        await self.handler.close()
        for ctx in self._contexts:
            for conn in list(ctx.connections):
                conn.abort()
        for server in self._servers:
            await server.wait_closed()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._tracker is not None:
            await self._tracker.cleanup()
        if self.swarm is not None:
            await self.swarm.stop()
        await self.evictor.close()
        if self.torrents is not None:
            self.torrents.close()
        self.access_log.close()
        self.store.close()


def intercept_spec(config: Config) -> InterceptSpec:
    """The rules ``config`` installs; also what ``swarmcache remove-rules`` (the systemd
    unit's ExecStopPost) removes when the daemon could not."""
    from interceptor.rules import InterceptSpec

    icfg = config.intercept
    bt = config.bittorrent
    # The daemon senses BitTorrent (and diverts HTTP tracker ports) exactly in this case.
    sensing = bt.enabled and bt.steering and icfg.enabled
    return InterceptSpec(
        subscribers=icfg.subscriber_networks,
        ports=tuple(dict.fromkeys((*icfg.ports, *bt.tracker_ports))) if sensing else icfg.ports,
        listen_port=icfg.listen_port,
        queue_num=icfg.queue_num,
        route_table=icfg.route_table,
        sense_queue=bt.sense_queue if sensing else None,
    )


async def run(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        log.info("swarmcache ready")
        sd_notify("READY=1")
        await stop.wait()
    finally:
        sd_notify("STOPPING=1")
        await daemon.stop()
