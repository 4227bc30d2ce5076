"""Live fan-out over asyncio: one upstream reader per stream, every client fed from its ring.

Why it is built this way: the decisions (ring, cursors, lag policy, which responses are live)
are in :mod:`cache.live`; this module only moves bytes. The upstream reader appends to the
ring at the origin's pace and then *pushes* to every client that is waiting for data, writing
straight into its transport: with a thousand clients on a stream, waking a thousand tasks per
upstream read would cost more than the writes themselves. A client's own task (the request
task the connection already runs) takes over only when its socket is backed up: it waits for
the transport to drain below ``client_buffer_bytes`` (never queueing more than that in the
daemon), then reads on from its cursor, skipped to the live edge or cut off if the ring moved
past it meanwhile. So a slow client costs at most its buffer bound, and never slows the others.

The registry is keyed like the cache (URL, plus the request's values of the fields the
response varies on; ICY metadata always counts, as an ``Icy-MetaData: 1`` client receives
different bytes). Streams are never stored. When the last client leaves, the upstream stays
open for ``linger`` seconds for the next one; when the origin ends or fails, every client's
response is ended cleanly (last chunk, or close for HTTP/1.0), or the stream reconnects.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cache import policy
from cache.live import (
    Cursor,
    LagPolicy,
    LiveRules,
    Ring,
    continues_stream,
    shareable_response,
    stream_may_continue,
)
from swarmcache.config import LiveConfig
from swarmcache.http.parser import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    Header,
    Request,
    Response,
    serialize_response_head,
)
from swarmcache.http.responses import annotate
from swarmcache.http.server import ClientConnection
from swarmcache.http.upstream import UpstreamConnection, UpstreamError
from swarmcache.metrics import Metrics

__all__ = ["LiveHead", "LiveHub", "LiveStream", "Reopen"]

log = logging.getLogger("swarmcache.http.live")

Reopen = Callable[[], Awaitable[tuple[UpstreamConnection, Response]]]
"""Opens the stream's upstream again (same request) and returns it with its response head."""

# Request fields a live response always varies on, whether the origin says so or not.
_ALWAYS_VARY = frozenset({b"icy-metadata"})


@dataclass(frozen=True, slots=True)
class LiveHead:
    """The origin's response head as every client of the stream gets it."""

    status: int
    reason: bytes
    headers: tuple[Header, ...]  # hop-by-hop fields removed
    vary: tuple[bytes, ...]
    vary_key: bytes

    @classmethod
    def of(cls, request: Request, response: Response) -> LiveHead:
        names = tuple(sorted(set(policy.vary_names(response.headers) or ()) | _ALWAYS_VARY))
        fields = policy.strip_hop_by_hop(response.headers)
        return cls(
            status=response.status,
            reason=response.reason,
            headers=tuple((n, v) for n, v in fields if n != b"content-length"),
            vary=names,
            vary_key=policy.vary_key(names, request.headers),
        )


class _Outcome(enum.Enum):
    CAUGHT_UP = "caught up"  # nothing more to send now
    PAUSED = "paused"  # the transport holds its bound; wait for it to drain
    ENDED = "ended"  # the stream ended and the client has every byte
    CUT = "cut"  # the client fell behind (disconnect policy) or went away


class _Client:
    __slots__ = ("chunked", "conn", "cursor", "parked", "sent", "waiter")

    def __init__(self, conn: ClientConnection, cursor: Cursor, chunked: bool) -> None:
        self.conn = conn
        self.cursor = cursor
        self.chunked = chunked
        self.parked = False
        self.sent = 0
        self.waiter: asyncio.Future[None] | None = None

    async def park(self) -> None:
        """Wait while the stream's reader pushes to this client; it wakes us when it cannot."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.parked = True
        try:
            await self.waiter
        finally:
            self.parked = False
            self.waiter = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class LiveStream:
    """One upstream response fanned out to the clients attached to it."""

    def __init__(self, hub: LiveHub, key: bytes, head: LiveHead, reopen: Reopen) -> None:
        config = hub.config
        self.hub = hub
        self.key = key
        self.head = head
        self.ring = Ring(
            block_bytes=config.block_bytes,
            blocks=max(2, config.ring_bytes // config.block_bytes),
            align=config.align_bytes,
        )
        self.clients: set[_Client] = set()
        self.ended = False
        self._reopen = reopen
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._served = 0

    # --- clients --------------------------------------------------------------------------
    def attach(self, client: _Client) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.clients.add(client)

    def detach(self, client: _Client) -> None:
        self.clients.discard(client)
        if not self.clients and not self.ended and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(
                self.hub.config.linger, self._linger_expired
            )

    def _linger_expired(self) -> None:
        self._linger = None
        if not self.clients:
            self.hub.retire(self)
            if self._task is not None:
                self._task.cancel()

    def send(self, client: _Client) -> _Outcome:
        """Write what the client's cursor has not seen, while its transport is below bound."""
        conn, ring, hub = client.conn, self.ring, self.hub
        while True:
            if conn.closed:
                return _Outcome.CUT
            if conn.write_paused:
                return _Outcome.PAUSED
            got = ring.read(client.cursor, hub.config.client_buffer_bytes, hub.lag)
            if got.behind:
                hub.dropped_disconnected.inc()
                return _Outcome.CUT
            if got.skipped:
                hub.dropped_skipped.inc()
            if not got.nbytes:
                return _Outcome.ENDED if ring.closed else _Outcome.CAUGHT_UP
            if client.chunked:
                conn.write(b"".join((b"%x\r\n" % got.nbytes, *got.views, b"\r\n")))
            else:
                for view in got.views:
                    conn.write(view)
            client.sent += got.nbytes
            self._served += got.nbytes

    def flush_served(self) -> None:
        if self._served:
            self.hub.metrics.live_served_bytes.inc(self._served)
            self._served = 0

    def _push(self) -> None:
        disconnect = self.hub.lag is LagPolicy.DISCONNECT
        for client in tuple(self.clients):
            if client.parked:
                if self.send(client) is not _Outcome.CAUGHT_UP:
                    client.wake()
            elif disconnect and self.ring.behind(client.cursor) and not client.conn.closed:
                # Backed up and already past the tail: waiting for its socket to drain would
                # only keep the connection (and its buffer) for nothing.
                self.hub.dropped_disconnected.inc()
                client.conn.abort()
        self.flush_served()

    # --- the upstream reader --------------------------------------------------------------
    def run(self, upstream: UpstreamConnection) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._read(upstream), name=f"live {self.key[:80]!r}"
        )

    async def _read(self, upstream: UpstreamConnection) -> None:
        config, ring = self.hub.config, self.ring
        try:
            while True:
                try:
                    await self._copy(upstream)
                    why = "origin ended the stream"
                except UpstreamError as exc:
                    why = str(exc)
                finally:
                    self.hub.metrics.upstream_bytes.inc(upstream.received_bytes)
                    upstream.close()
                if (
                    config.upstream_end != "reconnect"
                    or not self.clients
                    or not self.hub.may_continue(self.head)
                ):
                    log.info("live stream %r ended: %s", self.key, why)
                    return
                # The seam: clients get the new connection's bytes from its first whole unit.
                ring.drop_partial()
                log.warning("live stream %r: %s; reconnecting", self.key, why)
                await asyncio.sleep(config.reconnect_delay)
                try:
                    upstream, response = await self._reopen()
                except (UpstreamError, PermissionError) as exc:
                    log.warning("live stream %r: reconnect failed: %s", self.key, exc)
                    return
                if not self.hub.continues(self.head, response):
                    log.warning("live stream %r: origin answered %d", self.key, response.status)
                    upstream.close()
                    return
        finally:
            self._end()

    async def _copy(self, upstream: UpstreamConnection) -> None:
        counter = self.hub.metrics.live_upstream_bytes
        try:
            while True:
                event = await upstream.next_event()
                if isinstance(event, Data):
                    data = event.data
                    if data:
                        self.ring.append(data)
                        counter.inc(len(data))
                        self._push()
                elif isinstance(event, EndOfMessage):
                    return
        except BaseException:
            # Broken off (origin failed, or the stream is stopped): an unfinished unit is
            # never delivered, so what clients got ends, or goes on, on a unit boundary.
            self.ring.drop_partial()
            raise

    def _end(self) -> None:
        self.ended = True
        self.ring.close()
        self.hub.retire(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for client in self.clients:
            client.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class LiveHub:
    """The registry of running streams, and how a client is served from one."""

    def __init__(self, config: LiveConfig, metrics: Metrics, via: bytes) -> None:
        self.config = config
        self.metrics = metrics
        self.via = via
        self.rules = LiveRules(config.url_patterns, config.content_types)
        self.lag = LagPolicy(config.lag_policy)
        self.streams: dict[bytes, LiveStream] = {}
        self.status_started = via + b"; fwd=uri-miss; detail=live"
        self.status_joined = via + b"; hit; detail=live"
        self.dropped_skipped = metrics.live_dropped.labels("skipped")
        self.dropped_disconnected = metrics.live_dropped.labels("disconnected")
        streams = self.streams
        metrics.live_streams.set_function(lambda: len(streams))
        metrics.live_clients.set_function(lambda: sum(len(s.clients) for s in streams.values()))
        metrics.live_ring_bytes.set_function(
            lambda: sum(s.ring.held_bytes for s in streams.values())
        )

    def eligible(self, url: bytes, response: Response) -> bool:
        """A 200 without a length, matching a live rule, that may be shared (request-side
        conditions are the caller's: a GET without Authorization or Cookie)."""
        return (
            not self.rules.empty
            and response.status == 200
            and response.get(b"content-length") is None
            and self.rules.matches(url, response.get(b"content-type"))
            and shareable_response(response.headers)
        )

    def may_continue(self, head: LiveHead) -> bool:
        """Could any reconnect carry on the stream ``head`` began? (If not, none is tried.)"""
        return stream_may_continue(head.headers)

    def continues(self, head: LiveHead, response: Response) -> bool:
        """May a reconnect's response carry on the stream ``head`` began?"""
        return continues_stream(head.status, head.headers, response.status, response.headers)

    def find(self, key: bytes, request: Request) -> LiveStream | None:
        stream = self.streams.get(key)
        if stream is None or stream.ended:
            return None
        if policy.vary_key(stream.head.vary, request.headers) != stream.head.vary_key:
            return None
        return stream

    def start(
        self, key: bytes, head: LiveHead, upstream: UpstreamConnection, reopen: Reopen
    ) -> LiveStream | None:
        """Register a stream reading ``upstream``; None if another one holds the key."""
        if key in self.streams:
            return None
        stream = LiveStream(self, key, head, reopen)
        self.streams[key] = stream
        stream.run(upstream)
        return stream

    def retire(self, stream: LiveStream) -> None:
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]

    async def serve(
        self, stream: LiveStream, conn: ClientConnection, request: Request, *, joined: bool
    ) -> tuple[bool, int]:
        """Send the stream to one client until it ends; (keep-alive, body bytes sent)."""
        head = stream.head
        chunked = request.version == b"1.1"
        keep_alive = chunked and request.keep_alive
        fields = annotate(
            head.headers,
            via=self.via,
            version=request.version,
            cache_status=self.status_joined if joined else self.status_started,
            hit=joined,
            age=None,
            keep_alive=keep_alive,
            extra=[(b"transfer-encoding", b"chunked")] if chunked else [],
        )
        conn.write(serialize_response_head(head.status, head.reason, fields))
        bound = self.config.client_buffer_bytes
        if conn.transport is not None:
            conn.transport.set_write_buffer_limits(high=bound, low=bound // 4)
        client = _Client(conn, stream.ring.join(self.config.back_buffer_bytes), chunked)
        stream.attach(client)
        try:
            while True:
                outcome = stream.send(client)
                stream.flush_served()
                if outcome is _Outcome.CAUGHT_UP:
                    await client.park()
                elif outcome is _Outcome.PAUSED:
                    try:
                        await asyncio.wait_for(conn.drain(), self.config.stall_timeout)
                    except TimeoutError:
                        self.dropped_disconnected.inc()
                        conn.abort()
                        return False, client.sent
                elif outcome is _Outcome.ENDED:
                    if chunked:
                        conn.write(LAST_CHUNK)
                    return keep_alive and not conn.closed, client.sent
                else:
                    conn.abort()
                    return False, client.sent
        except ConnectionResetError:
            return False, client.sent
        finally:
            stream.detach(client)

    async def close(self) -> None:
        """Shutting down: end every stream (clients get their last chunk)."""
        for stream in list(self.streams.values()):
            await stream.stop()
