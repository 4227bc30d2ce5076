"""Fetch one torrent from outside peers, each piece once, into the torrent store.

Why it is built this way
------------------------
* **Pipelining decides the speed** (research notes §3.1): a peer delivers at most
  ``queue depth x 16 KiB / RTT``. Each peer's queue is sized to ``request_queue_time`` seconds
  of what it delivered in the last second (libtorrent's 3 s), clamped to [min, max]; a new peer
  starts at ``initial_queue`` so the first round trip is not wasted. Requests are topped up
  whenever a block arrives, in one gathered write.
* **Which blocks** is the sans-IO :class:`swarm.picker.Picker`: random first pieces, then
  rarest-first, strict end-game, local demand first, suspect pieces refetched whole from one
  peer. This module only moves its decisions onto sockets.
* **Verification off the event loop.** A finished piece is handed to a worker thread that
  hashes it and, only if it matches, writes it to the payload file
  (:meth:`cache.torrents.TorrentStore.verify_and_write`): a bad piece is never stored. Pieces
  waiting for a hash are bounded (``max_hashing``); past that, no new requests go out.
* **Bad peers are banned, honest ones never.** A failed piece that came from one peer names
  it, and it is banned at once. A failed piece mixed from several peers is refetched whole from
  one of them, which either verifies or names its sender. A banned address is never dialled
  again.
* **No uploading to outside peers.** The box exists to spare the uplink: outside peers get
  Have None and stay choked. Local peers are served by :mod:`swarm.seeder`.
* **Magnet links** start without the info dict: it is fetched with BEP 9 from peers that
  offer ``ut_metadata``, verified against the info_hash, stored, and then pieces flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Final

from cache.torrents import TorrentStore
from swarm.errors import RemoteProtocolError, SwarmError
from swarm.metadata import (
    MetadataAssembler,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    encode_metadata_message,
)
from swarm.metainfo import Metainfo, parse_info
from swarm.peer import PeerSocket, connect_peer
from swarm.peerwire import (
    EXTENDED_HANDSHAKE_ID,
    Bitfield,
    BitfieldMessage,
    Cancel,
    Choke,
    Event,
    Extended,
    ExtensionHandshake,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    Piece,
    RejectRequest,
    Request,
    Unchoke,
    encode,
    encode_handshake,
    make_reserved,
)
from swarm.picker import BLOCK_SIZE, Picker
from swarm.tracker_client import announce
from swarm.tracker_http import AnnounceRequest
from swarm.tracker_http import Event as TrackerEvent

__all__ = ["DownloadLimits", "DownloadStats", "RateLimiter", "TorrentDownload", "make_peer_id"]

log = logging.getLogger(__name__)

_UT_METADATA_ID: Final = 3  # the id we ask peers to use for ut_metadata messages to us
_TICK: Final = 1.0


def make_peer_id() -> bytes:
    """Azureus-style peer id: client ``SC``, version 0.1.0, then random bytes."""
    return b"-SC0100-" + secrets.token_bytes(12)


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    max_peers: int = 50
    connect_timeout: float = 10.0
    request_queue_time: float = 3.0
    min_queue: int = 4
    max_queue: int = 500
    initial_queue: int = 64
    request_timeout: float = 20.0
    peer_idle_timeout: float = 120.0
    max_hashing: int = 64
    announce_interval_cap: float = 1800.0


@dataclass(slots=True)
class DownloadStats:
    downloaded: int = 0  # payload bytes of accepted blocks
    wasted: int = 0  # bytes of refused, duplicate or bad-piece blocks
    pieces_fetched: int = 0
    bad_pieces: int = 0
    banned: int = 0


class RateLimiter:
    """A token bucket in bytes per second; ``rate`` 0 means unlimited. Shared by torrents."""

    def __init__(
        self,
        rate: int,
        *,
        burst_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._capacity = max(rate * burst_seconds, 2 * BLOCK_SIZE)
        self._tokens = self._capacity
        self._stamp = clock()

    def take(self, want: int) -> int:
        """Grant up to ``want`` bytes now (a multiple of the block size, possibly 0)."""
        if self.rate <= 0:
            return want
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        granted = min(want, int(self._tokens) // BLOCK_SIZE * BLOCK_SIZE)
        self._tokens -= granted
        return granted


class _Remote:
    """What we know about one outside peer connection."""

    __slots__ = (
        "address",
        "choked",
        "early",
        "ext_ids",
        "fast",
        "handshaken",
        "interested",
        "last_data",
        "metadata_size",
        "queue_target",
        "rate",
        "sock",
        "window_bytes",
    )

    def __init__(self, sock: PeerSocket, queue: int) -> None:
        self.sock = sock
        self.address = sock.address
        self.handshaken = False
        self.choked = True
        self.interested = False
        self.fast = False
        self.ext_ids: dict[str, int] = {}
        self.metadata_size: int | None = None
        self.queue_target = queue
        self.rate = 0.0
        self.window_bytes = 0
        self.last_data = time.monotonic()
        # Have/Bitfield/HaveAll that arrived before the info dict (magnet links): applied,
        # and checked against the piece count, once it is known.
        self.early: list[Event] = []


class TorrentDownload:
    """One torrent's fetch from the outside swarm. ``meta`` None: a magnet, info dict unknown."""

    def __init__(
        self,
        info_hash: bytes,
        store: TorrentStore,
        *,
        meta: Metainfo | None = None,
        trackers: Iterable[str] = (),
        peer_id: bytes | None = None,
        listen_port: int = 6881,
        limits: DownloadLimits | None = None,
        limiter: RateLimiter | None = None,
        global_limiter: RateLimiter | None = None,
        executor: Executor | None = None,
        on_piece: Callable[[bytes, int], None] | None = None,
        on_metadata: Callable[[Metainfo], None] | None = None,
        bind: str | None = None,
    ) -> None:
        if len(info_hash) != 20:
            raise SwarmError("info_hash must be the 20 bytes used in handshakes")
        self.info_hash = info_hash
        self.store = store
        self.meta = meta
        self.trackers = list(dict.fromkeys(trackers))
        self.peer_id = peer_id or make_peer_id()
        self.listen_port = listen_port
        self.limits = limits or DownloadLimits()
        self._limiters = [lim for lim in (limiter, global_limiter) if lim is not None]
        self._executor = executor
        self._on_piece = on_piece
        self._on_metadata = on_metadata
        self._bind = bind
        self.stats = DownloadStats()
        self.picker: Picker | None = None
        self._remotes: dict[PeerSocket, _Remote] = {}
        self._candidates: dict[tuple[str, int], None] = {}
        self._connecting: set[tuple[str, int]] = set()
        self._failed_at: dict[tuple[str, int], float] = {}
        self.banned: set[tuple[str, int]] = set()
        self._buffers: dict[int, bytearray] = {}
        self._contributors: dict[int, set[tuple[str, int]]] = {}
        self._hashing = 0
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._metadata: MetadataAssembler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self.done = asyncio.Event()
        self.error: str | None = None
        if meta is not None:
            self._start_pieces(meta)

    # --- public ----------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.picker is not None and self.picker.complete

    @property
    def rate(self) -> float:
        """Payload bytes per second from outside peers, smoothed over a few seconds."""
        return sum(r.rate for r in self._remotes.values())

    @property
    def peers_connected(self) -> int:
        return sum(1 for r in self._remotes.values() if r.handshaken)

    def add_peers(self, addresses: Iterable[tuple[str, int]]) -> None:
        for address in addresses:
            if address not in self.banned and address[1] > 0:
                self._candidates[address] = None
        self._wake.set()

    def wait_piece(self, index: int) -> asyncio.Future[None]:
        """Resolved when ``index`` is verified and stored; a local peer waits for it, so it is
        fetched before everything else."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.store.has(self.info_hash, index):
            fut.set_result(None)
            return fut
        self._waiters.setdefault(index, []).append(fut)
        if self.picker is not None:
            self.picker.prioritize(index)
            for remote in self._remotes.values():
                self._fill_requests(remote)
        return fut

    def start(self) -> None:
        self._spawn(self._connector(), "connector")
        self._spawn(self._ticker(), "ticker")
        for url in self.trackers:
            self._spawn(self._announcer(url), f"announce {url}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for remote in list(self._remotes.values()):
            remote.sock.close("download stopped")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(SwarmError("download stopped"))
        self._waiters.clear()

    # --- internals: setup ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"torrent {self.info_hash.hex()[:8]} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _start_pieces(self, meta: Metainfo) -> None:
        self.meta = meta
        have = [i for i in range(meta.num_pieces) if self.store.has(self.info_hash, i)]
        self.picker = Picker(meta.num_pieces, meta.piece_length, meta.total_length, have=have)
        for index in self._waiters:
            self.picker.prioritize(index)
        if self.picker.complete:
            self._finish()

    # --- internals: connections ------------------------------------------------------------

    async def _connector(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if not self.complete:
                now = time.monotonic()
                room = self.limits.max_peers - len(self._remotes) - len(self._connecting)
                connected = {r.address for r in self._remotes.values()}
                for address in list(self._candidates):
                    if room <= 0:
                        break
                    if address in connected or address in self._connecting:
                        continue
                    if address in self.banned or now - self._failed_at.get(address, -1e9) < 30:
                        continue
                    room -= 1
                    self._connecting.add(address)
                    self._spawn(self._dial(address), f"dial {address[0]}:{address[1]}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._wake.wait()

    async def _dial(self, address: tuple[str, int]) -> None:
        try:
            sock = await connect_peer(address, timeout=self.limits.connect_timeout, bind=self._bind)
        except (OSError, TimeoutError) as exc:
            log.debug("connect to %s failed: %s", address, exc)
            self._failed_at[address] = time.monotonic()
            return
        finally:
            self._connecting.discard(address)
        if self._stopping or self.complete:
            sock.close()
            return
        peer = PeerSocket(sock, self)
        remote = _Remote(peer, self.limits.initial_queue)
        remote.address = address
        self._remotes[peer] = remote
        peer.send(encode_handshake(self.info_hash, self.peer_id, make_reserved()))
        peer.start()

    # --- PeerHandler -----------------------------------------------------------------------

    def peer_closed(self, peer: PeerSocket, reason: str) -> None:
        remote = self._remotes.pop(peer, None)
        if remote is None:
            return
        log.debug("peer %s closed: %s", remote.address, reason)
        if self.picker is not None and remote.handshaken:
            self.picker.remove_peer(peer)
        if not remote.handshaken:
            self._failed_at[remote.address] = time.monotonic()
        self._wake.set()
        # Its blocks went back to the picker: other peers may take them now.
        for other in list(self._remotes.values()):
            self._fill_requests(other)

    def peer_event(self, peer: PeerSocket, event: Event) -> None:
        remote = self._remotes.get(peer)
        if remote is None:
            return
        if isinstance(event, Piece):
            self._on_block(remote, event)
            return
        if not remote.handshaken:
            self._on_handshake(remote, event)
            return
        picker = self.picker
        if picker is None and isinstance(event, Have | BitfieldMessage | HaveAll):
            remote.early.append(event)
            return
        if isinstance(event, Have):
            if picker is not None:
                picker.peer_have(peer, event.index)
                self._update_interest(remote, event.index)
        elif isinstance(event, BitfieldMessage):
            if picker is not None:
                picker.peer_bitfield(peer, event.bits)
                self._update_interest(remote)
        elif isinstance(event, HaveAll):
            if picker is not None:
                picker.peer_has_all(peer)
                self._update_interest(remote)
        elif isinstance(event, Unchoke):
            remote.choked = False
            self._fill_requests(remote)
        elif isinstance(event, Choke):
            remote.choked = True
            if picker is not None and not remote.fast:
                # Without the fast extension a choke silently drops every pending request.
                for r in picker.outstanding_requests(peer):
                    picker.request_failed(peer, r.index, r.begin)
        elif isinstance(event, RejectRequest):
            if picker is not None:
                picker.request_failed(peer, event.index, event.begin)
                self._fill_requests(remote)
        elif isinstance(event, Extended):
            self._on_extended(remote, event)
        elif isinstance(event, Request) and remote.fast:
            # We never unchoked it; with the fast extension a request must be answered.
            peer.send(encode(RejectRequest(event.index, event.begin, event.length)))

    def _on_handshake(self, remote: _Remote, event: Event) -> None:
        if not isinstance(event, Handshake):
            remote.sock.close("expected a handshake")
            return
        if event.info_hash != self.info_hash:
            remote.sock.close("handshake for another torrent")
            return
        if event.peer_id == self.peer_id:
            self.banned.add(remote.address)  # ourselves, through a tracker's list
            remote.sock.close("connected to ourselves")
            return
        remote.handshaken = True
        remote.fast = event.supports_fast
        peer = remote.sock
        out: list[bytes] = []
        if event.supports_extensions:
            ext = ExtensionHandshake(
                m={"ut_metadata": _UT_METADATA_ID}, reqq=2000, v="swarmcache 0.1"
            )
            out.append(encode(Extended(EXTENDED_HANDSHAKE_ID, ext.encode())))
        if remote.fast:
            out.append(encode(HaveNone()))
        peer.send(b"".join(out))
        if self.picker is not None:
            self.picker.add_peer(peer)
            peer.reader.set_num_pieces(self.picker.num_pieces)

    def _update_interest(self, remote: _Remote, index: int | None = None) -> None:
        """Become interested once the peer has something we lack (``index``: only that piece
        is new, an O(1) check instead of a scan of the peer's pieces)."""
        picker = self.picker
        assert picker is not None
        if remote.interested:
            return
        want = not picker.has(index) if index is not None else picker.interesting(remote.sock)
        if want:
            remote.interested = True
            remote.sock.send(encode(Interested()))
            self._fill_requests(remote)

    # --- requests and blocks ---------------------------------------------------------------

    def _fill_requests(self, remote: _Remote) -> None:
        picker = self.picker
        if picker is None or remote.choked or not remote.interested or not remote.handshaken:
            return
        if self._hashing >= self.limits.max_hashing or self._stopping:
            return
        peer = remote.sock
        outstanding = picker.outstanding(peer)
        want = remote.queue_target - outstanding
        # Top up in batches, not one request per arriving block: a few requests per write
        # (and per picker call) instead of one, while the pipe never runs dry.
        if want <= 0 or (outstanding and want < min(16, max(1, remote.queue_target // 4))):
            return
        for limiter in self._limiters:
            want = min(want, limiter.take(want * BLOCK_SIZE) // BLOCK_SIZE)
        if want <= 0:
            return
        reqs = picker.pick(peer, want)
        if reqs:
            peer.send(b"".join(encode(Request(r.index, r.begin, r.length)) for r in reqs))

    def _on_block(self, remote: _Remote, msg: Piece) -> None:
        picker = self.picker
        n = len(msg.block)
        remote.last_data = time.monotonic()
        remote.window_bytes += n
        if picker is None:
            self.stats.wasted += n
            return
        accepted, cancel_at = picker.block_received(remote.sock, msg.index, msg.begin, n)
        if not accepted:
            self.stats.wasted += n
            return
        self.stats.downloaded += n
        buf = self._buffers.get(msg.index)
        if buf is None:
            buf = self._buffers[msg.index] = bytearray(picker.piece_size(msg.index))
        buf[msg.begin : msg.begin + n] = msg.block
        self._contributors.setdefault(msg.index, set()).add(remote.address)
        for other in cancel_at:
            if isinstance(other, PeerSocket):
                other.send(encode(Cancel(msg.index, msg.begin, n)))
        if picker.piece_ready(msg.index):
            self._verify(msg.index)
        self._fill_requests(remote)

    def _verify(self, index: int) -> None:
        buf = self._buffers.pop(index)
        contributors = self._contributors.pop(index, set())
        self._hashing += 1
        self._spawn(self._verify_task(index, buf, contributors), f"verify {index}")

    async def _verify_task(
        self, index: int, buf: bytearray, contributors: set[tuple[str, int]]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(
                self._executor, self.store.verify_and_write, self.info_hash, index, memoryview(buf)
            )
        finally:
            self._hashing -= 1
        picker = self.picker
        assert picker is not None
        if ok:
            picker.piece_verified(index)
            self.stats.pieces_fetched += 1
            for fut in self._waiters.pop(index, []):
                if not fut.done():
                    fut.set_result(None)
            if self._on_piece is not None:
                self._on_piece(self.info_hash, index)
            if picker.complete:
                self._finish()
        else:
            self._bad_piece(index, contributors, len(buf))
        for remote in list(self._remotes.values()):
            self._fill_requests(remote)

    def _bad_piece(self, index: int, contributors: set[tuple[str, int]], size: int) -> None:
        assert self.picker is not None
        self.stats.bad_pieces += 1
        self.stats.wasted += size
        self.stats.downloaded -= size
        log.warning(
            "piece %d of %s failed its hash (from %s)",
            index,
            self.info_hash.hex(),
            ", ".join(f"{a}:{p}" for a, p in sorted(contributors)),
        )
        # Only a piece from a single peer names the culprit. A piece mixed from several is
        # refetched whole from one peer (the picker's suspect pieces), which then either
        # verifies or names its sender: an honest peer is never banned for another's blocks.
        self.picker.piece_failed(index)
        if len(contributors) == 1:
            self._ban(next(iter(contributors)))

    def _ban(self, address: tuple[str, int]) -> None:
        if address in self.banned:
            return
        log.warning("banning peer %s:%d for bad data", *address)
        self.banned.add(address)
        self.stats.banned += 1
        for remote in list(self._remotes.values()):
            if remote.address == address:
                remote.sock.close("banned: sent data that failed the piece hash")

    # --- metadata (BEP 9) ------------------------------------------------------------------

    def _on_extended(self, remote: _Remote, msg: Extended) -> None:
        if msg.ext_id == EXTENDED_HANDSHAKE_ID:
            try:
                ext = ExtensionHandshake.decode(msg.payload)
            except RemoteProtocolError as exc:
                remote.sock.close(f"bad extension handshake: {exc}")
                return
            remote.ext_ids = dict(ext.m)
            remote.metadata_size = ext.metadata_size
            self._request_metadata(remote)
            return
        if msg.ext_id != _UT_METADATA_ID:
            return
        try:
            message = decode_metadata_message(msg.payload)
        except RemoteProtocolError as exc:
            remote.sock.close(f"bad ut_metadata message: {exc}")
            return
        if isinstance(message, MetadataData) and self._metadata is not None:
            try:
                info = self._metadata.add(message)
            except RemoteProtocolError as exc:
                log.warning("metadata from %s rejected: %s", remote.address, exc)
                return
            if info is not None:
                self._got_metadata(info)
            else:
                self._request_metadata(remote)
        elif isinstance(message, MetadataRequest):
            their_id = remote.ext_ids.get("ut_metadata", 0)
            if their_id:
                reject = encode_metadata_message(MetadataReject(message.piece))
                remote.sock.send(encode(Extended(their_id, reject)))
        elif isinstance(message, MetadataReject):
            pass

    def _request_metadata(self, remote: _Remote) -> None:
        if self.meta is not None or remote.metadata_size is None:
            return
        their_id = remote.ext_ids.get("ut_metadata", 0)
        if not their_id:
            return
        if self._metadata is None:
            try:
                self._metadata = MetadataAssembler(self.info_hash, remote.metadata_size)
            except RemoteProtocolError as exc:
                remote.sock.close(f"bad metadata_size: {exc}")
                return
        for piece in self._metadata.missing():
            remote.sock.send(
                encode(Extended(their_id, encode_metadata_message(MetadataRequest(piece))))
            )

    def _got_metadata(self, info: bytes) -> None:
        meta = parse_info(info, self.info_hash)
        self._metadata = None
        if meta.private:
            # BEP 27: a private torrent is never cached; the service is told and stops us.
            self.error = "private torrent (BEP 27): not cached"
            self.meta = meta
            if self._on_metadata is not None:
                self._on_metadata(meta)
            self._stopping = True
            for remote in list(self._remotes.values()):
                remote.sock.close(self.error)
            self.done.set()
            return
        self.store.add(
            self.info_hash,
            info=meta.info_bytes,
            name=meta.name,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            piece_hashes=meta.piece_hashes,
        )
        self._start_pieces(meta)
        if self._on_metadata is not None:
            self._on_metadata(meta)
        picker = self.picker
        assert picker is not None
        for remote in list(self._remotes.values()):
            if not remote.handshaken:
                continue
            picker.add_peer(remote.sock)
            remote.sock.reader.set_num_pieces(meta.num_pieces)
            early, remote.early = remote.early, []
            try:
                for event in early:
                    if isinstance(event, BitfieldMessage):
                        # from_bytes checks the length and the spare bits
                        Bitfield.from_bytes(event.bits, meta.num_pieces)
                        picker.peer_bitfield(remote.sock, event.bits)
                    elif isinstance(event, Have):
                        if event.index >= meta.num_pieces:
                            raise RemoteProtocolError(f"have {event.index} out of range")
                        picker.peer_have(remote.sock, event.index)
                    elif isinstance(event, HaveAll):
                        picker.peer_has_all(remote.sock)
            except RemoteProtocolError as exc:
                remote.sock.close(f"bad piece announcement before metadata: {exc}")
                continue
            self._update_interest(remote)

    # --- time ------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        limits = self.limits
        while not self._stopping:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            for remote in list(self._remotes.values()):
                rate = remote.window_bytes / _TICK
                remote.window_bytes = 0
                remote.rate = rate if remote.rate == 0 else 0.6 * rate + 0.4 * remote.rate
                if remote.rate > 0:
                    target = int(remote.rate * limits.request_queue_time / BLOCK_SIZE)
                    remote.queue_target = max(limits.min_queue, min(limits.max_queue, target))
                picker = self.picker
                idle = now - remote.last_data
                if picker is not None and picker.outstanding(remote.sock) and (
                    idle > limits.request_timeout
                ):
                    # Snubbed: its blocks go to others; it keeps one request in flight.
                    for r in picker.outstanding_requests(remote.sock):
                        picker.request_failed(remote.sock, r.index, r.begin)
                    remote.queue_target = 1
                    remote.last_data = now
                if idle > limits.peer_idle_timeout:
                    remote.sock.close("idle")
                self._fill_requests(remote)

    def _announce_request(self, event: TrackerEvent | None, *, numwant: int) -> AnnounceRequest:
        return AnnounceRequest(
            info_hash=self.info_hash,
            peer_id=self.peer_id,
            port=self.listen_port,
            uploaded=0,
            downloaded=self.stats.downloaded,
            left=self._left(),
            event=event,
            numwant=numwant,
        )

    async def _announcer(self, url: str) -> None:
        event: TrackerEvent | None = "started"
        while not self._stopping:
            req = self._announce_request(event, numwant=200)
            interval = 60.0
            try:
                response = await announce(url, req, timeout=15.0, udp_base_timeout=3.0)
            except (SwarmError, OSError, TimeoutError) as exc:
                log.info("announce to %s failed: %s", url, exc)
            else:
                event = None
                self.add_peers(response.peers)
                interval = float(min(max(response.interval, 30), self.limits.announce_interval_cap))
            if self.complete:
                return
            await asyncio.sleep(interval)

    def _left(self) -> int:
        if self.meta is None or self.picker is None:
            return 1 << 40
        return max(0, self.meta.total_length - self.picker.have_count * self.meta.piece_length)

    def _finish(self) -> None:
        # Durable soon (the commit, an fdatasync, runs in a worker thread), serving already.
        self._spawn(self._commit(), "commit")
        self.done.set()
        for remote in list(self._remotes.values()):
            remote.sock.close("download complete")
        # Tell trackers once, without waiting for it.
        for url in self.trackers:
            self._spawn(self._announce_completed(url), f"completed {url}")

    async def _commit(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.store.commit)

    async def _announce_completed(self, url: str) -> None:
        req = self._announce_request("completed", numwant=0)
        with contextlib.suppress(SwarmError, OSError, TimeoutError):
            await announce(url, req, timeout=10.0, udp_base_timeout=3.0)

