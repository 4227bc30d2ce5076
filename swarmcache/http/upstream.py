"""A connection to an origin server: send one request, read the response as parser events.

Why it is built this way: the protocol object only moves bytes (``data_received`` appends to a
deque and wakes one waiter); all HTTP meaning comes from the sans-IO
:class:`~swarmcache.http.parser.ResponseReader`. Reading pauses when more than
``high_water`` bytes wait unconsumed, so a slow consumer applies TCP back-pressure to the
origin instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import socket
import typing
from collections.abc import Iterable

from swarmcache.http.parser import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Header,
    RemoteProtocolError,
    Response,
    ResponseReader,
    serialize_request_head,
)

__all__ = ["UpstreamConnection", "UpstreamError"]


_IP_TRANSPARENT = 19  # linux/in.h; not exported by the socket module on 3.11


async def resolve_ipv4(host: str, port: int) -> str:
    """``host`` as an address string: an IP literal as is, a name looked up (IPv4).

    Raises UpstreamError naming the host when the lookup fails.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise UpstreamError(f"cannot resolve {host}: {exc}") from exc
    return str(infos[0][4][0])


class UpstreamError(ConnectionError):
    """The origin could not be reached or broke the exchange."""


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, high_water: int) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._high_water = high_water
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self._high_water and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.error = exc
        self.eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def drain(self) -> None:
        if self._write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def take(self) -> bytes:
        """Next received chunk; b"" at EOF."""
        while not self.chunks:
            if self.eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self._paused and self.buffered <= self._high_water // 2 and self.transport:
            self._paused = False
            self.transport.resume_reading()
        return data


class UpstreamConnection:
    """One TCP connection to an origin, used for one exchange (no pooling yet)."""

    def __init__(
        self,
        protocol: _UpstreamProtocol,
        transport: asyncio.Transport,
        reader: ResponseReader,
        idle_timeout: float,
    ) -> None:
        self._protocol = protocol
        self._transport = transport
        self._reader = reader
        self._idle_timeout = idle_timeout
        self.received_bytes = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        idle_timeout: float,
        high_water: int = 1 << 20,
        max_head_bytes: int = 65536,
        max_headers: int = 100,
        source_ip: str | None = None,
    ) -> UpstreamConnection:
        """``source_ip``: connect *from* this (foreign) address with IP_TRANSPARENT, so the
        origin sees the subscriber, not the box (for trackers, which record the announcer's
        address); the interception rules deliver the replies to this socket."""
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            if source_ip is not None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
                sock.setblocking(False)
                sock.bind((source_ip, 0))
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), connect_timeout)
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _UpstreamProtocol(high_water), host, port)
                if sock is None
                else loop.create_connection(lambda: _UpstreamProtocol(high_water), sock=sock),
                connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = ResponseReader(max_head_bytes=max_head_bytes, max_headers=max_headers)
        return cls(protocol, transport, reader, idle_timeout)

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    async def send_head(self, method: bytes, target: bytes, headers: Iterable[Header]) -> None:
        self._reader.expect(method)
        self._transport.write(serialize_request_head(method, target, headers))
        await self._protocol.drain()

    async def send_body(self, data: bytes | memoryview) -> None:
        self._transport.write(data)
        await self._protocol.drain()

    async def next_event(self) -> Response | Data | EndOfMessage:
        """The next response event; raises UpstreamError on a broken or malformed reply."""
        while True:
            try:
                event = self._reader.next_event()
            except RemoteProtocolError as exc:
                raise UpstreamError(f"bad response from origin: {exc}") from exc
            if event is not NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self._protocol.take(), self._idle_timeout)
            except TimeoutError:
                raise UpstreamError("origin timed out") from None
            if not data and self._protocol.error is not None:
                raise UpstreamError(f"origin connection failed: {self._protocol.error}")
            self.received_bytes += len(data)
            self._reader.feed(data)

    def detach_body(self) -> tuple[bytes, int]:
        """Stop reading through asyncio and hand the body over to the caller's own splicing.

        Returns the body bytes already received past the head and a duplicate of the socket
        descriptor (asyncio refuses a second reader on the transport's own descriptor), or -1
        when the connection is already gone (what it sent is still returned). The caller owns
        and closes the duplicate; :meth:`close` still closes the connection.
        """
        self._transport.pause_reading()
        pending = b"".join(self._protocol.chunks)
        self.received_bytes += len(pending)
        buffered = self._reader.take_buffered() + pending
        self._protocol.chunks.clear()
        self._protocol.buffered = 0
        sock = self._transport.get_extra_info("socket")
        try:
            return buffered, os.dup(sock.fileno())
        except (AttributeError, OSError):
            return buffered, -1

    async def flush(self) -> None:
        """Wait until everything sent so far has left the transport's buffer."""
        self._transport.set_write_buffer_limits(high=0, low=0)
        await self._protocol.drain()

    def take_buffered(self) -> bytes:
        return self._reader.take_buffered()

    async def read_raw(self) -> bytes:
        """Raw bytes after the response head (tunnels); b"" at EOF."""
        return await self._protocol.take()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()
