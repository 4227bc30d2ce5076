"""Downloader and seeder against each other over loopback sockets: two boxes, one torrent.

The real-client interop runs in tests/netns; these catch protocol-flow regressions in seconds:
a complete download, a bad peer banned, a local request for a missing piece answered once the
piece arrives, a restart that resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.store import Store
from cache.torrents import TorrentStore
from swarm.bencode import bencode
from swarm.downloader import DownloadLimits, TorrentDownload
from swarm.metainfo import Metainfo, parse_metainfo
from swarm.peer import PeerSocket, connect_peer
from swarm.peerwire import (
    NEED_DATA,
    HaveAll,
    PeerWireReader,
    Piece,
    RejectRequest,
    Request,
    Unchoke,
    encode,
    encode_handshake,
    make_reserved,
)
from swarm.seeder import Seeder

PIECE = 32 * 1024
LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"),)


def _torrent(payload: bytes, piece: int = PIECE) -> Metainfo:
    hashes = b"".join(
        hashlib.sha1(payload[i : i + piece]).digest() for i in range(0, len(payload), piece)
    )
    info = {
        b"name": b"data.bin",
        b"piece length": piece,
        b"length": len(payload),
        b"pieces": hashes,
    }
    return parse_metainfo(bencode({b"info": info}))


def _add(torrents: TorrentStore, meta: Metainfo) -> bytes:
    assert meta.info_hash is not None
    torrents.add(
        meta.info_hash,
        info=meta.info_bytes,
        name=meta.name,
        piece_length=meta.piece_length,
        total_length=meta.total_length,
        piece_hashes=meta.piece_hashes,
    )
    return meta.info_hash


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[TorrentStore, TorrentStore]]:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    ta, tb = TorrentStore(a), TorrentStore(b)
    try:
        yield ta, tb
    finally:
        ta.close()
        tb.close()
        a.close()
        b.close()


async def _seeding(torrents: TorrentStore, meta: Metainfo, payload: bytes) -> Seeder:
    ih = _add(torrents, meta)
    n = meta.piece_length
    for i in range(meta.num_pieces):
        assert torrents.verify_and_write(ih, i, payload[i * n : (i + 1) * n])
    seeder = Seeder(torrents, peer_id=b"-SC0100-seedseedseed", subscribers=LOOPBACK)
    await seeder.start("127.0.0.1", 0)
    return seeder


def _payload_of(torrents: TorrentStore, ih: bytes, size: int) -> bytes:
    fd = torrents.open_payload(ih)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


async def test_a_download_from_the_seeder_is_complete_and_identical(
    stores: tuple[TorrentStore, TorrentStore],
) -> None:
    payload = os.urandom(40 * PIECE + 1234)
    meta = _torrent(payload)
    seeder = await _seeding(stores[0], meta, payload)
    ih = _add(stores[1], meta)
    download = TorrentDownload(ih, stores[1], meta=meta, limits=DownloadLimits(initial_queue=8))
    download.start()
    download.add_peers([seeder.address])
    try:
        await asyncio.wait_for(download.done.wait(), 20)
    finally:
        await download.stop()
        await seeder.close()
    assert _payload_of(stores[1], ih, len(payload)) == payload
    assert download.stats.downloaded == len(payload)
    assert seeder.stats.bytes_served == len(payload)


async def test_a_magnet_alone_gets_the_info_dict_then_every_piece(
    stores: tuple[TorrentStore, TorrentStore],
) -> None:
    # A torrent whose info dict spans several 16 KiB metadata pieces (a long piece list).
    payload = os.urandom(1100 * 16384 + 77)
    meta = _torrent(payload, piece=16384)
    assert len(meta.info_bytes) > 16384 and meta.info_hash is not None
    seeder = await _seeding(stores[0], meta, payload)
    got: list[Metainfo] = []
    download = TorrentDownload(meta.info_hash, stores[1], on_metadata=got.append)
    download.start()
    download.add_peers([seeder.address])
    try:
        await asyncio.wait_for(download.done.wait(), 20)
    finally:
        await download.stop()
        await seeder.close()
    assert got and got[0].info_bytes == meta.info_bytes
    assert _payload_of(stores[1], meta.info_hash, len(payload)) == payload


async def _evil_peer(info_hash: bytes) -> tuple[asyncio.Server, tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = PeerWireReader()
        writer.write(encode_handshake(info_hash, b"-EV0001-evilevilevil", make_reserved()))
        writer.write(encode(HaveAll()) + encode(Unchoke()))
        try:
            while data := await reader.read(65536):
                wire.feed(data)
                while (event := wire.next_event()) is not NEED_DATA:
                    if isinstance(event, Request):
                        junk = b"\xee" * event.length
                        writer.write(encode(Piece(event.index, event.begin, junk)))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (host, port)


async def test_a_peer_sending_bad_data_is_banned_and_the_torrent_still_completes(
    stores: tuple[TorrentStore, TorrentStore],
) -> None:
    payload = os.urandom(12 * PIECE)
    meta = _torrent(payload)
    seeder = await _seeding(stores[0], meta, payload)
    ih = _add(stores[1], meta)
    evil, evil_address = await _evil_peer(ih)
    download = TorrentDownload(ih, stores[1], meta=meta, limits=DownloadLimits(initial_queue=4))
    download.start()
    download.add_peers([evil_address])
    await asyncio.sleep(0.3)
    good_address = seeder.address
    download.add_peers([good_address])
    try:
        await asyncio.wait_for(download.done.wait(), 20)
    finally:
        await download.stop()
        await seeder.close()
        evil.close()
    assert _payload_of(stores[1], ih, len(payload)) == payload
    assert download.stats.bad_pieces >= 1
    assert evil_address in download.banned
    assert good_address not in download.banned


class _Collector:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()

    def peer_event(self, peer: PeerSocket, event: object) -> None:
        self.events.append(event)
        self.changed.set()

    def peer_closed(self, peer: PeerSocket, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


async def _local_peer(address: tuple[str, int], info_hash: bytes) -> tuple[PeerSocket, _Collector]:
    sock = await connect_peer(address, timeout=5)
    collector = _Collector()
    peer = PeerSocket(sock, collector)  # type: ignore[arg-type]
    peer.send(encode_handshake(info_hash, b"-LP0001-localpeer001", make_reserved()))
    peer.start()
    return peer, collector


async def _wait_for(collector: _Collector, kind: type, timeout: float = 10) -> object:
    async with asyncio.timeout(timeout):
        while True:
            for event in collector.events:
                if isinstance(event, kind):
                    return event
            collector.changed.clear()
            await collector.changed.wait()


async def test_a_local_request_for_a_missing_piece_is_served_once_fetched(
    stores: tuple[TorrentStore, TorrentStore],
) -> None:
    """The box holds nothing yet; a local peer asks for the last piece; the box fetches it
    from outside first and then serves exactly the right bytes."""
    payload = os.urandom(30 * PIECE)
    meta = _torrent(payload)
    outside = await _seeding(stores[0], meta, payload)
    box_store = stores[1]
    ih = _add(box_store, meta)
    download = TorrentDownload(ih, box_store, meta=meta, limits=DownloadLimits(initial_queue=2))

    def fetch(info_hash: bytes, index: int) -> asyncio.Future[None] | None:
        return download.wait_piece(index)

    box = Seeder(box_store, peer_id=b"-SC0100-boxboxboxbox", subscribers=LOOPBACK, fetch=fetch)
    await box.start("127.0.0.1", 0)
    download._on_piece = box.piece_added
    peer, seen = await _local_peer(box.address, ih)
    try:
        await _wait_for(seen, Unchoke)
        peer.send(encode(Request(29, 0, 16384)))
        download.start()
        download.add_peers([outside.address])
        block = await _wait_for(seen, Piece)
        assert isinstance(block, Piece)
        assert (block.index, block.begin) == (29, 0)
        assert bytes(block.block) == payload[29 * PIECE : 29 * PIECE + 16384]
        assert not any(isinstance(e, RejectRequest) for e in seen.events)
    finally:
        peer.close()
        await download.stop()
        await box.close()
        await outside.close()


async def test_the_seeder_refuses_unknown_torrents_and_non_subscribers(
    stores: tuple[TorrentStore, TorrentStore],
) -> None:
    payload = os.urandom(2 * PIECE)
    meta = _torrent(payload)
    seeder = await _seeding(stores[0], meta, payload)
    try:
        _, seen = await _local_peer(seeder.address, b"\x01" * 20)
        reason = await asyncio.wait_for(seen.closed, 5)
        assert "closed" in reason
        outsider = Seeder(
            stores[0],
            peer_id=b"-SC0100-seedseedseed",
            subscribers=(ipaddress.IPv4Network("10.0.0.0/8"),),
        )
        await outsider.start("127.0.0.1", 0)
        try:
            assert meta.info_hash is not None
            _peer, seen = await _local_peer(outsider.address, meta.info_hash)
            await asyncio.wait_for(seen.closed, 5)
            assert outsider.stats.refused_connections == 1
        finally:
            await outsider.close()
    finally:
        await seeder.close()
