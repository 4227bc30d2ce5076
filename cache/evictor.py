"""Keeps the cache disk under its quota: the policies of ``cache/eviction.py`` wired to the stores.

Why it is built this way
------------------------
* **One quota, one policy, two kinds of content.** HTTP blobs and torrent payload pieces share
  the disk, so they compete in one eviction policy: an HTTP object is keyed by its store key
  (``bytes``), a torrent by piece ranges of about :data:`RANGE_BYTES` (``(info_hash,
  first_piece)``), and the coldest is evicted first whatever its kind. A "hit" means the same for
  both: one HTTP request served from the store, or one range's worth of bytes served to local
  peers. With the default LFU-DA (see ``cache/eviction.py``) the priority is frequency plus an
  aging term, so what saves the most uplink bytes per byte of disk stays.
* **Disk bytes, counted from notifications.** The stores tell the evictor of every change once it
  is committed (:class:`cache.store.StoreObserver`, :class:`cache.torrents.TorrentObserver`):
  a blob file counts once however many objects share it, rounded up to the filesystem block
  (``st_blocks`` is what fills a disk, and small objects waste most of a block); a torrent
  piece by its length. Each notification is O(log n) under one short lock: nothing scans on
  the serving path, and the event loop only ever *schedules* an eviction run.
* **Eviction never blocks serving.** :meth:`Evictor.run` works in a dedicated worker thread:
  it detaches a batch of victims from the policy under the lock (no other work under it),
  deletes HTTP objects with :meth:`cache.store.Store.delete_keys` (batched write transactions;
  a blob file is unlinked when its last reference goes) and evicts torrent ranges with
  :meth:`cache.torrents.TorrentStore.evict_pieces` then ``punch``. Usage passes the high
  watermark -> evict down to the low one, so runs are rare and batched.
* **No zeros are ever served.** A torrent range's bits are cleared in memory and durably before
  its blocks are punched; the pieces a local peer still has queued (the seeder's
  ``in_flight``, asked on the event loop, where serving happens, so the answer cannot go
  stale) are punched at a later pass. A seeder asked for an evicted piece sees it missing and
  fetches it (a download is running) or rejects the request.
* **Pins are checked where it cannot race.** Pinned objects (``ObjectMeta.pinned``), pinned
  torrents and objects matching the injectable ``is_pinned(url)`` rules (host patterns, URL
  prefixes: the operator CLI's) never enter the policy's eviction order; and because rules can
  change at any time, every deletion re-checks them under the store's writer lock (and
  ``evict_pieces`` the torrent's pin under its admin lock). A victim found pinned there goes
  back into the policy as pinned.
* **A hard limit at admission.** ``admit`` refuses to store an object that would take usage past
  the quota's limit (eviction is behind) or more than half of it, and with ``admission`` on asks
  the TinyLFU filter whether the newcomer is worth more than the bytes it would displace, so one-
  off giants are relayed, not stored. Fills already admitted may still overshoot by their own
  sizes; the margin between the high watermark and the limit is there for that.
* **Rebuilt at start.** The policy is memory only: at start-up it is rebuilt from the index
  (size, pin, hit count, last access; hit counts halve per :data:`HIT_HALF_LIFE` of idleness so
  last year's hits do not pin an object forever) and from the torrents' bitfields. Memory is
  about 300 bytes per object (key, heap entry, size): 3 GB for 10 million objects.

Vary: the handler stores a Vary response under its primary key and a variant key
(``primary NUL generation NUL vary-key``, ``swarmcache/http/target.py``) sharing one blob; a hit
on a variant counts for its primary too, or the never-hit primary would be evicted first and
orphan its hot variants.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, cast

from cache.eviction import LFUDA, LRU, EvictionPolicy, GDSFPolicy, Quota, TinyLFU
from cache.store import BlobRef, ObjectMeta, Store, StoreError
from cache.torrents import TorrentStore, UnknownTorrent

__all__ = [
    "HIT_HALF_LIFE",
    "POLICIES",
    "RANGE_BYTES",
    "EvictionFigures",
    "Evictor",
    "disk_quota",
    "make_policy",
]

log = logging.getLogger(__name__)

POLICIES: Final = ("lfu-da", "gdsf", "lru")
# A torrent is evicted in ranges of about this many bytes (whole pieces, at least one).
RANGE_BYTES: Final = 16 << 20
# Stored hit counts lose half their weight per week without a hit when the policy is rebuilt.
HIT_HALF_LIFE: Final = 7 * 86400.0
# Victims detached per batch (bytes): bounds one batch's deletions and the lock hold.
_BATCH_BYTES: Final = 32 << 20
# Distinct keys whose hits the hit path buffers before handing them to the policy itself.
_HITS_BATCH: Final = 1024
# Seconds to wait for the event loop to say which pieces are in flight.
_LOOP_WAIT: Final = 10.0
# Periodic re-check (a run that freed nothing, pieces left to punch).
_RECHECK: Final = 30.0
_RETRY_PUNCH: Final = 1.0

RangeKey = tuple[bytes, int]


def make_policy(name: str, capacity: int, *, admission: bool) -> EvictionPolicy:
    """The named eviction order, behind a TinyLFU admission filter if ``admission``."""
    inner: EvictionPolicy
    if name == "lfu-da":
        inner = LFUDA()
    elif name == "gdsf":
        inner = GDSFPolicy()
    elif name == "lru":
        inner = LRU()
    else:
        raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(POLICIES)})")
    if not admission:
        return inner
    # One sketch counter per object the quota holds at a 256 KiB average, within 64Ki-16Mi.
    items = min(max(capacity // (256 << 10), 1 << 16), 1 << 24)
    return TinyLFU(inner, capacity, expected_items=items)


def disk_quota(directory: str, quota_bytes: int, *, held: int = 0, share: float = 0.9) -> int:
    """``quota_bytes``, or when it is 0 ``share`` of what the cache may occupy on the
    filesystem holding ``directory``: the free space plus the ``held`` bytes the cache already
    occupies, never more than the filesystem's size. The rest is headroom for the LMDB index,
    temp files and fills in flight; counting only the cache's own bytes and the free space
    keeps a cache on a shared filesystem (a root partition with logs on it) from filling it."""
    if quota_bytes:
        return quota_bytes
    st = os.statvfs(directory)
    usable = min(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize + held)
    return int(usable * share)


@dataclass(frozen=True, slots=True)
class EvictionFigures:
    """What the metrics show (``swarmcache_store_quota_bytes`` and friends)."""

    quota_bytes: int
    http_bytes: int  # blob files, block-rounded, each counted once
    torrent_bytes: int  # held piece bytes, plus evicted pieces whose blocks are not freed yet
    runs: int
    evicted_objects: dict[str, int]
    evicted_bytes: dict[str, int]
    refused: int  # objects admission refused to store


class Evictor:
    """Quota accounting and eviction for one :class:`Store` (and its :class:`TorrentStore`).

    Install it as the stores' observer (:meth:`install`), :meth:`rebuild` it, then either call
    :meth:`run` yourself when :meth:`over_high` (tests, benchmarks) or :meth:`attach` it to an
    event loop, which runs it in its own thread whenever usage passes the high watermark.
    """

    def __init__(
        self,
        store: Store,
        quota: Quota,
        *,
        torrents: TorrentStore | None = None,
        policy: str = "lfu-da",
        admission: bool = True,
        is_pinned: Callable[[bytes], bool] | None = None,
        downloading: Callable[[bytes], bool] | None = None,
        range_bytes: int = RANGE_BYTES,
        block_size: int | None = None,
    ) -> None:
        if range_bytes <= 0:
            raise ValueError(f"range_bytes must be positive, got {range_bytes}")
        self.store = store
        self.torrents = torrents
        self.quota = quota
        self.policy_name = policy
        self.admission = admission
        self._policy = make_policy(policy, quota.low_bytes, admission=admission)
        self._is_pinned = is_pinned or _never
        # A torrent under download is not evicted: its downloader believes it holds what it
        # fetched and would not fetch an evicted piece again (a local peer would wait forever).
        self._downloading = downloading or _never
        self._range_bytes = range_bytes
        self._block = block_size or os.statvfs(store.directory).f_frsize or 4096
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        # Hits not yet given to the policy (key -> count, in order of each key's last hit):
        # the hit path only bumps a dict entry; the policy's own work (sketch, heap) is done
        # in batches, before any decision reads it (admit, eviction) or past _HITS_BATCH keys.
        self._pending_hits: dict[bytes, int] = {}
        self._http_bytes = 0
        self._bt_bytes = 0
        # torrent ranges: held bytes, bytes served since the last counted hit, pieces per range
        self._ranges: dict[RangeKey, int] = {}
        self._served: dict[RangeKey, int] = {}
        self._ppr: dict[bytes, int] = {}
        # evicted pieces whose blocks are still allocated: info_hash -> {index: length}
        self._unpunched: dict[bytes, dict[int, int]] = {}
        self._unpunched_bytes = 0
        self._evicting_thread: int | None = None
        self._runs = 0
        self._refused = 0
        self._evicted_objects = {"http": 0, "torrent": 0}
        self._evicted_bytes = {"http": 0, "torrent": 0}
        # event-loop glue (attach)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: Callable[[bytes], set[int]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Future[int] | None = None
        self._kicked = False
        self._timer: asyncio.TimerHandle | None = None

    # --- accounting -----------------------------------------------------------------------

    def _round(self, size: int) -> int:
        return -(-size // self._block) * self._block

    @property
    def used_bytes(self) -> int:
        return self._http_bytes + self._bt_bytes + self._unpunched_bytes

    @property
    def http_bytes(self) -> int:
        return self._http_bytes

    @property
    def torrent_bytes(self) -> int:
        return self._bt_bytes + self._unpunched_bytes

    def over_high(self) -> bool:
        return self.quota.over_high(self.used_bytes)

    def figures(self) -> EvictionFigures:
        return EvictionFigures(
            quota_bytes=self.quota.limit,
            http_bytes=self._http_bytes,
            torrent_bytes=self.torrent_bytes,
            runs=self._runs,
            evicted_objects=dict(self._evicted_objects),
            evicted_bytes=dict(self._evicted_bytes),
            refused=self._refused,
        )

    def install(self) -> None:
        """Become the observer of the store (and torrent store)."""
        self.store.observer = self
        if self.torrents is not None:
            self.torrents.observer = self

    def rebuild(self) -> None:
        """Recreate the policy and the byte counts from the index (slow: start-up only)."""
        now = time.time()
        entries: list[tuple[float, Hashable, int, bool, float]] = []
        digests: set[str] = set()
        http = 0
        for key, meta in self.store.iter_objects():
            size = self._round(meta.blob.size)
            if meta.blob.digest not in digests:
                digests.add(meta.blob.digest)
                http += size
            seen = meta.last_access or meta.stored_at
            pinned = meta.pinned or self._is_pinned(meta.url)
            entries.append((seen, key, size, pinned, _decayed(meta.hits, seen, now)))
        del digests
        ranges: dict[RangeKey, int] = {}
        ppr: dict[bytes, int] = {}
        if self.torrents is not None:
            for info in self.torrents.list():
                ih = info.info_hash
                per = ppr[ih] = max(1, self._range_bytes // info.piece_length)
                bits = self.torrents.bitfield(ih)
                # Served bytes spread over the torrent: how many times each range was read.
                hits = info.bytes_uploaded / info.total_length
                for first in range(0, info.num_pieces, per):
                    held = sum(
                        min(info.piece_length, info.total_length - i * info.piece_length)
                        for i in range(first, min(first + per, info.num_pieces))
                        if bits[i >> 3] & (0x80 >> (i & 7))
                    )
                    if held:
                        ranges[(ih, first)] = held
                        entries.append((info.added_at, (ih, first), held, info.pinned, hits))
        entries.sort(key=lambda e: e[0])  # oldest first: the order LRU needs
        policy = make_policy(self.policy_name, self.quota.low_bytes, admission=self.admission)
        for _, entry, size, pinned, hits in entries:
            policy.on_insert(entry, size, pinned=pinned, hits=hits)
        with self._lock:
            self._policy = policy
            self._pending_hits = {}  # counted in the index's hits, read above
            self._http_bytes = http
            self._bt_bytes = sum(ranges.values())
            self._ranges = ranges
            self._ppr = ppr
            self._served.clear()
        log.info(
            "eviction: %d objects and %d torrent ranges, %d of %d quota bytes in use",
            len(entries) - len(ranges),
            len(ranges),
            self.used_bytes,
            self.quota.limit,
        )

    # --- StoreObserver --------------------------------------------------------------------

    def object_stored(self, key: bytes, meta: ObjectMeta) -> None:
        pinned = meta.pinned or self._is_pinned(meta.url)
        size = self._round(meta.blob.size)
        with self._lock:
            policy = self._policy
            if key in policy:
                policy.resize(key, size)
                policy.set_pinned(key, pinned)
            else:
                policy.on_insert(key, size, pinned=pinned)

    def object_removed(self, key: bytes) -> None:
        with self._lock:
            self._policy.on_remove(key)

    def object_hit(self, key: bytes) -> None:
        pending = self._pending_hits
        pending[key] = pending.pop(key, 0) + 1
        if len(pending) >= _HITS_BATCH:
            with self._lock:
                self._apply_hits_locked()

    def _apply_hits_locked(self) -> None:
        """Give the buffered hits to the policy (caller holds ``_lock``). A hit of a Vary
        variant also counts for its primary, which is what eviction removes."""
        pending, self._pending_hits = self._pending_hits, {}
        on_hits = self._policy.on_hits
        for key, count in pending.items():
            on_hits(key, count)
            primary, sep, _ = key.partition(b"\x00")
            if sep:
                on_hits(primary, count)

    def blobs_changed(self, added: Sequence[BlobRef], freed: Sequence[BlobRef]) -> None:
        gained = sum(self._round(ref.size) for ref in added)
        lost = sum(self._round(ref.size) for ref in freed)
        with self._lock:
            self._http_bytes += gained - lost
        if lost and threading.get_ident() == self._evicting_thread:
            self._evicted_bytes["http"] += lost
        if gained:
            self._maybe_kick()

    # --- TorrentObserver ------------------------------------------------------------------

    def _range_of(self, info_hash: bytes, index: int) -> RangeKey | None:
        per = self._ppr.get(info_hash)
        if per is None:
            if self.torrents is None:
                return None
            try:
                piece_length = self.torrents.piece_span(info_hash, 0)[1]
            except (StoreError, ValueError):
                return None
            per = self._ppr[info_hash] = max(1, self._range_bytes // piece_length)
        return info_hash, index - index % per

    def piece_stored(self, info_hash: bytes, index: int, length: int) -> None:
        key = self._range_of(info_hash, index)
        if key is None:
            return
        pinned = self.torrents is not None and self.torrents.is_pinned(info_hash)
        with self._lock:
            unpunched = self._unpunched.get(info_hash)
            if unpunched is not None and unpunched.pop(index, None) is not None:
                self._unpunched_bytes -= length  # written back before its blocks were freed
            held = self._ranges[key] = self._ranges.get(key, 0) + length
            self._bt_bytes += length
            if key in self._policy:
                self._policy.resize(key, held)
            else:
                self._policy.on_insert(key, held, pinned=pinned)
        self._maybe_kick()

    def pieces_dropped(self, info_hash: bytes, pieces: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            for index, length in pieces:
                key = self._range_of(info_hash, index)
                if key is None:
                    continue
                self._forget_range_bytes(key, length)
                # Their blocks are still allocated (bad or unsynced data): punch them later.
                self._unpunched.setdefault(info_hash, {})[index] = length
                self._unpunched_bytes += length

    def _forget_range_bytes(self, key: RangeKey, length: int) -> None:
        # Under the lock.
        held = self._ranges.get(key, 0) - length
        self._bt_bytes -= min(length, self._ranges.get(key, 0))
        if held > 0:
            self._ranges[key] = held
            if key in self._policy:
                self._policy.resize(key, held)
        else:
            self._ranges.pop(key, None)
            self._served.pop(key, None)
            self._policy.on_remove(key)

    def torrent_removed(self, info_hash: bytes) -> None:
        with self._lock:
            for key in [k for k in self._ranges if k[0] == info_hash]:
                self._bt_bytes -= self._ranges.pop(key)
                self._served.pop(key, None)
                self._policy.on_remove(key)
            gone = self._unpunched.pop(info_hash, {})
            self._unpunched_bytes -= sum(gone.values())
            self._ppr.pop(info_hash, None)

    def torrent_pinned(self, info_hash: bytes, pinned: bool) -> None:
        with self._lock:
            for key in self._ranges:
                if key[0] == info_hash and key in self._policy:
                    self._policy.set_pinned(key, pinned)

    def piece_served(self, info_hash: bytes, index: int, length: int) -> None:
        """Bytes of a piece sent to a local peer (the seeder's ``on_serve``)."""
        per = self._ppr.get(info_hash)
        if per is None:
            return
        key = (info_hash, index - index % per)
        with self._lock:
            size = self._ranges.get(key)
            if not size:
                return
            served = self._served.get(key, 0) + length
            if served >= size:
                served -= size
                self._policy.on_hit(key)
            self._served[key] = served

    # --- admission ------------------------------------------------------------------------

    def admit(self, key: bytes, size: int, url: bytes | None = None) -> bool:
        """Whether a fill of ``size`` bytes should be stored (False: relay it only).

        An object the pin rules cover (``url``) skips the size and frequency tests, not the
        hard limit.
        """
        rounded = self._round(size)
        pinned = url is not None and self._is_pinned(url)
        with self._lock:
            ok = self.used_bytes + rounded <= self.quota.limit
            if ok and not pinned:
                ok = rounded <= self.quota.limit // 2
                if ok and self.admission:
                    self._apply_hits_locked()
                    ok = self._policy.admit(key, rounded)
            if not ok:
                self._refused += 1
        if not ok:
            self._maybe_kick()
        return ok

    # --- eviction -------------------------------------------------------------------------

    def run(self) -> int:
        """Evict until usage is at the low watermark; returns the bytes freed. Worker thread.

        Stops early when only pinned content is left.
        """
        with self._run_lock:
            self._evicting_thread = threading.get_ident()
            self._runs += 1
            before = self.used_bytes
            skipped: list[RangeKey] = []
            try:
                self._punch_pending()
                while True:
                    with self._lock:
                        # Pieces waiting for their punch are on their way out: not counted here,
                        # or every queued block would make us evict something else too.
                        excess = self._http_bytes + self._bt_bytes - self.quota.low_bytes
                        if excess <= 0:
                            break
                        self._apply_hits_locked()
                        victims = self._policy.victims(min(excess, _BATCH_BYTES))
                    if not victims:
                        log.warning(
                            "eviction: %d bytes over the low watermark but nothing evictable "
                            "is left (everything is pinned)",
                            excess,
                        )
                        break
                    keys = [v for v in victims if isinstance(v, bytes)]
                    ranges = [cast(RangeKey, v) for v in victims if isinstance(v, tuple)]
                    if keys:
                        self._evict_objects(keys)
                    if ranges:
                        skipped += self._evict_ranges(ranges)
                self._punch_pending()
            finally:
                self._evicting_thread = None
                with self._lock:
                    for key in skipped:  # back in the order, for the next run
                        held = self._ranges.get(key)
                        if held and key not in self._policy:
                            self._policy.on_insert(key, held)
            return max(0, before - self.used_bytes)

    def _evict_objects(self, keys: list[bytes]) -> None:
        def evictable(key: bytes, meta: ObjectMeta) -> bool:
            return not (meta.pinned or self._is_pinned(meta.url))

        deleted = self.store.delete_keys(keys, evictable)
        self._evicted_objects["http"] += len(deleted)
        if len(deleted) == len(keys):
            return
        gone = set(deleted)
        for key in keys:
            if key in gone:
                continue
            meta = self.store.get(key)
            if meta is None:
                continue  # deleted meanwhile by someone else
            with self._lock:
                if key not in self._policy:
                    self._policy.on_insert(key, self._round(meta.blob.size), pinned=True)

    def _evict_ranges(self, keys: list[RangeKey]) -> list[RangeKey]:
        """Evict these ranges; returns those skipped for now (torrent under download)."""
        torrents = self.torrents
        assert torrents is not None
        skipped: list[RangeKey] = []
        for key in keys:
            info_hash, first = key
            if self._downloading(info_hash):
                skipped.append(key)
                continue
            per = self._ppr.get(info_hash, 1)
            cleared = torrents.evict_pieces(info_hash, first, first + per)
            with self._lock:
                if not cleared:
                    held = self._ranges.get(key)
                    if held and torrents.is_pinned(info_hash) and key not in self._policy:
                        self._policy.on_insert(key, held, pinned=True)
                    continue
                try:
                    lengths = {i: torrents.piece_span(info_hash, i)[1] for i in cleared}
                except UnknownTorrent:
                    continue  # purged meanwhile: its removal already took its bytes off
                freed = sum(lengths.values())
                self._forget_range_bytes(key, freed)
                self._unpunched.setdefault(info_hash, {}).update(lengths)
                self._unpunched_bytes += freed
                self._evicted_objects["torrent"] += 1
                self._evicted_bytes["torrent"] += freed
        return skipped

    def _punch_pending(self) -> None:
        if self.torrents is None:
            return
        with self._lock:
            work = {ih: dict(pieces) for ih, pieces in self._unpunched.items() if pieces}
        for info_hash, pieces in work.items():
            busy = self._pieces_in_flight(info_hash)
            todo = [i for i in pieces if i not in busy]
            if not todo:
                continue
            try:
                self.torrents.punch(info_hash, todo)
            except StoreError as exc:
                # The bits are cleared either way; only the disk space is not given back.
                log.error("eviction: %s (blocks stay allocated until the torrent is purged)", exc)
            with self._lock:
                left = self._unpunched.get(info_hash, {})
                for i in todo:
                    length = left.pop(i, None)
                    if length is not None:
                        self._unpunched_bytes -= length
                if not left:
                    self._unpunched.pop(info_hash, None)

    def _pieces_in_flight(self, info_hash: bytes) -> set[int]:
        fn = self._in_flight
        if fn is None:
            return set()
        loop = self._loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            return fn(info_hash)
        result: concurrent.futures.Future[set[int]] = concurrent.futures.Future()

        def ask() -> None:
            try:
                result.set_result(fn(info_hash))
            except Exception as exc:  # pragma: no cover - a bug in the seeder
                result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(ask)
            return result.result(timeout=_LOOP_WAIT)
        except (RuntimeError, concurrent.futures.TimeoutError):
            # Loop gone or stalled: assume everything is in flight, punch at a later pass.
            return set(self._unpunched.get(info_hash, {}))

    @property
    def pending_punch(self) -> int:
        """Bytes of evicted torrent pieces whose blocks are not freed yet."""
        return self._unpunched_bytes

    # --- event-loop glue ------------------------------------------------------------------

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        in_flight: Callable[[bytes], set[int]] | None = None,
    ) -> None:
        """Run evictions in a thread of our own whenever usage passes the high watermark.

        ``in_flight(info_hash)`` (the seeder's) is called on ``loop``.
        """
        self._loop = loop
        self._in_flight = in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evictor")
        self._timer = loop.call_later(_RECHECK, self._tick)
        if self.over_high():
            self._start_run()

    def _maybe_kick(self) -> None:
        loop = self._loop
        if loop is None or self._kicked or not self.over_high():
            return
        self._kicked = True
        try:
            loop.call_soon_threadsafe(self._start_run)
        except RuntimeError:  # loop closed: shutting down
            self._kicked = False

    def _tick(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(_RECHECK, self._tick)
        if self.over_high() or self._unpunched_bytes:
            self._start_run()

    def _start_run(self) -> None:
        if self._task is not None or self._executor is None or self._loop is None:
            return
        self._task = self._loop.run_in_executor(self._executor, self.run)
        self._task.add_done_callback(self._run_done)

    def _run_done(self, task: asyncio.Future[int]) -> None:
        self._task = None
        self._kicked = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("eviction run failed: %s", exc, exc_info=exc)
            return
        freed = task.result()
        assert self._loop is not None
        if freed and self.over_high():
            self._start_run()  # filled faster than one run freed
        elif self._unpunched_bytes:
            self._loop.call_later(_RETRY_PUNCH, self._start_run)

    async def close(self) -> None:
        """Stop scheduling runs and wait for the one under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        executor, self._executor = self._executor, None  # no new runs from here on
        task = self._task
        if task is not None:
            # The run may still ask the loop what is in flight: keep the loop until it ends.
            await asyncio.wait([task])
        self._loop = None
        if executor is not None:
            executor.shutdown(wait=True)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _never(key: bytes) -> bool:
    return False


def _decayed(hits: int, last: float, now: float) -> float:
    idle = max(0.0, now - last)
    return float(hits * 0.5 ** (idle / HIT_HALF_LIFE))
