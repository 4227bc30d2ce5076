"""The SOCKS5 listener: software pointed at the box (ftp, ssh, rsync, a browser) without
interception. Plain HTTP to port 80 goes through the cache; everything else is relayed.

Why it is built this way:

* The protocol is :class:`swarmcache.socks.SocksServer` (sans-IO); this class only moves its
  bytes and acts on its events. It *is* a :class:`ClientConnection`, so subscriber checks,
  per-client limits, metrics, idle timeouts and raw relays are the HTTP listener's own.
* The SOCKS destination plays the part TPROXY's original destination plays for intercepted
  connections: the listener's context is *transparent*, the connection's ``local_addr`` is set
  to the (resolved) destination, so a request's cache key includes the address the client
  asked for and a forged Host header cannot poison another origin's objects.
* For HTTP ports the reply is sent before connecting upstream and the first bytes decide: an
  HTTP request goes to the cache (which connects on a miss and answers 502 if it cannot);
  anything else is relayed like any other destination. Other ports are connected first, so a
  refused or unreachable destination gets its SOCKS reply code.
* Destinations the explicit proxy refuses (loopback, link-local, multicast, unspecified) are
  refused here too (reply 0x02): a subscriber must not reach the box's own services.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import logging
from collections.abc import Callable
from typing import Final

from swarmcache.http.server import ClientConnection, ServerContext
from swarmcache.http.target import blocked_destination
from swarmcache.http.tunnel import relay_both_ways
from swarmcache.http.upstream import UpstreamConnection, UpstreamError, resolve_ipv4
from swarmcache.socks import (
    NEED_DATA,
    AuthMethod,
    ConnectRequest,
    Credentials,
    MethodChosen,
    RemoteSocksError,
    ReplyCode,
    SocksServer,
)

__all__ = ["SocksOptions", "socks_connection_factory"]

log = logging.getLogger(__name__)

_HTTP_METHODS: Final = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class SocksOptions:
    """Listener settings: HTTP ports routed to the cache, accounts (empty: no auth)."""

    def __init__(
        self,
        *,
        http_ports: tuple[int, ...] = (80,),
        users: dict[str, str] | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.http_ports = frozenset(http_ports)
        self.users = dict(users or {})
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout


class _SocksConnection(ClientConnection):
    def __init__(self, ctx: ServerContext, options: SocksOptions) -> None:
        super().__init__(ctx)
        self.options = options
        methods = (AuthMethod.USERNAME_PASSWORD,) if options.users else (AuthMethod.NO_AUTH,)
        self._socks = SocksServer(methods=methods)
        self._phase = "handshake"  # -> "sniff" (HTTP port) -> "http" | "relay"
        self._early: list[bytes] = []

    # --- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._phase in ("http", "relay"):
            super().data_received(data)
        elif self._phase == "handshake":
            self._handshake(data)
        elif self._phase == "sniff":
            self._sniff(data)
        else:  # "connecting": keep what the client sends early for the relay
            self._early.append(data)

    def eof_received(self) -> bool:
        if self._phase in ("http", "relay"):
            return super().eof_received()
        self.close()
        return False

    def _reply(self) -> None:
        out = self._socks.data_to_send()
        if out:
            self.write(out)

    def _handshake(self, data: bytes) -> None:
        try:
            self._socks.feed(data)
            while True:
                event = self._socks.next_event()
                if event is NEED_DATA:
                    self._reply()
                    return
                if isinstance(event, MethodChosen):
                    self._reply()
                elif isinstance(event, Credentials):
                    self._socks.accept_credentials(self._authentic(event))
                    self._reply()
                    if self._socks.state.name == "CLOSED":
                        self._count("refused")
                        self.close()
                        return
                elif isinstance(event, ConnectRequest):
                    self._phase = "connecting"
                    self._busy = True  # the idle timer leaves a connection with work alone
                    self._task = asyncio.get_running_loop().create_task(
                        self._connect(event), name=f"socks-{self.client_ip}:{self.client_port}"
                    )
                    return
        except RemoteSocksError as exc:
            log.info("bad SOCKS handshake from %s: %s", self.client_ip, exc)
            self._count("bad_handshake")
            self._reply()
            self.close()

    def _authentic(self, creds: Credentials) -> bool:
        user = creds.username.decode("utf-8", "replace")
        expected = self.options.users.get(user)
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), creds.password
        )

    # --- the destination ------------------------------------------------------------------

    async def _connect(self, request: ConnectRequest) -> None:
        try:
            address = await resolve_ipv4(request.host, request.port)
        except UpstreamError:
            self._fail(ReplyCode.HOST_UNREACHABLE, "unreachable")
            return
        if blocked_destination(address) is not None:
            self._fail(ReplyCode.NOT_ALLOWED, "refused")
            return
        self.local_addr = (address, request.port)
        if request.port in self.options.http_ports:
            # Answer now; the first bytes decide between the cache and a relay.
            self._socks.reply_success(*self._bound())
            self._reply()
            self._busy = False
            self._phase = "sniff"
            early = self._socks.take_buffered() + b"".join(self._early)
            self._early.clear()
            self._task = None
            if early:
                self._sniff(early)
            return
        upstream = await self._open(address, request.port)
        if upstream is None:
            return
        self._socks.reply_success(*self._bound())
        self._reply()
        await self._relay(upstream, self._socks.take_buffered() + b"".join(self._early))

    def _sniff(self, data: bytes) -> None:
        if data.startswith(_HTTP_METHODS):
            self._phase = "http"
            self._count("cached")
            super().data_received(data)
            return
        self._phase = "connecting"
        self._early.append(data)
        self._busy = True
        self._task = asyncio.get_running_loop().create_task(
            self._relay_to(*self.local_addr), name=f"socks-relay-{self.client_ip}"
        )

    async def _relay_to(self, host: str, port: int) -> None:
        upstream = await self._open(host, port, replied=True)
        if upstream is not None:
            await self._relay(upstream, b"".join(self._early))

    async def _open(
        self, host: str, port: int, *, replied: bool = False
    ) -> UpstreamConnection | None:
        try:
            return await UpstreamConnection.open(
                host,
                port,
                connect_timeout=self.options.connect_timeout,
                idle_timeout=self.options.idle_timeout,
            )
        except UpstreamError as exc:
            if replied:
                self._count("unreachable")
                self.close()
            else:
                cause = exc.__cause__
                refused = isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
                code = ReplyCode.CONNECTION_REFUSED if refused else ReplyCode.HOST_UNREACHABLE
                self._fail(code, "unreachable")
            return None

    async def _relay(self, upstream: UpstreamConnection, client_initial: bytes) -> None:
        self._phase = "relay"
        self._count("relayed")
        self._raw = collections.deque()
        moved = await relay_both_ways(self, upstream, client_initial, upstream.take_buffered())
        self.ctx.metrics.tunnel_bytes.inc(moved)
        self.close()

    def _count(self, outcome: str) -> None:
        self.ctx.metrics.socks_connections.labels(outcome).inc()

    def _fail(self, code: ReplyCode, outcome: str) -> None:
        self._count(outcome)
        self._socks.reply_failure(code)
        self._reply()
        self.close()

    def _bound(self) -> tuple[str, int]:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        return (str(sock[0]), int(sock[1])) if sock else ("0.0.0.0", 0)


def socks_connection_factory(
    ctx: ServerContext, options: SocksOptions
) -> Callable[[], ClientConnection]:
    if not ctx.transparent:
        raise ValueError("a SOCKS listener's context must be transparent (destination-keyed)")
    return lambda: _SocksConnection(ctx, options)
