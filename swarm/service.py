"""The BitTorrent side of the box: pinned torrents, their downloads, the seeder, the local tracker.

Why it is built this way: the daemon (composition root) builds one :class:`SwarmService` and
talks to it through a few verbs an operator understands: pin, list, purge. Everything
torrent-shaped stays behind it: which downloads run, when pieces become durable, how a local
peer's request for a missing piece reaches the downloader. Restart resumes every torrent the
store holds incompletely, with the trackers and peers it was pinned with (kept beside the
payload in a small JSON file, since trackers are not part of the info dict).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.torrents import TorrentInfo, TorrentStore
from interceptor.subscribers import is_subscriber
from swarm.downloader import DownloadLimits, RateLimiter, TorrentDownload, make_peer_id
from swarm.errors import RemoteProtocolError, SwarmError
from swarm.local_tracker import LocalTracker
from swarm.magnet import parse_magnet
from swarm.metainfo import Metainfo, parse_info, parse_metainfo
from swarm.popularity import Admission, PopularityTable
from swarm.seeder import Seeder

__all__ = ["PinResult", "SwarmOptions", "SwarmService", "TorrentStatus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SwarmOptions:
    listen: tuple[str, int]
    announce_port: int
    subscribers: tuple[ipaddress.IPv4Network, ...]
    limits: DownloadLimits
    download_rate_limit: int = 0
    torrent_rate_limit: int = 0
    commit_interval: float = 5.0
    bind: str | None = None
    hashing_threads: int = 2


@dataclass(frozen=True, slots=True)
class PinResult:
    info_hash: bytes
    name: str | None
    known: bool  # the info dict is known (False: fetching metadata from peers)


@dataclass(frozen=True, slots=True)
class TorrentStatus:
    info: TorrentInfo | None
    info_hash: bytes
    downloading: bool
    peers: int
    local_peers: int
    rate: float
    fetching_metadata: bool
    banned_peers: int

    def as_json(self) -> dict[str, Any]:
        info = self.info
        return {
            "info_hash": self.info_hash.hex(),
            "name": info.name if info else None,
            "size": info.total_length if info else None,
            "pieces": info.num_pieces if info else None,
            "have": info.have_count if info else 0,
            "progress": info.progress if info else 0.0,
            "complete": bool(info and info.complete),
            "pinned": bool(info and info.pinned),
            "bytes_downloaded": info.bytes_downloaded if info else 0,
            "bytes_uploaded": info.bytes_uploaded if info else 0,
            "local_peers_served": info.local_peers_served if info else 0,
            "downloading": self.downloading,
            "fetching_metadata": self.fetching_metadata,
            "outside_peers": self.peers,
            "local_peers": self.local_peers,
            "download_rate": round(self.rate, 1),
            "banned_peers": self.banned_peers,
        }


class SwarmService:
    def __init__(
        self,
        torrents: TorrentStore,
        directory: str,
        options: SwarmOptions,
        popularity: PopularityTable | None = None,
    ) -> None:
        self.torrents = torrents
        self.options = options
        # What the interceptor saw; kept in step here: pinned and held torrents are admitted,
        # and a torrent becomes steerable once its info dict shows it is public.
        self.popularity = popularity
        self.peer_id = make_peer_id()
        self._sources = Path(directory) / "torrents"
        self._executor = ThreadPoolExecutor(
            max_workers=options.hashing_threads, thread_name_prefix="piece-hash"
        )
        self._global_limiter = RateLimiter(options.download_rate_limit)
        self.downloads: dict[bytes, TorrentDownload] = {}
        self.seeder = Seeder(
            torrents,
            peer_id=self.peer_id,
            subscribers=options.subscribers,
            fetch=self._fetch_for_local_peer,
        )
        self.tracker: LocalTracker | None = None
        self._pin_requested: set[bytes] = set()
        self._commit_task: asyncio.Task[None] | None = None
        # Counters that outlive each download (for metrics).
        self.pieces_fetched = 0
        self.bytes_fetched = 0
        self.bad_pieces = 0
        self.banned_peers = 0
        self.wasted_bytes = 0
        self.admissions = 0

    # --- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.options.listen
        await self.seeder.start(host, port)
        box_host = host if host != "0.0.0.0" else "127.0.0.1"
        self.tracker = LocalTracker(
            (box_host, self.seeder.address[1]),
            lambda ih: self.torrents.get(ih) is not None,
        )
        self._commit_task = asyncio.create_task(self._committer(), name="torrent commit")
        for info in self.torrents.list():
            self._publicly_held(info.info_hash)
            if not info.complete:
                self._resume(info)

    async def stop(self) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        for download in list(self.downloads.values()):
            await download.stop()
            self._absorb(download)
        self.downloads.clear()
        await self.seeder.close()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.torrents.commit)
        self._executor.shutdown(wait=True)

    async def _committer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.commit_interval)
            try:
                await loop.run_in_executor(self._executor, self.torrents.commit)
            except SwarmError as exc:  # pragma: no cover - logged, retried next round
                log.error("torrent commit failed: %s", exc)
            for ih, download in list(self.downloads.items()):
                if download.done.is_set():
                    await download.stop()
                    self._absorb(download)
                    del self.downloads[ih]

    def _absorb(self, download: TorrentDownload) -> None:
        stats = download.stats
        self.pieces_fetched += stats.pieces_fetched
        self.bytes_fetched += stats.downloaded
        self.bad_pieces += stats.bad_pieces
        self.banned_peers += stats.banned
        self.wasted_bytes += stats.wasted
        download.stats = type(stats)()

    # --- operator verbs --------------------------------------------------------------------

    def pin(self, source: bytes | str) -> PinResult:
        """Pin a torrent (.torrent bytes or a magnet link) and start fetching what is missing."""
        if isinstance(source, str) or source[:7].lower() == b"magnet:":
            text = source if isinstance(source, str) else source.decode("utf-8", "replace")
            return self._pin_magnet(text.strip())
        meta = parse_metainfo(source)
        return self._pin_meta(meta, trackers=meta.trackers, peers=())

    def _pin_meta(
        self, meta: Metainfo, *, trackers: Iterable[str], peers: Iterable[tuple[str, int]]
    ) -> PinResult:
        if meta.private:
            raise RemoteProtocolError(
                "private torrent (BEP 27): the box never caches or shares private torrents"
            )
        if meta.info_hash is None:
            raise RemoteProtocolError("v2-only torrents are not supported yet (no v1 info hash)")
        ih = meta.info_hash
        self.torrents.add(
            ih,
            info=meta.info_bytes,
            name=meta.name,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            piece_hashes=meta.piece_hashes,
            pinned=True,
        )
        self.torrents.pin(ih)
        self._publicly_held(ih)
        self._save_sources(ih, trackers, peers)
        self._ensure_download(ih, meta, trackers, peers)
        return PinResult(ih, meta.name, True)

    def _pin_magnet(self, text: str) -> PinResult:
        magnet = parse_magnet(text)
        if magnet.info_hash is None:
            raise RemoteProtocolError("magnet without a v1 info hash (btih) is not supported yet")
        ih = magnet.info_hash
        known = self.torrents.get(ih)
        self._save_sources(ih, magnet.trackers, magnet.peers)
        if known is not None:
            self.torrents.pin(ih)
            self._publicly_held(ih)
            if not known.complete:
                self._resume(known)
            return PinResult(ih, known.name, True)
        self._pin_requested.add(ih)
        self._ensure_download(ih, None, magnet.trackers, magnet.peers)
        return PinResult(ih, magnet.display_name, False)

    def admit(self, admission: Admission) -> None:
        """The interceptor found a torrent popular: cache it (not pinned, so evictable)."""
        ih = admission.info_hash
        log.info("admitting %s (%s)", ih.hex(), admission.reason)
        self.admissions += 1
        if self.torrents.get(ih) is None:
            self._save_sources(ih, admission.trackers, ())
        known = self.torrents.get(ih)
        if known is not None:
            self._publicly_held(ih)
            if not known.complete:
                self._resume(known)
            return
        self._ensure_download(ih, None, admission.trackers, ())

    def learn_peers(self, info_hash: bytes, peers: list[tuple[str, int]]) -> None:
        """Outside peers seen in replies to subscribers (trackers, DHT) for an admitted torrent."""
        outside = [
            p
            for p in peers
            if not is_subscriber(p[0], self.options.subscribers)
        ]
        if outside:
            self.add_peers(info_hash, outside)

    def _publicly_held(self, info_hash: bytes) -> None:
        """The box holds (or fetches) this public torrent: steer local peers to it."""
        if self.popularity is None:
            return
        now = time.monotonic()
        # The table's pin means "admitted whatever the popularity": true of what we hold.
        self.popularity.pin(info_hash, now=now)
        self.popularity.mark_private(info_hash, now=now, private=False)

    async def purge(self, info_hash: bytes) -> bool:
        download = self.downloads.pop(info_hash, None)
        if download is not None:
            await download.stop()
            self._absorb(download)
        self.seeder.drop_torrent(info_hash)
        if self.popularity is not None:
            self.popularity.unadmit(info_hash)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._sources_path(info_hash))
        return self.torrents.purge(info_hash) or download is not None

    def status(self, info_hash: bytes) -> TorrentStatus | None:
        info = self.torrents.get(info_hash)
        download = self.downloads.get(info_hash)
        if info is None and download is None:
            return None
        return TorrentStatus(
            info=info,
            info_hash=info_hash,
            downloading=download is not None and not download.done.is_set(),
            peers=download.peers_connected if download else 0,
            local_peers=self.seeder.local_peers(info_hash),
            rate=download.rate if download else 0.0,
            fetching_metadata=download is not None and download.meta is None,
            banned_peers=len(download.banned) if download else 0,
        )

    def statuses(self) -> list[TorrentStatus]:
        hashes = [info.info_hash for info in self.torrents.list()]
        hashes += [ih for ih in self.downloads if ih not in hashes]
        return [s for s in (self.status(ih) for ih in hashes) if s is not None]

    def counters(self) -> dict[str, int]:
        """Totals since start, for metrics: finished downloads plus the running ones."""
        live = [d.stats for d in self.downloads.values()]
        seeder = self.seeder.stats
        return {
            "pieces_fetched": self.pieces_fetched + sum(s.pieces_fetched for s in live),
            "outside_bytes": self.bytes_fetched + sum(s.downloaded for s in live),
            "wasted_bytes": self.wasted_bytes + sum(s.wasted for s in live),
            "bad_pieces": self.bad_pieces + sum(s.bad_pieces for s in live),
            "banned_peers": self.banned_peers + sum(s.banned for s in live),
            "admissions": self.admissions,
            "local_served_bytes": seeder.bytes_served,
            "local_rejected_requests": seeder.rejected,
            "refused_connections": seeder.refused_connections,
            "outside_peers": sum(d.peers_connected for d in self.downloads.values()),
            "local_peers": self.seeder.local_peers(),
        }

    def add_peers(self, info_hash: bytes, peers: Iterable[tuple[str, int]]) -> None:
        """Outside peers learned elsewhere (the interceptor, an operator)."""
        download = self.downloads.get(info_hash)
        if download is not None:
            download.add_peers(peers)

    def announce_reply(self, client_ip: str, query: str) -> bytes | None:
        """The local tracker's answer, or None for a client outside the subscriber prefixes."""
        if self.tracker is None or not is_subscriber(client_ip, self.options.subscribers):
            return None
        return self.tracker.answer(client_ip, query)

    # --- downloads -------------------------------------------------------------------------

    def _resume(self, info: TorrentInfo) -> None:
        trackers, peers = self._load_sources(info.info_hash)
        try:
            meta = _meta_from_info(info)
        except RemoteProtocolError as exc:
            log.error("stored info dict of %s is unusable: %s", info.info_hash.hex(), exc)
            return
        self._ensure_download(info.info_hash, meta, trackers, peers)

    def _ensure_download(
        self,
        info_hash: bytes,
        meta: Metainfo | None,
        trackers: Iterable[str],
        peers: Iterable[tuple[str, int]],
    ) -> TorrentDownload | None:
        download = self.downloads.get(info_hash)
        if download is None:
            info = self.torrents.get(info_hash)
            if info is not None and info.complete:
                return None
            opts = self.options
            download = TorrentDownload(
                info_hash,
                self.torrents,
                meta=meta,
                trackers=trackers,
                peer_id=self.peer_id,
                listen_port=opts.announce_port,
                limits=opts.limits,
                limiter=RateLimiter(opts.torrent_rate_limit),
                global_limiter=self._global_limiter,
                executor=self._executor,
                on_piece=self.seeder.piece_added,
                on_metadata=self._metadata_arrived,
                bind=opts.bind,
            )
            self.downloads[info_hash] = download
            download.start()
        download.add_peers(peers)
        return download

    def _metadata_arrived(self, meta: Metainfo) -> None:
        ih = meta.info_hash
        if ih is None:
            return
        if meta.private:
            # BEP 27: never cached, never steered. The download stopped itself.
            log.warning("%s is a private torrent: not cached", ih.hex())
            if self.popularity is not None:
                self.popularity.mark_private(ih, now=time.monotonic())
            return
        pinned = ih in self._pin_requested
        self._pin_requested.discard(ih)
        if pinned:
            self.torrents.pin(ih)
        self._publicly_held(ih)
        trackers, peers = self._load_sources(ih)
        self._save_sources(ih, [*trackers, *meta.trackers], peers)

    def _fetch_for_local_peer(self, info_hash: bytes, index: int) -> asyncio.Future[None] | None:
        download = self.downloads.get(info_hash)
        if download is None or download.done.is_set():
            return None
        return download.wait_piece(index)

    # --- where a torrent's trackers and peers are kept -------------------------------------

    def _sources_path(self, info_hash: bytes) -> Path:
        return self._sources / f"{info_hash.hex()}.sources.json"

    def _save_sources(
        self, info_hash: bytes, trackers: Iterable[str], peers: Iterable[tuple[str, int]]
    ) -> None:
        path = self._sources_path(info_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "trackers": list(dict.fromkeys(trackers)),
            "peers": [[host, port] for host, port in dict.fromkeys(peers)],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _load_sources(self, info_hash: bytes) -> tuple[list[str], list[tuple[str, int]]]:
        try:
            data = json.loads(self._sources_path(info_hash).read_text())
            trackers = [str(t) for t in data.get("trackers", [])]
            peers = [(str(h), int(p)) for h, p in data.get("peers", [])]
        except (OSError, ValueError, TypeError) as exc:
            log.debug("no usable sources for %s: %s", info_hash.hex(), exc)
            return [], []
        return trackers, peers


def _meta_from_info(info: TorrentInfo) -> Metainfo:
    return parse_info(info.info, info.info_hash)
