"""The cache's request flow: look up, serve hits, fetch misses once, pass the rest through.

Why it is built this way: every decision comes from :mod:`cache.policy` (RFC 9111, pure) and
every byte of a stored body from :mod:`cache.store`; this module only sequences them and moves
bytes. Three paths:

- **fresh hit, small body, no request body**: answered synchronously inside ``data_received``
  (no task, one ``write``), from an in-memory copy of verified small bodies;
- **hit, large body**: head, then ``os.sendfile`` from the blob;
- **miss**: one upstream fetch per key (:class:`cache.fill.Coalescer`); a storable response is
  written to a blob while every waiting client streams it from the file at its own pace; an
  unstorable one is relayed to its own client only, and waiters fetch for themselves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from cache import policy
from cache.fill import Coalescer, Fill, FillAborted, FillHead, PendingFetch
from cache.keyrules import KeyRules
from cache.store import BlobWriter, CorruptBlob, ObjectMeta, Store, StoreError
from swarmcache.config import Config
from swarmcache.http.accesslog import AccessLog
from swarmcache.http.dedup import ContentDedup, DedupAttempt
from swarmcache.http.live import LiveHead, LiveHub, LiveStream
from swarmcache.http.parser import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    Header,
    RemoteProtocolError,
    Request,
    Response,
    chunk,
    serialize_response_head,
)
from swarmcache.http.responses import (
    CacheStatus,
    HitPlan,
    annotate,
    multipart_parts,
    not_modified_headers,
    plan_hit,
)
from swarmcache.http.server import ClientConnection
from swarmcache.http.splice import splice_into
from swarmcache.http.target import (
    Target,
    blocked_destination,
    key_for_url,
    resolve_target,
    variant_key,
)
from swarmcache.http.tunnel import relay_both_ways
from swarmcache.http.upstream import UpstreamConnection, UpstreamError, resolve_ipv4
from swarmcache.metrics import RESULTS, Metrics

__all__ = ["CacheHandler"]

log = logging.getLogger("swarmcache.http")

# Request fields never forwarded: we fetch whole objects to fill the cache and answer
# conditionals and ranges ourselves.
_FILL_DROPPED = frozenset(
    {
        b"range",
        b"if-range",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
    }
)


class _StoredHead(typing.Protocol):
    """What a response head needs of a stored object or of a fill under way."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> bytes: ...
    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]: ...
    @property
    def request_time(self) -> float: ...
    @property
    def response_time(self) -> float: ...


# Bodies of known length at least this big are spliced (no copy through Python).
_SPLICE_MIN_BYTES = 1 << 20


@dataclass(slots=True)
class _Exchange:
    """Bookkeeping of one request for the access log and metrics."""

    request: Request
    target: Target
    started: float = field(default_factory=time.monotonic)
    result: str = "miss"
    status: int = 0
    upstream: int = 0
    sent_before: int = 0
    fill_started: bool = False
    # The connection of a fill this request started: its byte count is read when the
    # request is logged (the fill itself may go on a little longer).
    upstream_conn: UpstreamConnection | None = None


@dataclass(slots=True)
class _Hot:
    """A small, verified, Vary-free object kept in memory with its response prefix built.

    ``prefix`` is the status line and every field that does not change between hits; a hit
    appends Age, Content-Length and the blank line, so the common hit costs one dict lookup,
    one freshness check and one write.
    """

    meta: ObjectMeta
    body: bytes
    prefix: bytes
    fresh_until: float  # when a request without directives stops being a fresh hit
    since: float  # when age_at was computed
    age_at: float


class _HotObjects:
    """Primary key → :class:`_Hot`, an LRU bounded by body bytes.

    Entries are dropped whenever the handler changes the key in the store, so a hot entry
    never outlives the stored object it mirrors.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: collections.OrderedDict[bytes, _Hot] = collections.OrderedDict()

    def get(self, key: bytes) -> _Hot | None:
        hot = self._items.get(key)
        if hot is not None:
            self._items.move_to_end(key)
        return hot

    def put(self, key: bytes, hot: _Hot) -> None:
        self.drop(key)
        if len(hot.body) > self.budget:
            return
        self._items[key] = hot
        self.used += len(hot.body)
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= len(old.body)

    def drop(self, key: bytes) -> None:
        hot = self._items.pop(key, None)
        if hot is not None:
            self.used -= len(hot.body)

    def clear(self) -> None:
        self._items.clear()
        self.used = 0

    def drop_urls(self, match: Callable[[bytes], bool]) -> None:
        for key in [k for k, hot in self._items.items() if match(hot.meta.url)]:
            self.drop(key)

    def holds(self, url: bytes) -> bool:
        return any(hot.meta.url == url for hot in self._items.values())


# A tracker reply is small; one bigger than this is relayed untouched.
_MAX_ANNOUNCE_REPLY = 2 << 20

BodyRewrite = Callable[[bytes, str | None], bytes | None]
"""Gets a whole response body and its Content-Encoding; returns a new body or None."""


class AnnounceHook(typing.Protocol):
    """Sees BitTorrent tracker announces that pass through the box (wired by the daemon).

    Returns how to rewrite the tracker's reply (to add the box to its peer list), or None to
    relay it untouched. The interceptor's rules send tracker ports through TPROXY for this.
    """

    def announce(self, client_ip: str, url: bytes, query: bytes) -> BodyRewrite | None: ...


class CacheHandler:
    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        config: Config,
        access_log: AccessLog,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.config = config
        self.access_log = access_log
        self.coalescer = Coalescer()
        self.live = LiveHub(config.live, metrics, config.http.via_name.encode())
        self.announce_hook: AnnounceHook | None = None
        # admission(key, length, url): store this fill? (cache/evictor.py; None: always)
        self.admission: Callable[[bytes, int, bytes], bool] | None = None
        self.status = CacheStatus(config.http.via_name)
        self.via = config.http.via_name.encode()
        self.hot = _HotObjects(64 << 20)
        self._tasks: set[asyncio.Task[None]] = set()
        self.key_rules = KeyRules(config.cache.key_rules)
        self.dedup = ContentDedup(
            store=store, metrics=metrics, config=config.cache, open_upstream=self._open_upstream
        )
        # Pin rules (cache.pins), wired by the daemon: a fill of a pinned URL is stored pinned.
        self.is_pinned: Callable[[bytes], bool] = lambda url: False
        # Fills under way that will be indexed; purge() takes entries out (see there).
        self._fills: dict[Fill, tuple[Target, PendingFetch | None]] = {}
        # prometheus-client's labels() costs microseconds; bind the children once.
        self._requests = {r: metrics.requests.labels(r) for r in RESULTS}
        self._served = {r: metrics.served_bytes.labels(r) for r in RESULTS}

    # --- entry point ------------------------------------------------------------------
    def handle(self, conn: ClientConnection, request: Request) -> Awaitable[bool] | bool:
        if request.method == b"CONNECT":
            return self._connect(conn, request)
        target = resolve_target(
            request, transparent=conn.ctx.transparent, local=conn.local_addr, rules=self.key_rules
        )
        exchange = _Exchange(request, target, sent_before=conn.sent_bytes)
        if (
            self.announce_hook is not None
            and request.method == b"GET"
            and b"info_hash=" in request.target
        ):
            # A tracker announce: never cached (replies are per peer), maybe rewritten.
            query = target.path.partition(b"?")[2]
            rewrite = self.announce_hook.announce(conn.client_ip, target.url, query)
            exchange.result = "pass"
            # A tracker records the announcer's address: in transparent mode it must see the
            # subscriber's, not the box's, or other peers would be sent to the box's address.
            source = conn.client_ip if conn.ctx.transparent else None
            return self._forward(
                conn, exchange, invalidate=False, rewrite=rewrite, source_ip=source
            )
        action = policy.classify_request(request.method, request.headers)
        if action is policy.RequestAction.LOOKUP and request.get(b"upgrade") is None:
            served = self._fast_hit(conn, exchange)
            if served is not None:
                return served
            return self._lookup(conn, exchange)
        exchange.result = "pass"
        return self._forward(conn, exchange, invalidate=action is policy.RequestAction.INVALIDATE)

    async def close(self, grace: float = 5.0) -> None:
        """Let fills under way finish (so their objects are stored), then cancel the rest."""
        await self.live.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    # --- bookkeeping ------------------------------------------------------------------
    def _finish(self, conn: ClientConnection, ex: _Exchange) -> None:
        sent = conn.sent_bytes - ex.sent_before
        if ex.upstream_conn is not None:
            ex.upstream = ex.upstream_conn.received_bytes
        self._requests[ex.result].inc()
        self._served[ex.result].inc(sent)
        self.access_log.record(
            client=conn.client_ip,
            method=ex.request.method,
            url=ex.target.url,
            status=ex.status,
            sent=sent,
            result=ex.result,
            upstream=ex.upstream,
            started=ex.started,
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _error(self, conn: ClientConnection, ex: _Exchange, status: int, message: str) -> bool:
        ex.status = status
        ex.result = "error"
        conn.send_error(status, message)
        self._finish(conn, ex)
        return False

    # --- lookups ----------------------------------------------------------------------
    def _find(self, ex: _Exchange) -> tuple[bytes, ObjectMeta] | None:
        meta = self.store.get(ex.target.key)
        if meta is None:
            return None
        if not meta.vary:
            return ex.target.key, meta
        key = variant_key(
            ex.target.key, meta.stored_at, policy.vary_key(meta.vary, ex.request.headers)
        )
        variant = self.store.get(key)
        return None if variant is None else (key, variant)

    def _fast_hit(self, conn: ClientConnection, ex: _Exchange) -> bool | None:
        """Serve a fresh hot object synchronously; None if this needs the slow path."""
        hot = self.hot.get(ex.target.key)
        if hot is None:
            return None
        request = ex.request
        meta = hot.meta
        now = time.time()
        keep_alive = request.keep_alive
        plain = (
            request.version == b"1.1"
            and keep_alive
            and _SLOW_PATH_FIELDS.isdisjoint(name for name, _ in request.headers)
        )
        if plain:
            # No request directives: freshness and Age are linear in time, computed once
            # when the object became hot (same RFC 9111 functions, evaluated in advance).
            if now >= hot.fresh_until:
                return None
            age = hot.age_at + (now - hot.since)
            head = b"%sage: %s\r\ncontent-length: %d\r\n\r\n" % (
                hot.prefix,
                policy.age_header_value(age),
                len(hot.body),
            )
            conn.write(head if request.method == b"HEAD" else head + hot.body)
            body_sent = 0 if request.method == b"HEAD" else len(hot.body)
            ex.status = meta.status
        else:
            freshness = policy.evaluate_freshness(
                meta.status,
                meta.headers,
                policy.request_directives(request.headers),
                request_time=meta.request_time,
                response_time=meta.response_time,
                now=now,
            )
            if freshness is not policy.Freshness.FRESH:
                return None
            plan = plan_hit(request, meta.status, meta.headers, meta.blob.size)
            if plan.multipart_boundary:
                return None
            head = self._hit_head(request, meta, plan, now, self.status.hit, keep_alive)
            if request.method == b"HEAD" or not plan.ranges:
                conn.write(head)
                body_sent = 0
            else:
                start, end = plan.ranges[0]
                conn.write(head + hot.body[start : end + 1])
                body_sent = end - start + 1
            ex.status = plan.status
        self.store.touch(ex.target.key, now)
        ex.result = "hit"
        self.metrics.saved_bytes.inc(body_sent)
        self._finish(conn, ex)
        return keep_alive

    def _remember_hot(self, key: bytes, meta: ObjectMeta, body: bytes) -> None:
        if meta.vary:
            return
        fields = annotate(
            [(n, v) for n, v in meta.headers if n != b"age"],
            via=self.via,
            version=b"1.1",
            cache_status=self.status.hit,
            hit=True,
            age=None,
            keep_alive=True,
        )
        prefix = serialize_response_head(meta.status, meta.reason, fields)[:-2]
        now = time.time()
        times = {"request_time": meta.request_time, "response_time": meta.response_time}
        age = policy.current_age(meta.headers, now=now, **times)
        fresh = policy.evaluate_freshness(
            meta.status, meta.headers, policy.RequestDirectives(), now=now, **times
        )
        lifetime = policy.freshness_lifetime(
            meta.status, meta.headers, date_fallback=meta.response_time
        )
        fresh_until = now + lifetime - age if fresh is policy.Freshness.FRESH else 0.0
        self.hot.put(key, _Hot(meta, body, prefix, fresh_until, now, age))

    def _hit_head(
        self,
        request: Request,
        meta: _StoredHead,
        plan: HitPlan,
        now: float,
        cache_status: bytes,
        keep_alive: bool,
    ) -> bytes:
        age = _age_value(meta, now)
        if plan.status == 304:
            base: list[Header] = not_modified_headers(meta.headers)
        elif plan.status in (412, 416) or plan.multipart_boundary:
            base = [(n, v) for n, v in meta.headers if n != b"content-type"]
            base = [] if plan.status == 412 else base
        else:
            base = list(meta.headers)
        fields = annotate(
            [(n, v) for n, v in base if n != b"content-range"],
            via=self.via,
            version=request.version,
            cache_status=cache_status,
            hit=True,
            age=age,
            keep_alive=keep_alive,
            extra=plan.fields,
        )
        status = plan.status
        reason = meta.reason if status == meta.status else _reason(status)
        return serialize_response_head(status, reason, fields)

    async def _lookup(self, conn: ClientConnection, ex: _Exchange) -> bool:
        request = ex.request
        directives = policy.request_directives(request.headers)
        found = self._find(ex)
        stale: tuple[bytes, ObjectMeta] | None = None
        if found is not None:
            key, meta = found
            now = time.time()
            freshness = policy.evaluate_freshness(
                meta.status,
                meta.headers,
                directives,
                request_time=meta.request_time,
                response_time=meta.response_time,
                now=now,
            )
            if freshness is policy.Freshness.FRESH:
                served = await self._serve_stored(conn, ex, key, meta, self.status.hit, "hit")
                if served is not None:
                    return served
            else:
                stale = (key, meta)
        if directives.only_if_cached and stale is None:
            return self._error(conn, ex, 504, "not in cache (only-if-cached)")
        if request.method == b"GET" and stale is None and _shareable_request(request):
            pending = self.coalescer.join(ex.target.key)
            if pending is not None:
                self.metrics.coalesced.inc()
                fill = await pending.wait()
                if fill is not None and fill.head.vary_key == policy.vary_key(
                    fill.head.vary, request.headers
                ):
                    fd = fill.open_reader()
                    if fd >= 0:
                        ex.result = "hit"
                        return await self._stream_fill(
                            conn, ex, fill, fd, self.status.coalesced, coalesced=True
                        )
                    again = self._find(ex)
                    if again is not None:
                        served = await self._serve_stored(
                            conn, ex, again[0], again[1], self.status.hit, "hit"
                        )
                        if served is not None:
                            return served
        return await self._fetch(conn, ex, stale)

    async def _serve_stored(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        key: bytes,
        meta: ObjectMeta,
        cache_status: bytes,
        result: str,
    ) -> bool | None:
        """Serve a stored object; None if its blob turned out corrupt (then it is dropped)."""
        loop = asyncio.get_running_loop()
        try:
            fd = self.store.open_blob(meta.blob)
        except CorruptBlob as exc:
            # Unreferenced by now: evicted or purged since the lookup (the index goes first,
            # then the file), not corrupt; the caller fetches it again.
            if self.store.has_blob(meta.blob):
                self._drop_corrupt(meta, str(exc))
            return None
        try:
            if not self.store.is_verified(meta.blob):
                ok = await loop.run_in_executor(None, self.store.verify_blob, meta.blob)
                if not ok:
                    self._drop_corrupt(meta, "content hash mismatch")
                    return None
            request = ex.request
            now = time.time()
            plan = plan_hit(request, meta.status, meta.headers, meta.blob.size)
            keep_alive = request.keep_alive
            head = self._hit_head(request, meta, plan, now, cache_status, keep_alive)
            ex.result = result
            ex.status = plan.status
            size = meta.blob.size
            if size <= self.config.cache.small_object_bytes:
                body = os.pread(fd, size, 0)
                if len(body) != size:
                    self._drop_corrupt(meta, "short read")
                    return None
                if key == ex.target.key:
                    self._remember_hot(key, meta, body)
            self.store.touch(key, now)
            conn.write(head)
            if request.method != b"HEAD" and plan.ranges:
                await self._send_ranges(conn, fd, meta, meta.blob.size, plan)
            self.metrics.saved_bytes.inc(sum(e - s + 1 for s, e in plan.ranges))
            self._finish(conn, ex)
            return keep_alive
        finally:
            os.close(fd)

    async def _send_ranges(
        self, conn: ClientConnection, fd: int, stored: _StoredHead, size: int, plan: HitPlan
    ) -> None:
        with open(fd, "rb", buffering=0, closefd=False) as file:
            if not plan.multipart_boundary:
                start, end = plan.ranges[0]
                await self._send_file(conn, file, start, end - start + 1)
                return
            content_type = next((v for n, v in stored.headers if n == b"content-type"), None)
            parts = multipart_parts(plan.multipart_boundary, content_type, plan.ranges, size)
            for part, (start, end) in zip(parts, plan.ranges, strict=False):
                conn.write(part)
                await self._send_file(conn, file, start, end - start + 1)
            conn.write(parts[-1])

    async def _send_file(
        self, conn: ClientConnection, file: object, offset: int, count: int
    ) -> None:
        if count <= self.config.cache.small_object_bytes:
            assert hasattr(file, "fileno")
            conn.write(os.pread(file.fileno(), count, offset))
            await conn.drain()
            return
        await conn.sendfile(file, offset, count)  # type: ignore[arg-type]

    def _drop_corrupt(self, meta: ObjectMeta, why: str) -> None:
        log.error("dropping corrupt blob %s of %r: %s", meta.blob.digest, meta.url, why)
        self.metrics.corrupt_blobs.inc()
        self.hot.clear()
        self.store.drop_blob(meta.blob)

    # --- misses -----------------------------------------------------------------------
    async def _open_upstream(
        self, target: Target, source_ip: str | None = None, *, high_water: int = 1 << 20
    ) -> UpstreamConnection:
        http = self.config.http
        host = await resolve_ipv4(target.host, target.port)
        why = blocked_destination(host)
        if why is not None:
            raise PermissionError(why)
        return await UpstreamConnection.open(
            host,
            target.port,
            connect_timeout=http.upstream_connect_timeout,
            idle_timeout=http.upstream_idle_timeout,
            max_head_bytes=http.max_head_bytes,
            max_headers=http.max_headers,
            source_ip=source_ip,
            high_water=high_water,
        )

    def _upstream_fields(
        self, request: Request, target: Target, drop: frozenset[bytes]
    ) -> list[Header]:
        # The Host sent is the one the key was made from: a proxy request's own Host field
        # (``GET http://victim/x`` + ``Host: attacker``) would fetch another site's object
        # into this key on a shared address (RFC 9112 3.2.2).
        fields = [
            (n, v)
            for n, v in policy.strip_hop_by_hop(request.headers)
            if n not in drop and n != b"host"
        ]
        fields.insert(0, (b"host", target.host_header))
        previous = [v for n, v in fields if n == b"via"]
        fields = [(n, v) for n, v in fields if n != b"via"]
        fields.append((b"via", b", ".join([*previous, b"1.1 " + self.via])))
        fields.append((b"connection", b"close"))
        return fields

    async def _fetch(
        self, conn: ClientConnection, ex: _Exchange, stale: tuple[bytes, ObjectMeta] | None
    ) -> bool:
        request = ex.request
        shareable = request.method == b"GET" and _shareable_request(request)
        # A live stream under way for this URL: join it (waiters of the coalescer that
        # started it come here too once it is live).
        stream = self.live.find(ex.target.key, request) if shareable else None
        if stream is not None:
            return await self._serve_live(conn, ex, stream, joined=True)
        pending = self.coalescer.start(ex.target.key) if shareable and stale is None else None
        try:
            return await self._fetch_inner(conn, ex, stale, pending)
        finally:
            # A fill's pump ends the entry itself once the object is indexed, so requests that
            # arrive between the last byte and the index update do not fetch it again.
            if pending is not None and not ex.fill_started:
                self.coalescer.end(ex.target.key, pending)

    async def _fetch_inner(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        stale: tuple[bytes, ObjectMeta] | None,
        pending: PendingFetch | None,
    ) -> bool:
        request = ex.request
        try:
            # A fill that may end in a fingerprint match reads little ahead of the head (see
            # ContentDedup.narrow_window).
            maybe_dedup = request.method == b"GET" and _shareable_request(request)
            read_ahead = self.dedup.read_ahead if maybe_dedup else 1 << 20
            upstream = await self._open_upstream(ex.target, high_water=read_ahead)
            if maybe_dedup:
                self.dedup.narrow_window(upstream)
        except PermissionError as exc:
            return self._error(conn, ex, 403, str(exc))
        except UpstreamError as exc:
            if stale is not None and self._may_serve_stale(stale[1], request):
                served = await self._serve_stored(
                    conn, ex, stale[0], stale[1], self.status.stale, "hit"
                )
                if served is not None:
                    return served
            return self._error(conn, ex, 502, str(exc))
        fill_handed_off = False
        try:
            fields = self._upstream_fields(request, ex.target, _FILL_DROPPED)
            if stale is not None:
                fields.extend(policy.validation_headers(stale[1].headers))
            request_time = time.time()
            await upstream.send_head(request.method, ex.target.path, fields)
            response = await self._final_response(upstream)
            response_time = time.time()
            attempt = (
                self.dedup.attempt(request, response, _content_length(response), ex.target, fields)
                if maybe_dedup
                else None
            )
            if maybe_dedup and attempt is None:
                self.dedup.widen_window(upstream)
            if stale is not None and response.status == 304:
                ex.upstream = upstream.received_bytes
                return await self._revalidated(
                    conn, ex, stale, response, request_time, response_time
                )
            if (
                request.method == b"GET"
                and _shareable_request(request)
                and self.live.eligible(ex.target.url, response)
            ):
                fill_handed_off = True  # the live stream owns the upstream now
                return await self._start_live(conn, ex, upstream, response, pending)
            decision = policy.storable(
                request.method, response.status, request.headers, response.headers
            )
            length = _content_length(response)
            if (
                decision.store
                and length is not None
                and length > self.config.cache.max_object_bytes
            ):
                decision = policy.StoreDecision(False, "larger than cache.max_object_bytes")
            # Only a known length can be judged against the quota; a chunked body is stored.
            # A body that may be matched by fingerprint is counted under its length, not its
            # URL: the same download behind a fresh token per user is one popular object to
            # the admission filter, not a stream of one-offs that never gets in.
            popularity_key = (
                b"\0length:%d" % length if attempt is not None and length is not None else None
            )
            refused = (
                decision.store
                and length is not None
                and self.admission is not None
                and not self.admission(popularity_key or ex.target.key, length, ex.target.url)
            )
            if (
                refused
                and attempt is not None
                and length is not None
                and self.dedup.may_match(length)
            ):
                # Not worth new disk, but a stored body of this very length may be this one:
                # look (a confirmed match costs no new bytes), and drop it if it is not.
                attempt.dedup_only = True
                refused = False
            if refused:
                decision = policy.StoreDecision(False, "not admitted (quota, admission filter)")
            if not decision.store:
                if attempt is not None:
                    self.dedup.widen_window(upstream)
                if pending is not None:
                    pending.publish(None)
                if stale is not None:
                    self._delete_object(ex.target.key)
                # "pass", not "miss": no disk size would have made this a hit, and the size
                # advisor and the dashboards tell cacheable traffic apart by this label. Not
                # admitted is a "miss": a bigger disk would have kept it.
                ex.result = "miss" if refused else "pass"
                return await self._relay(conn, ex, upstream, response, self.status.miss_not_stored)
            head = self._fill_head(request, response, length, request_time, response_time)
            if attempt is not None:
                upstream.transport.pause_reading()  # the pump reads the prefix itself
            writer = self.store.begin_blob()
            fill = Fill(head, writer.path)
            fd = fill.open_reader()
            if pending is not None:
                pending.publish(fill)
            fill_handed_off = True
            ex.fill_started = True
            self._fills[fill] = (ex.target, pending)
            ex.upstream_conn = upstream
            self._spawn(
                self._pump(upstream, writer, fill, ex.target, pending, attempt),
                name=f"fill {ex.target.url[:80]!r}",
            )
            ex.result = "miss"
            return await self._stream_fill(conn, ex, fill, fd, self.status.miss)
        except UpstreamError as exc:
            return self._error(conn, ex, 502, str(exc))
        finally:
            if not fill_handed_off:
                ex.upstream = upstream.received_bytes
                self.metrics.upstream_bytes.inc(upstream.received_bytes)
                upstream.close()

    async def _start_live(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        response: Response,
        pending: PendingFetch | None,
    ) -> bool:
        """Make this response a live stream other clients join; never stored."""
        target, fields = ex.target, self._upstream_fields(ex.request, ex.target, _FILL_DROPPED)

        async def reopen() -> tuple[UpstreamConnection, Response]:
            again = await self._open_upstream(target)
            try:
                await again.send_head(b"GET", target.path, fields)
                return again, await self._final_response(again)
            except BaseException:
                again.close()
                raise

        head = LiveHead.of(ex.request, response)
        stream = self.live.start(target.key, head, upstream, reopen)
        if pending is not None:
            pending.publish(None)
        if stream is None:
            # Another variant of this URL holds the stream: this client gets its own relay.
            try:
                return await self._relay(conn, ex, upstream, response, self.status.bypass)
            finally:
                self.metrics.upstream_bytes.inc(upstream.received_bytes)
                upstream.close()
        return await self._serve_live(conn, ex, stream, joined=False)

    async def _serve_live(
        self, conn: ClientConnection, ex: _Exchange, stream: LiveStream, *, joined: bool
    ) -> bool:
        ex.result = "hit" if joined else "miss"
        ex.status = stream.head.status
        try:
            keep_alive, sent = await self.live.serve(stream, conn, ex.request, joined=joined)
            if joined:
                self.metrics.saved_bytes.inc(sent)
            return keep_alive
        finally:
            self._finish(conn, ex)

    async def _final_response(self, upstream: UpstreamConnection) -> Response:
        while True:
            event = await upstream.next_event()
            if (isinstance(event, Response) and event.status >= 200) or (
                isinstance(event, Response) and event.status == 101
            ):
                return event
            if not isinstance(event, Response):
                raise UpstreamError("origin sent a body before its response head")

    def _fill_head(
        self,
        request: Request,
        response: Response,
        length: int | None,
        request_time: float,
        response_time: float,
    ) -> FillHead:
        stored = [
            (n, v) for n, v in policy.strip_hop_by_hop(response.headers) if n != b"content-length"
        ]
        if not any(n == b"date" for n, _ in stored):
            stored.append((b"date", policy.format_http_date(response_time)))
        names = policy.vary_names(response.headers) or ()
        return FillHead(
            status=response.status,
            reason=response.reason,
            headers=tuple((n, v) for n, v in stored if n != b"content-length"),
            length=length,
            request_time=request_time,
            response_time=response_time,
            vary=names,
            vary_key=policy.vary_key(names, request.headers),
        )

    async def _pump(
        self,
        upstream: UpstreamConnection,
        writer: BlobWriter,
        fill: Fill,
        target: Target,
        pending: PendingFetch | None,
        attempt: DedupAttempt | None = None,
    ) -> None:
        """Copy the upstream body into the blob, then index it: the only writer of a fill."""
        loop = asyncio.get_running_loop()
        try:
            length = fill.head.length
            if length is not None and (length >= _SPLICE_MIN_BYTES or attempt is not None):
                await self._move_spliced(upstream, writer, fill, length, attempt)
            else:
                while True:
                    event = await upstream.next_event()
                    if isinstance(event, Data):
                        writer.write(event.data)
                        fill.grow(writer.size)
                    elif isinstance(event, EndOfMessage):
                        break
            if fill.head.length is not None and writer.size != fill.head.length:
                raise UpstreamError("origin body shorter than its Content-Length")
            fill.mark_complete()
            unmatched = attempt is not None and attempt.dedup_only and attempt.confirmed is None
            if fill not in self._fills or unmatched:
                # Purged while it was fetched, or refused by admission and matching nothing
                # stored: nothing of it is indexed.
                writer.abort()
                fill.finish()
                return
            ref = await loop.run_in_executor(
                None, lambda: writer.commit(fsync=self.config.cache.fsync)
            )
            head = fill.head
            meta = ObjectMeta(
                url=target.url,
                status=head.status,
                reason=head.reason,
                headers=head.headers,
                request_time=head.request_time,
                response_time=head.response_time,
                blob=ref,
                vary=head.vary,
                stored_at=time.time(),
                pinned=self.is_pinned(target.url),
            )
            self.hot.drop(target.key)
            primary = self.store.get(target.key) if head.vary else None
            keys: list[bytes] = []
            if primary is not None and primary.vary == head.vary:
                generation = primary.stored_at
            else:
                self.store.put(target.key, meta)
                keys.append(target.key)
                generation = meta.stored_at
            if head.vary:
                keys.append(variant_key(target.key, generation, head.vary_key))
                self.store.put(keys[-1], meta)
            self.store.mark_verified(ref)
            if attempt is not None:
                # With the put, no await between: whoever sees the object sees its fingerprint.
                self.dedup.record(attempt, ref)
            if fill not in self._fills:
                # Purged during the commit: take back what was just indexed (no await since).
                for key in keys:
                    self.store.delete(key)
            fill.finish()
            if attempt is not None:
                await self.dedup.maybe_prune()
        except (UpstreamError, OSError, StoreError) as exc:
            log.warning("fill of %r failed: %s", target.url, exc)
            writer.abort()
            fill.abort(exc)
        except Exception as exc:
            # A bug here must still end every reader's response and free the coalescer
            # entry; it is logged with its traceback, never swallowed silently.
            log.exception("fill of %r crashed", target.url)
            writer.abort()
            fill.abort(exc)
        except asyncio.CancelledError:
            writer.abort()
            fill.abort(ConnectionAbortedError("shutting down"))
            raise
        finally:
            self.metrics.upstream_bytes.inc(upstream.received_bytes)
            upstream.close()
            self._fills.pop(fill, None)
            if pending is not None:
                self.coalescer.end(target.key, pending)

    def purge(self, match: Callable[[bytes], bool]) -> int:
        """Forget in-memory state of the URLs ``match`` selects; returns the fills dropped.

        Called before (and again after) an operator purge deletes the objects from the store,
        so the next request for a purged URL is a miss: hot copies are dropped, and fills
        under way are detached from the coalescer (later requests do not join them) and will
        not be indexed. Their clients still get the whole body: each reads its own
        descriptor on the file.
        """
        self.hot.drop_urls(match)
        return self._detach_fills(lambda target: match(target.url))

    def _detach_fills(self, selects: Callable[[Target], bool]) -> int:
        """Fills under way for the targets ``selects`` will not be indexed, and later requests
        do not join them; their clients still get the whole body. Returns how many."""
        dropped = 0
        for fill, (target, pending) in list(self._fills.items()):
            if selects(target):
                del self._fills[fill]
                if pending is not None:
                    self.coalescer.end(target.key, pending)
                dropped += 1
        return dropped

    def fills_of(self, url: bytes) -> list[tuple[Target, Fill]]:
        """Fills under way for ``url`` (for ``inspect``)."""
        return [(t, f) for f, (t, _) in self._fills.items() if t.url == url]

    async def _move_spliced(
        self,
        upstream: UpstreamConnection,
        writer: BlobWriter,
        fill: Fill,
        length: int,
        attempt: DedupAttempt | None = None,
    ) -> None:
        """Large bodies of known length: socket → pipe → blob file, all in the kernel.

        With a fingerprint ``attempt``, the prefix is moved first and looked up while the
        origin is not read; a confirmed match cuts the origin and copies the rest from disk.
        """
        buffered, sock_fd = upstream.detach_body()
        try:
            if buffered:
                writer.write(buffered[:length])
                fill.grow(writer.size)

            def landed(n: int) -> None:
                writer.account_written(n)
                upstream.received_bytes += n
                fill.grow(writer.size)

            async def move_until(end: int) -> None:
                await splice_into(
                    sock_fd,
                    writer.fileno(),
                    max(0, end - writer.size),
                    on_progress=landed,
                    idle_timeout=self.config.http.upstream_idle_timeout,
                )

            if attempt is not None:
                prefix_end = min(self.dedup.prefix_bytes, length)
                await move_until(prefix_end)
                confirmed = await self.dedup.look_up(attempt, _read_prefix(writer, prefix_end))
                if confirmed is not None:
                    try:
                        # Cut the origin first: from here on nothing more comes from it.
                        os.close(sock_fd)
                        sock_fd = -1
                        upstream.abort()
                        await self.dedup.copy_rest(confirmed, writer, fill.grow)
                    finally:
                        os.close(confirmed.fd)
                    return
                self.dedup.widen_window(upstream)
            await move_until(length)
        finally:
            if sock_fd >= 0:
                os.close(sock_fd)

    async def _stream_fill(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        fill: Fill,
        fd: int,
        cache_status: bytes,
        *,
        coalesced: bool = False,
    ) -> bool:
        """Send a growing body to one client, from its own offset, at its own pace."""
        request = ex.request
        head = fill.head
        # A body the origin sent without a length has one once the fill is complete: a client
        # joining between then and the index update gets it framed like a stored hit.
        length = fill.size if head.length is None and fill.complete else head.length
        if length is not None and _has_conditionals(request):
            plan = plan_hit(request, head.status, head.headers, length)
            if plan.status != head.status:
                return await self._answer_from_fill(conn, ex, fill, fd, plan, cache_status)
        chunked, keep_alive, extra = _framing(request, length, has_body=True)
        if request.method == b"HEAD":
            extra = [f for f in extra if f[0] != b"transfer-encoding"]
        age = _age_value(head, time.time())
        fields = annotate(
            head.headers,
            via=self.via,
            version=request.version,
            cache_status=cache_status,
            hit=coalesced,
            age=age,
            keep_alive=keep_alive,
            extra=extra,
        )
        ex.status = head.status
        with open(fd, "rb", buffering=0) as file:
            conn.write(serialize_response_head(head.status, head.reason, fields))
            if request.method == b"HEAD":
                self._finish(conn, ex)
                return keep_alive
            offset = 0
            try:
                while True:
                    size = await fill.wait_past(offset)
                    if size > offset:
                        if chunked:
                            conn.write(b"%x\r\n" % (size - offset))
                        await conn.sendfile(file, offset, size - offset)
                        if chunked:
                            conn.write(b"\r\n")
                        offset = size
                    elif fill.complete:
                        break
            except FillAborted:
                conn.abort()
                self._finish(conn, ex)
                return False
            if chunked:
                conn.write(LAST_CHUNK)
        if coalesced:
            self.metrics.saved_bytes.inc(offset)
        self._finish(conn, ex)
        return keep_alive

    async def _answer_from_fill(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        fill: Fill,
        fd: int,
        plan: HitPlan,
        cache_status: bytes,
    ) -> bool:
        """A 206/304/412/416 for a body still being fetched: wait for the bytes it needs."""
        request = ex.request
        keep_alive = request.keep_alive
        needed = max((end for _, end in plan.ranges), default=-1)
        with open(fd, "rb", buffering=0) as file:
            try:
                while fill.size <= needed and not fill.complete:
                    await fill.wait_past(fill.size)
            except FillAborted:
                conn.abort()
                self._finish(conn, ex)
                return False
            head = self._hit_head(request, fill.head, plan, time.time(), cache_status, keep_alive)
            conn.write(head)
            ex.status = plan.status
            if request.method != b"HEAD" and plan.ranges:
                assert fill.head.length is not None
                await self._send_ranges(conn, file.fileno(), fill.head, fill.head.length, plan)
        self._finish(conn, ex)
        return keep_alive

    async def _revalidated(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        stale: tuple[bytes, ObjectMeta],
        response: Response,
        request_time: float,
        response_time: float,
    ) -> bool:
        key, meta = stale
        merged = policy.merge_not_modified(meta.headers, response.headers)
        updated = replace(
            meta,
            headers=tuple(merged),
            request_time=request_time,
            response_time=response_time,
        )
        # The 304 may have turned the object private or no-store: then this client (whose
        # request it answered) gets it once more, and nobody after it.
        still_shared = policy.storable(
            b"GET", meta.status, ex.request.headers, updated.headers
        ).store
        self.hot.drop(ex.target.key)
        if still_shared:
            self.store.update(key, updated)
            if key != ex.target.key:
                primary = self.store.get(ex.target.key)
                if primary is not None and primary.blob == meta.blob:
                    self.store.update(ex.target.key, updated)
        served = await self._serve_stored(
            conn, ex, key, updated, self.status.revalidated, "revalidated"
        )
        if not still_shared:
            self._delete_object(ex.target.key)
        if served is None:
            return self._error(conn, ex, 502, "stored object was corrupt")
        return served

    def _may_serve_stale(self, meta: ObjectMeta, request: Request) -> bool:
        freshness = policy.evaluate_freshness(
            meta.status,
            meta.headers,
            policy.request_directives(request.headers),
            request_time=meta.request_time,
            response_time=meta.response_time,
            now=time.time(),
        )
        return freshness is policy.Freshness.STALE

    def _delete_object(self, key: bytes) -> None:
        self.hot.drop(key)
        # Variants of the primary's generation become unreachable with it (see variant_key).
        self.store.delete(key)

    # --- pass-through -----------------------------------------------------------------
    async def _forward(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        *,
        invalidate: bool,
        rewrite: BodyRewrite | None = None,
        source_ip: str | None = None,
    ) -> bool:
        request = ex.request
        try:
            upstream = await self._open_upstream(ex.target, source_ip)
        except PermissionError as exc:
            return self._error(conn, ex, 403, str(exc))
        except UpstreamError as exc:
            return self._error(conn, ex, 502, str(exc))
        try:
            upgrade = request.get(b"upgrade")
            fields = self._upstream_fields(request, ex.target, frozenset())
            if upgrade is not None:
                fields = [(n, v) for n, v in fields if n != b"connection"]
                fields += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
            expect = request.get(b"expect")
            if expect is not None:
                # We read the body ourselves and forward it whole: tell the client to send it
                # now rather than after its own timeout.
                fields = [(n, v) for n, v in fields if n != b"expect"]
                if expect.lower() == b"100-continue":
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await upstream.send_head(request.method, ex.target.path, fields)
            if request.get(b"content-length") or request.get(b"transfer-encoding"):
                chunked = request.get(b"transfer-encoding") is not None
                while True:
                    event = await conn.next_body_event()
                    if isinstance(event, EndOfMessage):
                        if chunked:
                            await upstream.send_body(LAST_CHUNK)
                        break
                    await upstream.send_body(chunk(event.data) if chunked else event.data)
            response = await self._final_response(upstream)
            if response.status == 101 and upgrade is not None:
                return await self._upgraded(conn, ex, upstream, response)
            if invalidate and response.status < 400:
                for url in policy.invalidation_targets(
                    request.method, response.status, response.headers, ex.target.url
                ):
                    # A fill of the old state still under way must not be indexed after this.
                    key = key_for_url(ex.target, url, self.key_rules)
                    self._detach_fills(_has_key(key))
                    self._delete_object(key)
            if rewrite is not None and response.status == 200 and request.method == b"GET":
                return await self._relay_rewritten(conn, ex, upstream, response, rewrite)
            return await self._relay(conn, ex, upstream, response, self.status.bypass)
        except UpstreamError as exc:
            return self._error(conn, ex, 502, str(exc))
        finally:
            ex.upstream = upstream.received_bytes
            self.metrics.upstream_bytes.inc(upstream.received_bytes)
            upstream.close()

    async def _relay(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        response: Response,
        cache_status: bytes,
        *,
        prefix: Sequence[bytes] = (),
    ) -> bool:
        """Send an upstream response to this client only, without storing it.

        ``prefix``: body bytes already read from ``upstream`` by the caller.
        """
        request = ex.request
        length = _content_length(response)
        has_body = (
            request.method != b"HEAD"
            and response.status not in (204, 304)
            and (response.status >= 200)
        )
        chunked, keep_alive, extra = _framing(request, length, has_body=has_body)
        fields = annotate(
            policy.strip_hop_by_hop(response.headers),
            via=self.via,
            version=request.version,
            cache_status=cache_status,
            hit=False,
            age=None,
            keep_alive=keep_alive,
            extra=extra,
        )
        ex.status = response.status
        conn.write(serialize_response_head(response.status, response.reason, fields))
        for data in prefix:
            conn.write(chunk(data) if chunked else data)
        while True:
            event = await upstream.next_event()
            if isinstance(event, EndOfMessage):
                break
            if isinstance(event, Data) and has_body:
                conn.write(chunk(event.data) if chunked else event.data)
                if conn.write_paused:
                    await conn.drain()
        if chunked:
            conn.write(LAST_CHUNK)
        await conn.drain()
        self._finish(conn, ex)
        return keep_alive

    async def _relay_rewritten(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        response: Response,
        rewrite: BodyRewrite,
    ) -> bool:
        """Read a small reply whole, let ``rewrite`` change it, send it with its new length.

        A reply larger than the limit, or one the rewrite declines, goes out as it came.
        """
        parts: list[bytes] = []
        size = 0
        while size <= _MAX_ANNOUNCE_REPLY:
            event = await upstream.next_event()
            if isinstance(event, EndOfMessage):
                break
            if isinstance(event, Data):
                parts.append(bytes(event.data))
                size += len(event.data)
        else:
            return await self._relay(
                conn, ex, upstream, response, self.status.bypass, prefix=parts
            )
        body = b"".join(parts)
        encoding = response.get(b"content-encoding")
        new = rewrite(body, None if encoding is None else encoding.decode("latin-1"))
        if new is not None:
            body = new
        request = ex.request
        _, keep_alive, extra = _framing(request, len(body), has_body=True)
        fields = annotate(
            policy.strip_hop_by_hop(response.headers),
            via=self.via,
            version=request.version,
            cache_status=self.status.bypass,
            hit=False,
            age=None,
            keep_alive=keep_alive,
            extra=extra,
        )
        ex.status = response.status
        conn.write(serialize_response_head(response.status, response.reason, fields) + body)
        await conn.drain()
        self._finish(conn, ex)
        return keep_alive

    async def _upgraded(
        self,
        conn: ClientConnection,
        ex: _Exchange,
        upstream: UpstreamConnection,
        response: Response,
    ) -> bool:
        fields = [(n, v) for n, v in response.headers]
        conn.write(serialize_response_head(101, response.reason, fields))
        ex.status = 101
        ex.result = "pass"
        moved = await relay_both_ways(
            conn, upstream, conn.enter_raw_mode(), upstream.take_buffered()
        )
        self.metrics.tunnel_bytes.inc(moved)
        self._finish(conn, ex)
        return False

    async def _connect(self, conn: ClientConnection, request: Request) -> bool:
        host, port = _connect_authority(request)
        target = Target(b"connect://" + request.target, b"", host, port, b"", b"")
        ex = _Exchange(request, target, sent_before=conn.sent_bytes, result="pass")
        if conn.ctx.transparent:
            return self._error(conn, ex, 405, "CONNECT is only accepted by the explicit proxy")
        try:
            upstream = await self._open_upstream(target)
        except PermissionError as exc:
            return self._error(conn, ex, 403, str(exc))
        except UpstreamError as exc:
            return self._error(conn, ex, 502, str(exc))
        conn.write(b"HTTP/1.1 200 Connection Established\r\nvia: 1.1 " + self.via + b"\r\n\r\n")
        ex.status = 200
        moved = await relay_both_ways(conn, upstream, conn.enter_raw_mode(), b"")
        self.metrics.tunnel_bytes.inc(moved)
        self._finish(conn, ex)
        return False


def _has_key(key: bytes) -> Callable[[Target], bool]:
    return lambda target: target.key == key


def _framing(
    request: Request, length: int | None, *, has_body: bool
) -> tuple[bool, bool, list[Header]]:
    """How to frame a body for this client: (chunked, keep-alive, framing fields).

    A body of unknown length goes chunked to HTTP/1.1 clients and close-delimited to 1.0.
    """
    chunked = has_body and length is None and request.version == b"1.1"
    keep_alive = request.keep_alive and (not has_body or length is not None or chunked)
    if length is not None:
        return chunked, keep_alive, [(b"content-length", str(length).encode())]
    return chunked, keep_alive, [(b"transfer-encoding", b"chunked")] if chunked else []


def _age_value(stored: _StoredHead, now: float) -> bytes:
    return policy.age_header_value(
        policy.current_age(
            stored.headers,
            request_time=stored.request_time,
            response_time=stored.response_time,
            now=now,
        )
    )


def _connect_authority(request: Request) -> tuple[str, int]:
    from swarmcache.http.target import split_authority

    host, port = split_authority(request.target, 0)
    if port == 0:
        raise RemoteProtocolError("CONNECT needs host:port")
    return host, port


# Request fields that need the full rules on a hit (directives, conditionals, ranges).
_SLOW_PATH_FIELDS = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
    }
)
_CONDITIONALS = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"range"}
)


def _has_conditionals(request: Request) -> bool:
    """Conditionals or Range: the hit then needs :func:`plan_hit`."""
    return not _CONDITIONALS.isdisjoint(name for name, _ in request.headers)


def _shareable_request(request: Request) -> bool:
    """Requests whose response may be shared with other clients while it is fetched."""
    return request.get(b"authorization") is None and request.get(b"cookie") is None


def _content_length(response: Response) -> int | None:
    value = response.get(b"content-length")
    return int(value) if value is not None else None


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def blocked_destination_name(host: str) -> bool:
    return _is_address(host) and blocked_destination(host) is not None


def _read_prefix(writer: BlobWriter, size: int) -> bytes:
    fd = os.open(writer.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _reason(status: int) -> bytes:
    from swarmcache.http.parser import reason_phrase

    return reason_phrase(status)
