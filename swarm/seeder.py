"""Serve every torrent in the store to local peers: the box as the best seed on the LAN.

Why it is built this way
------------------------
* **One listener for every torrent.** The handshake is read in "early" mode: the first 48
  bytes name the info_hash, the torrent is looked up, and the box answers at once. A torrent
  the store does not hold is refused by closing (nothing to offer, and no open relay).
* **Everyone is unchoked.** A cache seeds subscribers, it does not trade with them
  (research notes §3.2: unchoke all, no allowed-fast set). Local peers get Have All (BEP 6)
  or a bitfield, then Unchoke, then a Have for every piece that lands while they are here.
* **Blocks leave with ``os.sendfile``** from the torrent's payload file, queued in order with
  the 13-byte piece header (:class:`swarm.peer.PeerSocket`). A peer whose queued output passes
  ``high_water`` is not read any further until it drains: a peer cannot make the box buffer
  without bound by requesting faster than it reads.
* **Never wrong data.** Only pieces the store has verified are sent. A request for a missing
  piece is handed to the downloader with top priority (``fetch``) and answered when the piece
  verifies; when no fetch is possible it is refused with Reject Request (fast extension) or,
  for peers without it, dropped (they time out and ask elsewhere).
* **Only subscribers.** Connections from outside the subscriber prefixes are closed at accept.
* **Eviction knows what is in flight.** Each peer's queued blocks are remembered by piece
  index (a FIFO, as the socket sends them in order), so the evictor can ask
  :meth:`Seeder.in_flight` which pieces must not lose their bytes yet; ``on_serve`` tells it what
  is read, to keep the hottest piece ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from cache.torrents import TorrentStore
from interceptor.subscribers import is_subscriber
from swarm.errors import RemoteProtocolError
from swarm.metadata import (
    METADATA_PIECE_SIZE,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    encode_metadata_message,
)
from swarm.peer import PeerSocket
from swarm.peerwire import (
    EXTENDED_HANDSHAKE_ID,
    BitfieldMessage,
    Cancel,
    Event,
    Extended,
    ExtensionHandshake,
    HandshakeHead,
    HaveAll,
    HaveNone,
    PeerId,
    RejectRequest,
    Request,
    Unchoke,
    encode,
    encode_handshake,
    make_reserved,
    piece_header,
)
from swarm.peerwire import Have as HaveMessage
from swarm.utp import reset_for_syn

__all__ = ["Fetch", "Seeder", "SeederStats", "ServedBatch"]

log = logging.getLogger(__name__)

# Ask the downloader for a piece: a future resolved once it is stored, or None if no fetch
# is possible (no download for this torrent).
Fetch = Callable[[bytes, int], "asyncio.Future[None] | None"]

_MAX_WAITING: Final = 512  # requests for missing pieces held per peer
_RECORD_EVERY: Final = 4 << 20  # bytes served to a peer between two traffic-counter updates
_UT_METADATA_ID: Final = 3  # the id local peers use for ut_metadata messages to us


@dataclass(slots=True)
class ServedBatch:
    """What one local peer was served since its previous batch: one access-log line (the size
    advisor replays them). ``fetched`` is the part that had to come from outside first."""

    peer: str
    info_hash: bytes
    piece_length: int
    pieces: list[int]
    sent: int
    fetched: int
    seconds: float


@dataclass(slots=True)
class SeederStats:
    bytes_served: int = 0
    blocks_served: int = 0
    rejected: int = 0
    refused_connections: int = 0


class _Local:
    __slots__ = (
        "batch_fetched",
        "batch_pieces",
        "batch_started",
        "fast",
        "info",
        "info_hash",
        "metadata_id",
        "on_sent",
        "peer_id",
        "piece_length",
        "queued",
        "sock",
        "unrecorded",
        "waiting",
    )

    def __init__(self, sock: PeerSocket) -> None:
        self.sock = sock
        self.info_hash: bytes | None = None
        self.info = b""
        self.peer_id = b""
        self.fast = False
        self.metadata_id = 0  # the id the peer wants ut_metadata messages on (0: none)
        # Bytes sent but not yet added to the store's traffic counters (batched: the
        # counters take a lock, and this runs per block).
        self.unrecorded = 0
        self.on_sent: Callable[[int], None] | None = None
        self.waiting: dict[tuple[int, int, int], None] = {}
        # Piece index of every block queued on the socket, oldest first.
        self.queued: deque[int] = deque()
        # For the access log (only kept when the seeder has an ``on_batch``).
        self.piece_length = 0
        self.batch_pieces: set[int] = set()
        self.batch_fetched = 0
        self.batch_started = time.monotonic()


class _Payload:
    """A torrent's payload fd, shared by its connections and closed with the last one."""

    __slots__ = ("fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0


class Seeder:
    def __init__(
        self,
        store: TorrentStore,
        *,
        peer_id: bytes,
        subscribers: Iterable[ipaddress.IPv4Network],
        fetch: Fetch | None = None,
        high_water: int = 4 << 20,
        low_water: int = 1 << 20,
        extra_hashes: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.store = store
        self.peer_id = peer_id
        self.subscribers = tuple(subscribers)
        self.fetch = fetch
        self.high_water = high_water
        self.low_water = low_water
        self.stats = SeederStats()
        self._peers: dict[PeerSocket, _Local] = {}
        self._payloads: dict[bytes, _Payload] = {}
        self._listener: socket.socket | None = None
        self._utp: asyncio.DatagramTransport | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._waits: set[asyncio.Future[None]] = set()
        # (info_hash, piece index, bytes) of every block served: the evictor's hit counter.
        self.on_serve: Callable[[bytes, int, int], None] | None = None
        # One call per local peer per _RECORD_EVERY bytes and at disconnect: the access log.
        self.on_batch: Callable[[ServedBatch], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def local_peers(self, info_hash: bytes | None = None) -> int:
        return sum(
            1
            for p in self._peers.values()
            if p.info_hash is not None and (info_hash is None or p.info_hash == info_hash)
        )

    async def start(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        self._listener = sock
        self._accept_task = asyncio.create_task(self._accept_loop(), name="seeder accept")
        # uTP on the same port: refused at once, so clients fall back to TCP without delay.
        loop = asyncio.get_running_loop()
        self._utp, _ = await loop.create_datagram_endpoint(
            lambda: _UtpRefuser(self.subscribers), local_addr=self.address
        )

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._listener is not None:
            self._listener.close()
        if self._utp is not None:
            self._utp.close()
        for peer in list(self._peers):
            peer.close("shutting down")
        for wait in list(self._waits):
            wait.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, (ip, _port) = await loop.sock_accept(self._listener)
            except OSError as exc:
                log.warning("seeder accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if not is_subscriber(str(ip), self.subscribers):
                self.stats.refused_connections += 1
                conn.close()
                continue
            peer = PeerSocket(conn, self, handshake="early")
            self._peers[peer] = _Local(peer)
            peer.start()

    # --- announcements from the downloader -------------------------------------------------

    def piece_added(self, info_hash: bytes, index: int) -> None:
        have = encode(HaveMessage(index))
        for local in self._peers.values():
            if local.info_hash == info_hash:
                local.sock.send(have)

    def in_flight(self, info_hash: bytes) -> set[int]:
        """Pieces of ``info_hash`` with blocks queued to a local peer but not yet sent."""
        out: set[int] = set()
        for local in self._peers.values():
            if local.info_hash == info_hash:
                out.update(local.queued)
        return out

    def drop_torrent(self, info_hash: bytes) -> None:
        """The torrent was purged: its peers are disconnected, nothing more is served."""
        for peer, local in list(self._peers.items()):
            if local.info_hash == info_hash:
                peer.close("torrent purged")

    # --- PeerHandler -----------------------------------------------------------------------

    def _block_sent(self, local: _Local, n: int) -> None:
        self.stats.bytes_served += n
        self.stats.blocks_served += 1
        if local.queued:
            local.queued.popleft()
        local.unrecorded += n
        if local.unrecorded >= _RECORD_EVERY and local.info_hash is not None:
            self.store.add_traffic(local.info_hash, uploaded=local.unrecorded)
            self._log_batch(local)
            local.unrecorded = 0
        if local.sock.queued_bytes <= self.low_water:
            local.sock.resume_reading()

    def peer_closed(self, peer: PeerSocket, reason: str) -> None:
        local = self._peers.pop(peer, None)
        if local is None or local.info_hash is None:
            return
        log.debug("local peer %s left: %s", peer.address, reason)
        if local.unrecorded:
            self.store.add_traffic(local.info_hash, uploaded=local.unrecorded)
            self._log_batch(local)
        payload = self._payloads.get(local.info_hash)
        if payload is not None:
            payload.users -= 1
            if payload.users == 0:
                del self._payloads[local.info_hash]
                with contextlib.suppress(OSError):
                    os.close(payload.fd)

    def _log_batch(self, local: _Local) -> None:
        if self.on_batch is None or local.info_hash is None:
            return
        now = time.monotonic()
        self.on_batch(
            ServedBatch(
                peer=local.sock.address[0],
                info_hash=local.info_hash,
                piece_length=local.piece_length,
                pieces=sorted(local.batch_pieces),
                sent=local.unrecorded,
                fetched=min(local.batch_fetched, local.unrecorded),
                seconds=now - local.batch_started,
            )
        )
        local.batch_pieces.clear()
        local.batch_fetched = 0
        local.batch_started = now

    def peer_event(self, peer: PeerSocket, event: Event) -> None:
        local = self._peers.get(peer)
        if local is None:
            return
        if isinstance(event, Request):
            self._on_request(local, event)
        elif isinstance(event, Cancel):
            local.waiting.pop((event.index, event.begin, event.length), None)
        elif isinstance(event, HandshakeHead):
            self._on_handshake(local, event)
        elif isinstance(event, Extended):
            self._on_extended(local, event)
        elif isinstance(event, PeerId):
            local.peer_id = event.peer_id
            if local.info_hash is not None:
                self.store.note_local_peer(local.info_hash, peer.address[0])
        # Interested, bitfields and haves of local peers change nothing: all are unchoked.

    def _on_handshake(self, local: _Local, head: HandshakeHead) -> None:
        peer = local.sock
        info = self.store.get(head.info_hash)
        if info is None:
            peer.close("torrent not in the store")
            return
        try:
            self._payload(head.info_hash)
        except OSError as exc:
            peer.close(f"payload unavailable: {exc}")
            return
        local.info_hash = head.info_hash
        local.info = info.info
        local.piece_length = info.piece_length
        local.fast = head.supports_fast
        peer.reader.set_num_pieces(info.num_pieces)
        out = [encode_handshake(head.info_hash, self.peer_id, make_reserved())]
        if head.supports_extensions:
            # ut_metadata lets a local client that has only a magnet link get the info dict
            # from the box instead of from the internet.
            ext = ExtensionHandshake(
                m={"ut_metadata": _UT_METADATA_ID},
                metadata_size=len(info.info),
                reqq=2000,
                v="swarmcache 0.1",
            )
            out.append(encode(Extended(EXTENDED_HANDSHAKE_ID, ext.encode())))
        bits = self.store.bitfield(head.info_hash)
        if info.have_count == info.num_pieces and local.fast:
            out.append(encode(HaveAll()))
        elif info.have_count == 0 and local.fast:
            out.append(encode(HaveNone()))
        elif info.have_count:
            out.append(encode(BitfieldMessage(bits)))
        out.append(encode(Unchoke()))
        peer.send(b"".join(out))

    def _on_extended(self, local: _Local, msg: Extended) -> None:
        if msg.ext_id == EXTENDED_HANDSHAKE_ID:
            try:
                ext = ExtensionHandshake.decode(msg.payload)
            except RemoteProtocolError as exc:
                local.sock.close(f"bad extension handshake: {exc}")
                return
            local.metadata_id = ext.m.get("ut_metadata", 0)
            return
        if msg.ext_id != _UT_METADATA_ID or not local.metadata_id:
            return
        try:
            request = decode_metadata_message(msg.payload)
        except RemoteProtocolError as exc:
            local.sock.close(f"bad ut_metadata message: {exc}")
            return
        if not isinstance(request, MetadataRequest):
            return
        start = request.piece * METADATA_PIECE_SIZE
        if request.piece < 0 or start >= len(local.info):
            answer: MetadataData | MetadataReject = MetadataReject(request.piece)
        else:
            chunk = local.info[start : start + METADATA_PIECE_SIZE]
            answer = MetadataData(request.piece, len(local.info), chunk)
        local.sock.send(encode(Extended(local.metadata_id, encode_metadata_message(answer))))

    def _payload(self, info_hash: bytes) -> int:
        payload = self._payloads.get(info_hash)
        if payload is None:
            payload = self._payloads[info_hash] = _Payload(self.store.open_payload(info_hash))
        payload.users += 1
        return payload.fd

    def _on_request(self, local: _Local, req: Request) -> None:
        ih = local.info_hash
        if ih is None:
            local.sock.close("request before handshake")
            return
        try:
            offset, size = self.store.piece_span(ih, req.index)
        except (KeyError, ValueError, IndexError) as exc:
            local.sock.close(f"bad request: {exc}")
            return
        if req.begin + req.length > size:
            local.sock.close(
                f"request past the end of piece {req.index} ({req.begin}+{req.length} > {size})"
            )
            return
        if self.store.has(ih, req.index):
            self._serve(local, req, offset)
            return
        key = (req.index, req.begin, req.length)
        fut = self.fetch(ih, req.index) if self.fetch is not None else None
        if fut is None or len(local.waiting) >= _MAX_WAITING:
            self._reject(local, req)
            return
        local.waiting[key] = None
        self._waits.add(fut)

        def arrived(f: asyncio.Future[None]) -> None:
            self._waits.discard(f)
            if local.sock.closed or key not in local.waiting:
                return
            del local.waiting[key]
            if f.cancelled() or f.exception() is not None or not self.store.has(ih, req.index):
                self._reject(local, req)
            else:
                local.batch_fetched += req.length
                self._serve(local, req, offset)

        fut.add_done_callback(arrived)

    def _reject(self, local: _Local, req: Request) -> None:
        self.stats.rejected += 1
        if local.fast:
            local.sock.send(encode(RejectRequest(req.index, req.begin, req.length)))

    def _serve(self, local: _Local, req: Request, piece_offset: int) -> None:
        assert local.info_hash is not None
        payload = self._payloads.get(local.info_hash)
        if payload is None:
            local.sock.close("payload closed")
            return
        peer = local.sock
        peer.send(piece_header(req.index, req.begin, req.length))
        if local.on_sent is None:
            local.on_sent = functools.partial(self._block_sent, local)
        if req.length > 0:  # send_file queues nothing (and never calls on_sent) for 0 bytes
            local.queued.append(req.index)
        peer.send_file(payload.fd, piece_offset + req.begin, req.length, local.on_sent)
        if self.on_serve is not None:
            self.on_serve(local.info_hash, req.index, req.length)
        if self.on_batch is not None:
            local.batch_pieces.add(req.index)
        if peer.queued_bytes > self.high_water:
            peer.pause_reading()


class _UtpRefuser(asyncio.DatagramProtocol):
    def __init__(self, subscribers: tuple[ipaddress.IPv4Network, ...]) -> None:
        self.subscribers = subscribers
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is None or not is_subscriber(str(addr[0]), self.subscribers):
            return
        reset = reset_for_syn(data)
        if reset is not None:
            self.transport.sendto(reset, addr)
