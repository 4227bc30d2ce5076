"""Announce to a tracker over the network: the thin asyncio shell around the sans-IO cores.

Why it is built this way
------------------------
* This module only moves bytes. URL building and reply parsing live in
  :mod:`swarm.tracker_http`, the UDP exchange in :class:`swarm.tracker_udp.UdpAnnounce`; here
  are a socket, a clock and error translation, so every protocol decision is unit-tested
  without a network.
* HTTP(S) goes through aiohttp. The announce URL is handed over as an already-encoded
  ``yarl.URL`` so the percent-encoded ``info_hash`` reaches the tracker byte for byte (yarl
  would otherwise re-quote it). The body is read in pieces and refused past
  :data:`~swarm.tracker_http.MAX_RESPONSE_SIZE` after gzip decoding, which aiohttp does
  incrementally, so a compressed bomb cannot fill memory.
* UDP uses a connected datagram socket on the address the loop's ``getaddrinfo`` returned
  first: the kernel then delivers only the tracker's datagrams, and an ICMP "port
  unreachable" comes back as ``ConnectionRefusedError`` so a dead tracker fails at once
  instead of after every retransmission.
* ``timeout`` bounds the whole announce (name lookup included); ``udp_base_timeout`` is
  BEP 15's 15 s retransmission base, lowered in tests.
* Errors are translated once, at this boundary, into the tracker hierarchy of
  :mod:`swarm.tracker_http` so callers catch :class:`TrackerError` and nothing from aiohttp
  or ``socket``. Cancellation is never caught.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import MutableMapping
from typing import Final, TypeAlias
from urllib.parse import SplitResult, urlsplit

import aiohttp
import yarl

from swarm.tracker_http import (
    MAX_RESPONSE_SIZE,
    AnnounceRequest,
    AnnounceResponse,
    TrackerError,
    TrackerFailure,
    TrackerResponseError,
    TrackerUnreachable,
    announce_url,
    parse_announce_response,
)
from swarm.tracker_udp import UdpAnnounce, UdpConnection

__all__ = [
    "TrackerError",
    "TrackerFailure",
    "TrackerResponseError",
    "TrackerUnreachable",
    "UdpConnections",
    "announce",
]

#: Connection ids per UDP tracker ``(host, port)``, kept by a caller that announces often.
UdpConnections: TypeAlias = MutableMapping[tuple[str, int], UdpConnection]

# Transaction ids must not be guessable by an off-path sender forging tracker replies.
_RNG: Final = random.SystemRandom()
# A tracker sends one datagram per request; more than this queued means a flood.
_MAX_QUEUED: Final = 64


async def announce(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float = 15.0,
    udp_base_timeout: float = 15.0,
    session: aiohttp.ClientSession | None = None,
    udp_connections: UdpConnections | None = None,
) -> AnnounceResponse:
    """Announce ``req`` to the tracker at ``url`` (``http://``, ``https://`` or ``udp://``).

    Raises :class:`TrackerFailure` when the tracker refuses (its reason, or the HTTP status),
    :class:`TrackerResponseError` for a malformed reply, :class:`TrackerUnreachable` when no
    reply came within ``timeout`` seconds, and :class:`TrackerError` for a URL we cannot use.
    """
    parts = _split(url)
    try:
        async with asyncio.timeout(timeout):
            if parts.scheme == "udp":
                return await _announce_udp(parts, req, udp_base_timeout, udp_connections)
            return await _announce_http(url, req, session)
    except TimeoutError:
        raise TrackerUnreachable(f"tracker {url}: no reply within {timeout} s") from None


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise TrackerError(f"tracker URL {url!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "udp"):
        raise TrackerError(f"tracker URL {url!r}: unsupported scheme {parts.scheme!r}")
    if not parts.hostname:
        raise TrackerError(f"tracker URL {url!r} has no host")
    if scheme == "udp" and port is None:
        raise TrackerError(f"tracker URL {url!r} has no port")
    return parts._replace(scheme=scheme)


# --- HTTP -----------------------------------------------------------------------------------


async def _announce_http(
    url: str, req: AnnounceRequest, session: aiohttp.ClientSession | None
) -> AnnounceResponse:
    target = yarl.URL(announce_url(url, req), encoded=True)
    try:
        if session is None:
            async with aiohttp.ClientSession(trust_env=False) as own:
                status, reason, body = await _get(own, target)
        else:
            status, reason, body = await _get(session, target)
    except aiohttp.ClientPayloadError as exc:
        raise TrackerResponseError(f"tracker {url}: broken HTTP body: {exc}") from exc
    except aiohttp.TooManyRedirects as exc:
        raise TrackerResponseError(f"tracker {url}: too many redirects") from exc
    except aiohttp.InvalidURL as exc:
        raise TrackerError(f"tracker {url}: redirected to a bad URL: {exc}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TrackerUnreachable(f"tracker {url}: {type(exc).__name__}: {exc}") from exc
    if status != 200:
        raise TrackerFailure(_status_text(status, reason, body))
    return parse_announce_response(body)


async def _get(session: aiohttp.ClientSession, target: yarl.URL) -> tuple[int, str, bytes]:
    async with session.get(target, headers={"Accept-Encoding": "gzip"}) as resp:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > MAX_RESPONSE_SIZE:
                raise TrackerResponseError(
                    f"tracker {target.host}: reply larger than {MAX_RESPONSE_SIZE} bytes"
                )
            chunks.append(chunk)
        return resp.status, resp.reason or "", b"".join(chunks)


def _status_text(status: int, reason: str, body: bytes) -> str:
    text = f"HTTP status {status} {reason}".rstrip()
    # Some trackers pair an error status with a bencoded failure reason; keep their words.
    try:
        parse_announce_response(body)
    except TrackerFailure as exc:
        return f"{text}: {exc.reason}"
    except TrackerError:
        pass
    return text


# --- UDP ------------------------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.queue.qsize() < _MAX_QUEUED:
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.queue.put_nowait(exc)


async def _announce_udp(
    parts: SplitResult,
    req: AnnounceRequest,
    base_timeout: float,
    connections: UdpConnections | None,
) -> AnnounceResponse:
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None  # checked by _split
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise TrackerUnreachable(f"udp tracker {host}:{port}: cannot resolve: {exc}") from exc
    if not infos:
        raise TrackerUnreachable(f"udp tracker {host}:{port}: name has no address")
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(sockaddr)  # a UDP connect only sets the peer address: never blocks
        proto = _Datagrams()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=sock)
    except OSError as exc:
        sock.close()
        raise TrackerUnreachable(f"udp tracker {host}:{port}: {exc}") from exc

    key = (host, port)
    cached = connections.get(key) if connections is not None else None
    machine = UdpAnnounce(
        req,
        rng=_RNG,
        base_timeout=base_timeout,
        ipv6=family == socket.AF_INET6,
        connection=cached,
    )
    try:
        transport.sendto(machine.start(loop.time()))
        while True:
            try:
                async with asyncio.timeout_at(machine.next_timeout()):
                    item = await proto.queue.get()
            except TimeoutError:
                transport.sendto(machine.on_timeout(loop.time()))
                continue
            if isinstance(item, OSError):
                raise TrackerUnreachable(f"udp tracker {host}:{port}: {item}") from item
            out = machine.receive(item, loop.time())
            if isinstance(out, bytes):
                transport.sendto(out)
            elif out is not None:
                return out
    finally:
        transport.close()
        if connections is not None:
            if machine.connection is not None:
                connections[key] = machine.connection
            else:  # the tracker rejected the id we had
                connections.pop(key, None)
