"""The evictor against the real stores: quota kept on disk, pins kept, better than LRU, and
torrent piece ranges evicted without ever serving zeros."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache.eviction import Quota, default_policy, simulate, zipf_trace
from cache.evictor import Evictor, disk_quota, make_policy
from cache.store import BlobRef, ObjectMeta, Store
from cache.torrents import TorrentStore
from swarm.peerwire import Piece, RejectRequest, Request, Unchoke, encode
from swarm.seeder import Seeder
from tests.unit.test_swarm_loopback import LOOPBACK, _local_peer, _wait_for
from tests.unit.test_torrent_store import Fake, make_torrent, read_payload, seeded_payload

BLOCK = 4096
MAP_SIZE = 1 << 28
PIN_PREFIX = b"http://pinned.example/"


def disk_bytes(root: Path) -> int:
    """What the files under ``root`` really occupy (allocated blocks, holes excluded)."""
    return sum(
        os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(root) for f in files
    )


def body_of(url: bytes, size: int) -> bytes:
    seed = hashlib.sha256(url).digest()
    return (seed * (size // len(seed) + 1))[:size]


def store_object(store: Store, url: bytes, size: int, *, pinned: bool = False) -> BlobRef:
    with store.begin_blob() as writer:
        writer.write(body_of(url, size))
        ref = writer.commit(fsync=False)
    now = time.time()
    meta = ObjectMeta(
        url=url,
        status=200,
        reason=b"OK",
        headers=(),
        request_time=now,
        response_time=now,
        blob=ref,
        stored_at=now,
        pinned=pinned,
    )
    store.put(url, meta)
    return ref


def url_of(obj: int, pinned_ids: dict[int, str]) -> bytes:
    kind = pinned_ids.get(obj)
    if kind == "rule":
        return PIN_PREFIX + b"%d" % obj
    return b"http://origin.example/%d" % obj


@dataclass
class Replay:
    bytes_requested: int = 0
    bytes_hit: int = 0
    runs: int = 0
    max_disk: int = 0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested


def replay(
    directory: Path,
    trace: list[tuple[int, int]],
    quota: Quota,
    *,
    policy: str,
    admission: bool,
    pinned_ids: dict[int, str],
) -> Replay:
    """Serve ``trace`` the way the handler does (lookup, touch on a hit; admit, write, put on a
    miss), running the evictor whenever it asks, and measure the blob directory's disk use."""
    out = Replay()
    with Store(directory, map_size=MAP_SIZE) as store:
        evictor = Evictor(
            store,
            quota,
            policy=policy,
            admission=admission,
            is_pinned=lambda url: url.startswith(PIN_PREFIX),
            block_size=BLOCK,
        )
        evictor.install()
        evictor.rebuild()
        blobs = directory / "blobs"
        for n, (obj, size) in enumerate(trace):
            url = url_of(obj, pinned_ids)
            out.bytes_requested += size
            meta = store.get(url)
            if meta is not None:
                assert meta.blob.size == size
                out.bytes_hit += size
                store.touch(url, time.time())
                continue
            pinned = pinned_ids.get(obj) == "meta"
            if not pinned and not evictor.admit(url, size, url):
                continue
            store_object(store, url, size, pinned=pinned)
            if evictor.over_high():
                evictor.run()
                out.runs += 1
                used = disk_bytes(blobs)
                out.max_disk = max(out.max_disk, used)
                assert used <= quota.low_bytes + BLOCK, "a run must end at the low watermark"
            if n % 250 == 0:
                out.max_disk = max(out.max_disk, disk_bytes(blobs))
        out.max_disk = max(out.max_disk, disk_bytes(blobs))
        assert evictor.http_bytes == disk_bytes(blobs), "accounting drifted from the disk"
        for obj, kind in pinned_ids.items():
            url = url_of(obj, pinned_ids)
            meta = store.get(url)
            assert meta is not None, f"pinned ({kind}) {url!r} was evicted"
            fd = store.open_blob(meta.blob)
            try:
                assert os.pread(fd, meta.blob.size + 1, 0) == body_of(url, meta.blob.size)
            finally:
                os.close(fd)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_zipf_workload_stays_under_quota_keeps_pins_and_beats_lru(
    tmp_path: Path, seed: int
) -> None:
    small = zipf_trace(500, 5000, 0.9, "lognormal", seed, median_size=16 << 10)
    catalogue = sum(dict(small).values())
    limit = int(catalogue * 0.08)
    # Same popularity and sizes, now with one-off giants of 20-40 % of the quota.
    trace = zipf_trace(
        500,
        5000,
        0.9,
        "lognormal",
        seed,
        median_size=16 << 10,
        giant_rate=0.004,
        giant_size=limit // 5,
    )
    quota = Quota(limit, high=0.95, low=0.85)
    # Two cold objects pinned by flag, two by a URL rule; each is requested at least once.
    seen: dict[int, int] = {}
    for obj, _ in trace:
        seen[obj] = seen.get(obj, 0) + 1
    cold = [obj for obj, n in seen.items() if n == 1 and obj < 10**9][:4]
    assert len(cold) == 4
    pinned_ids = {cold[0]: "meta", cold[1]: "meta", cold[2]: "rule", cold[3]: "rule"}

    ours = replay(
        tmp_path / "ours", trace, quota, policy="lfu-da", admission=True, pinned_ids=pinned_ids
    )
    lru = replay(
        tmp_path / "lru", trace, quota, policy="lru", admission=False, pinned_ids=pinned_ids
    )

    assert ours.runs > 0 and lru.runs > 0, "the workload must overflow the quota"
    assert ours.max_disk <= quota.limit
    assert lru.max_disk <= quota.limit
    assert ours.byte_hit_ratio > 1.1 * lru.byte_hit_ratio, (ours, lru)
    # The wiring loses nothing: hits, sizes and pins reach the policy as in the simulator
    # (cutting the hit notifications costs about 10 % here).
    simulated = simulate(default_policy(quota.low_bytes), trace, limit, high=0.95, low=0.85)
    assert abs(ours.byte_hit_ratio - simulated.byte_hit_ratio) < 0.05 * simulated.byte_hit_ratio


def test_restart_rebuilds_usage_and_frequencies(tmp_path: Path) -> None:
    """After a restart a popular object outlives a cold one: hit counts come from the index."""
    quota = Quota(40 * BLOCK, high=0.9, low=0.5)
    with Store(tmp_path, map_size=MAP_SIZE) as store:
        for i in range(8):
            store_object(store, b"http://o/%d" % i, 3 * BLOCK)
        for _ in range(5):
            store.touch(b"http://o/7", time.time())
    with Store(tmp_path, map_size=MAP_SIZE) as store:
        evictor = Evictor(store, quota, admission=False, block_size=BLOCK)
        evictor.install()
        evictor.rebuild()
        assert evictor.http_bytes == disk_bytes(tmp_path / "blobs") == 8 * 3 * BLOCK
        for i in range(8, 14):
            store_object(store, b"http://o/%d" % i, 3 * BLOCK)
            if evictor.over_high():
                evictor.run()
        assert store.get(b"http://o/7") is not None
        assert store.get(b"http://o/0") is None
        assert evictor.http_bytes == disk_bytes(tmp_path / "blobs") <= quota.limit


def test_shared_blobs_count_once_and_vary_hits_keep_the_primary(tmp_path: Path) -> None:
    quota = Quota(100 * BLOCK, high=0.9, low=0.5)
    with Store(tmp_path, map_size=MAP_SIZE) as store:
        evictor = Evictor(store, quota, admission=False, block_size=BLOCK)
        evictor.install()
        ref = store_object(store, b"http://a/x", 10 * BLOCK)
        meta = store.get(b"http://a/x")
        assert meta is not None
        variant = b"http://a/x\x001.0\x00gzip"
        store.put(variant, meta)
        assert evictor.http_bytes == 10 * BLOCK
        for _ in range(3):
            store.touch(variant, time.time())
        for i in range(12):
            store_object(store, b"http://b/%d" % i, 10 * BLOCK)
            if evictor.over_high():
                evictor.run()
        assert store.get(b"http://a/x") is not None, "the primary of a hot variant was evicted"
        assert store.get(variant) is not None
        assert os.path.exists(store.blob_path(ref))
        assert evictor.http_bytes == disk_bytes(tmp_path / "blobs")


def test_an_unknown_policy_name_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        make_policy("mru", 1000, admission=False)


def test_admission_refuses_giants_and_passing_the_limit(tmp_path: Path) -> None:
    with Store(tmp_path, map_size=MAP_SIZE) as store:
        evictor = Evictor(store, Quota(100 * BLOCK), admission=False, block_size=BLOCK)
        evictor.install()
        assert not evictor.admit(b"http://giant", 60 * BLOCK)  # over half the quota
        store_object(store, b"http://a", 45 * BLOCK)
        store_object(store, b"http://b", 45 * BLOCK)
        assert not evictor.admit(b"http://c", 20 * BLOCK)  # would pass the limit
        assert evictor.admit(b"http://c", 10 * BLOCK)


def test_disk_quota_derives_from_the_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    usable = min(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
    assert abs(disk_quota(str(tmp_path), 0) - int(usable * 0.9)) < 64 << 20
    # What the cache already holds counts as its own, never past the filesystem's size.
    assert disk_quota(str(tmp_path), 0, held=10**30) == int(st.f_blocks * st.f_frsize * 0.9)
    assert disk_quota(str(tmp_path), 12345) == 12345


# --- torrents ---------------------------------------------------------------------------------

PIECE = 16 << 10
PIECES = 48
RANGE = 4 * PIECE  # 12 ranges of 4 pieces


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Store, TorrentStore, Path]]:
    store = Store(tmp_path, map_size=MAP_SIZE)
    torrents = TorrentStore(store)
    try:
        yield store, torrents, tmp_path
    finally:
        torrents.close()
        store.close()


def fill(torrents: TorrentStore, fake: Fake, *, pinned: bool = False) -> None:
    torrents.add(fake.info_hash, pinned=pinned, **fake.kwargs())
    for i in range(fake.num_pieces):
        assert torrents.verify_and_write(fake.info_hash, i, fake.piece(i))
    torrents.commit()


def evictor_for(
    store: Store,
    torrents: TorrentStore,
    quota: Quota,
    downloading: Callable[[bytes], bool] | None = None,
) -> Evictor:
    evictor = Evictor(
        store,
        quota,
        torrents=torrents,
        admission=False,
        downloading=downloading,
        range_bytes=RANGE,
        block_size=BLOCK,
    )
    evictor.install()
    evictor.rebuild()
    return evictor


def test_torrent_ranges_are_evicted_coldest_first_and_never_read_as_zeros(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    store, torrents, directory = box
    hot = make_torrent(seeded_payload(1, PIECES * PIECE), PIECE, "hot.bin")
    pinned = make_torrent(seeded_payload(2, 8 * PIECE), PIECE, "pinned.bin")
    evictor = evictor_for(store, torrents, Quota(48 * PIECE, high=0.9, low=0.5))
    fill(torrents, pinned, pinned=True)
    fill(torrents, hot)
    # Local peers read ranges 1 and 3 (pieces 4-7, 12-15) three times over.
    for _ in range(3):
        for i in (*range(4, 8), *range(12, 16)):
            evictor.piece_served(hot.info_hash, i, PIECE)
    payload = directory / "torrents" / (hot.info_hash.hex() + ".payload")
    before = payload.stat().st_blocks * 512
    assert evictor.torrent_bytes == (PIECES + 8) * PIECE
    assert evictor.over_high()

    evictor.run()

    kept = [i for i in range(PIECES) if torrents.has(hot.info_hash, i)]
    evicted = [i for i in range(PIECES) if i not in kept]
    assert set(range(4, 8)) | set(range(12, 16)) <= set(kept), "a hot range was evicted"
    assert evicted and evictor.used_bytes <= 24 * PIECE
    assert torrents.missing(hot.info_hash) == evicted
    for i in kept:
        assert hashlib.sha1(read_payload(torrents, hot, i)).digest() == hot.hashes[i]
    # The disk really got the space back (holes), and accounting matches it.
    after = payload.stat().st_blocks * 512
    assert before - after == len(evicted) * PIECE
    assert evictor.torrent_bytes == disk_bytes(directory / "torrents")
    assert torrents.progress(pinned.info_hash) == 1.0, "a pinned torrent lost pieces"

    # Durable: a restart still sees the evicted pieces as missing.
    torrents.close()
    reopened = TorrentStore(store)
    try:
        assert reopened.missing(hot.info_hash) == evicted
        for i in kept:
            assert hashlib.sha1(read_payload(reopened, hot, i)).digest() == hot.hashes[i]
    finally:
        reopened.close()
    # (the fixture closes the first one again: a no-op)


def test_pieces_in_flight_keep_their_blocks_until_sent(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    store, torrents, directory = box
    fake = make_torrent(seeded_payload(3, 16 * PIECE), PIECE)
    evictor = evictor_for(store, torrents, Quota(16 * PIECE, high=0.9, low=0.2))
    fill(torrents, fake)
    busy = {0, 1, 2, 3}
    evictor._in_flight = lambda ih: set(busy)  # the seeder still has blocks of 0-3 queued
    evictor.run()
    assert not any(torrents.has(fake.info_hash, i) for i in busy)
    # Unserved from now on, but their bytes are intact until the queued sends are done.
    for i in busy:
        assert read_payload(torrents, fake, i) == fake.piece(i)
    assert evictor.pending_punch > 0
    busy.clear()
    evictor.run()
    assert evictor.pending_punch == 0
    assert evictor.torrent_bytes == disk_bytes(directory / "torrents")


def test_a_piece_written_back_before_the_punch_is_kept(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    _, torrents, _ = box
    fake = make_torrent(seeded_payload(4, 8 * PIECE), PIECE)
    fill(torrents, fake)
    assert torrents.evict_pieces(fake.info_hash, 0, 4) == [0, 1, 2, 3]
    assert torrents.verify_and_write(fake.info_hash, 2, fake.piece(2))  # a download refetched it
    torrents.punch(fake.info_hash, [0, 1, 2, 3])
    assert torrents.has(fake.info_hash, 2)
    assert read_payload(torrents, fake, 2) == fake.piece(2)
    assert read_payload(torrents, fake, 1) == bytes(PIECE)


def test_a_pinned_torrent_is_not_evicted_even_if_pinned_late(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    store, torrents, _ = box
    fake = make_torrent(seeded_payload(5, 16 * PIECE), PIECE)
    evictor = evictor_for(store, torrents, Quota(16 * PIECE, high=0.9, low=0.2))
    fill(torrents, fake)
    torrents.pin(fake.info_hash)
    evictor.run()
    assert torrents.progress(fake.info_hash) == 1.0
    torrents.unpin(fake.info_hash)
    evictor.run()
    assert torrents.progress(fake.info_hash) <= 0.25


def test_a_torrent_under_download_is_evicted_only_once_it_ends(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    store, torrents, _ = box
    fake = make_torrent(seeded_payload(7, 16 * PIECE), PIECE)
    downloading = {True}
    quota = Quota(16 * PIECE, high=0.9, low=0.2)
    evictor = evictor_for(store, torrents, quota, lambda ih: True in downloading)
    fill(torrents, fake)
    evictor.run()
    assert torrents.progress(fake.info_hash) == 1.0
    downloading.clear()
    evictor.run()
    assert torrents.progress(fake.info_hash) <= 0.25


async def test_the_seeder_rejects_an_evicted_piece_and_serves_kept_ones(
    box: tuple[Store, TorrentStore, Path],
) -> None:
    store, torrents, _ = box
    fake = make_torrent(seeded_payload(6, 16 * PIECE), PIECE)
    fill(torrents, fake)
    evictor = evictor_for(store, torrents, Quota(16 * PIECE, high=0.9, low=0.5))
    seeder = Seeder(torrents, peer_id=b"-SC0100-evictevictev", subscribers=LOOPBACK)
    seeder.on_serve = evictor.piece_served
    await seeder.start("127.0.0.1", 0)
    evictor.attach(asyncio.get_running_loop(), in_flight=seeder.in_flight)
    peer, seen = await _local_peer(seeder.address, fake.info_hash)
    try:
        await _wait_for(seen, Unchoke)
        # Read the back half twice: the front half is the colder one.
        for _ in range(2):
            for i in range(8, 16):
                peer.send(encode(Request(i, 0, PIECE)))
        async with asyncio.timeout(10):
            while sum(isinstance(e, Piece) for e in seen.events) < 16:
                seen.changed.clear()
                await seen.changed.wait()
        await asyncio.get_running_loop().run_in_executor(None, evictor.run)
        assert torrents.missing(fake.info_hash) == list(range(8))
        seen.events.clear()
        peer.send(encode(Request(3, 0, PIECE)))
        reject = await _wait_for(seen, RejectRequest)
        assert isinstance(reject, RejectRequest) and reject.index == 3
        peer.send(encode(Request(12, 0, PIECE)))
        block = await _wait_for(seen, Piece)
        assert isinstance(block, Piece) and bytes(block.block) == fake.piece(12)
        assert not any(isinstance(e, Piece) and e.index == 3 for e in seen.events)
    finally:
        peer.close()
        await evictor.close()
        await seeder.close()


def test_a_torrent_purged_in_the_middle_of_a_run_does_not_end_the_run(
    box: tuple[Store, TorrentStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator purges torrent A just as the evictor cleared a range of it: the run goes
    on with the next victims (torrent B) instead of failing."""
    store, torrents, _ = box
    a = make_torrent(seeded_payload(6, 16 * PIECE), PIECE)
    b = make_torrent(seeded_payload(7, 16 * PIECE), PIECE)
    evictor = evictor_for(store, torrents, Quota(24 * PIECE, high=0.9, low=0.2))
    fill(torrents, a)
    fill(torrents, b)
    evict_pieces = torrents.evict_pieces

    def evict_then_purge(info_hash: bytes, first: int, stop: int) -> list[int]:
        cleared = evict_pieces(info_hash, first, stop)
        if info_hash == a.info_hash and cleared:
            torrents.purge(a.info_hash)
        return cleared

    monkeypatch.setattr(torrents, "evict_pieces", evict_then_purge)
    evictor.run()
    assert torrents.progress(b.info_hash) < 1.0  # the run went on to torrent B
