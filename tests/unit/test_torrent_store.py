"""Tests for cache/torrents.py: payload files, verified pieces, durable bitfields, counters."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.store import Store, StoreError
from cache.torrents import TorrentInfo, TorrentMismatch, TorrentStore, UnknownTorrent

ROOT = Path(__file__).resolve().parents[2]
MAP_SIZE = 1 << 26


@dataclass(frozen=True)
class Fake:
    """A single-file v1 torrent with a real info dict, built from ``payload``."""

    info_hash: bytes
    info: bytes
    name: str
    payload: bytes
    piece_length: int
    hashes: tuple[bytes, ...]

    @property
    def num_pieces(self) -> int:
        return len(self.hashes)

    def piece(self, i: int) -> bytes:
        return self.payload[i * self.piece_length : (i + 1) * self.piece_length]

    def kwargs(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "name": self.name,
            "piece_length": self.piece_length,
            "total_length": len(self.payload),
            "piece_hashes": self.hashes,
        }


def make_torrent(payload: bytes, piece_length: int, name: str = "file.bin") -> Fake:
    hashes = tuple(
        hashlib.sha1(payload[i : i + piece_length]).digest()
        for i in range(0, len(payload), piece_length)
    )
    pieces = b"".join(hashes)
    raw_name = name.encode()
    info = b"d6:lengthi%de4:name%d:%s12:piece lengthi%de6:pieces%d:%se" % (
        len(payload),
        len(raw_name),
        raw_name,
        piece_length,
        len(pieces),
        pieces,
    )
    return Fake(hashlib.sha1(info).digest(), info, name, payload, piece_length, hashes)


def seeded_payload(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


# 10 pieces of 16 KiB, the last one 1000 bytes.
PL = 16 * 1024
TORRENT = make_torrent(seeded_payload(1, 9 * PL + 1000), PL)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@contextlib.contextmanager
def opened(directory: Path) -> Iterator[tuple[Store, TorrentStore]]:
    store = Store(directory, map_size=MAP_SIZE)
    try:
        torrents = TorrentStore(store)
        try:
            yield store, torrents
        finally:
            torrents.close()
    finally:
        store.close()


@pytest.fixture
def ts(directory: Path) -> Iterator[TorrentStore]:
    with opened(directory) as (_, torrents):
        yield torrents


def payload_path(directory: Path, fake: Fake) -> Path:
    return directory / "torrents" / (fake.info_hash.hex() + ".payload")


def read_payload(torrents: TorrentStore, fake: Fake, index: int) -> bytes:
    offset, length = torrents.piece_span(fake.info_hash, index)
    fd = torrents.open_payload(fake.info_hash)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def held(torrents: TorrentStore, fake: Fake) -> list[int]:
    return [i for i in range(fake.num_pieces) if torrents.has(fake.info_hash, i)]


def bits(indices: set[int] | list[int], n: int) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in indices:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def corrupt(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# --- add --------------------------------------------------------------------------------------


def test_add_creates_a_sparse_payload_file_and_a_record(ts: TorrentStore, directory: Path) -> None:
    info = ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert info == TorrentInfo(
        info_hash=TORRENT.info_hash,
        name="file.bin",
        piece_length=PL,
        total_length=len(TORRENT.payload),
        num_pieces=10,
        have_count=0,
        pinned=False,
        added_at=info.added_at,
        bytes_uploaded=0,
        bytes_downloaded=0,
        local_peers_served=0,
        info=TORRENT.info,
    )
    assert info.progress == 0.0 and not info.complete
    st_ = os.stat(payload_path(directory, TORRENT))
    assert st_.st_size == len(TORRENT.payload)
    assert st_.st_blocks * 512 < len(TORRENT.payload)  # sparse: nothing allocated yet
    assert ts.get(TORRENT.info_hash) == info
    assert ts.list() == [info]
    assert ts.bitfield(TORRENT.info_hash) == bytes(2)
    assert ts.missing(TORRENT.info_hash) == list(range(10))


def test_add_is_idempotent_and_can_pin(ts: TorrentStore) -> None:
    first = ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    again = ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert again.added_at == first.added_at
    assert again.have_count == 1  # not reset
    pinned = ts.add(TORRENT.info_hash, **TORRENT.kwargs(), pinned=True)
    assert pinned.pinned
    assert len(ts.list()) == 1


def test_add_with_a_different_name_for_a_stored_torrent_is_refused(ts: TorrentStore) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    kwargs = TORRENT.kwargs() | {"name": "other.bin"}
    with pytest.raises(TorrentMismatch, match="different info dict, name or geometry"):
        ts.add(TORRENT.info_hash, **kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"info": TORRENT.info + b" "}, "does not hash to info hash"),
        ({"piece_hashes": (b"\0" * 20,) * 10}, "not the info dict's 'pieces' string"),
        ({"piece_hashes": TORRENT.hashes[:9]}, "9 piece hashes for 10 pieces"),
        ({"piece_hashes": (*TORRENT.hashes[:9], b"short")}, "piece hash 9 is 5 bytes"),
        ({"total_length": 8 * PL}, "10 piece hashes for 8 pieces"),
        ({"piece_length": 0}, "piece length must be positive"),
        ({"total_length": 0}, "total length must be positive"),
    ],
)
def test_add_checks_the_facts_against_each_other(
    ts: TorrentStore, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(TorrentMismatch, match=message):
        ts.add(TORRENT.info_hash, **(TORRENT.kwargs() | change))
    assert ts.list() == []


def test_add_checks_the_piece_length_against_the_info_dict(ts: TorrentStore) -> None:
    # Same number of pieces with piece length PL + 1, so only the info dict can tell.
    kwargs = TORRENT.kwargs() | {"piece_length": PL + 1}
    with pytest.raises(TorrentMismatch, match=f"does not have piece length {PL + 1}"):
        ts.add(TORRENT.info_hash, **kwargs)


def test_add_rejects_a_bad_info_hash_length(ts: TorrentStore) -> None:
    with pytest.raises(TorrentMismatch, match="must be 20 or 32 bytes, got 19"):
        ts.add(TORRENT.info_hash[:19], **TORRENT.kwargs())


def test_add_accepts_v2_style_info_hashes(ts: TorrentStore) -> None:
    full = hashlib.sha256(TORRENT.info).digest()
    assert ts.add(full, **TORRENT.kwargs()).num_pieces == 10
    assert ts.add(full[:20], **TORRENT.kwargs()).num_pieces == 10  # truncated v2
    assert len(ts.list()) == 2


def test_v2_only_hash_kind_is_not_implemented(ts: TorrentStore) -> None:
    with pytest.raises(NotImplementedError, match="v2-only torrents"):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs(), hash_kind="merkle-sha256")
    assert ts.list() == []


def test_unknown_torrent(ts: TorrentStore) -> None:
    unknown = b"\x01" * 20
    assert ts.get(unknown) is None
    assert not ts.has(unknown, 0)
    for call in (ts.bitfield, ts.missing, ts.progress, ts.open_payload, ts.pin, ts.verify_all):
        with pytest.raises(UnknownTorrent, match=unknown.hex()):
            call(unknown)
    with pytest.raises(UnknownTorrent):
        ts.verify_and_write(unknown, 0, b"x")
    with pytest.raises(LookupError):  # callers may catch the builtin
        ts.piece_span(unknown, 0)
    ts.add_traffic(unknown, uploaded=5)  # dropped, not an error: a purge may race a transfer
    ts.note_local_peer(unknown, "10.0.0.1")
    assert not ts.purge(unknown)


# --- pieces -----------------------------------------------------------------------------------


def test_good_piece_is_visible_at_once(ts: TorrentStore) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert ts.verify_and_write(TORRENT.info_hash, 3, TORRENT.piece(3))
    assert ts.has(TORRENT.info_hash, 3)
    assert ts.bitfield(TORRENT.info_hash) == bits([3], 10)
    assert read_payload(ts, TORRENT, 3) == TORRENT.piece(3)
    assert ts.progress(TORRENT.info_hash) == 0.1
    assert ts.uncommitted == 1
    assert ts.commit() == 1
    assert ts.uncommitted == 0
    assert ts.commit() == 0


def test_bad_piece_is_never_stored(ts: TorrentStore, directory: Path) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    piece = TORRENT.piece(2)
    assert not ts.verify_and_write(TORRENT.info_hash, 2, corrupt(piece, 100))
    assert not ts.verify_and_write(TORRENT.info_hash, 2, piece[:-1])  # short
    assert not ts.verify_and_write(TORRENT.info_hash, 2, piece + b"\0")  # long
    assert not ts.verify_and_write(TORRENT.info_hash, 2, TORRENT.piece(3))  # another piece
    assert not ts.has(TORRENT.info_hash, 2)
    assert ts.bitfield(TORRENT.info_hash) == bytes(2)
    assert ts.uncommitted == 0
    ts.commit()
    # Not a byte of the bad data reached the file: it is still all holes.
    path = payload_path(directory, TORRENT)
    assert path.read_bytes() == bytes(len(TORRENT.payload))
    assert os.stat(path).st_blocks == 0


def test_last_piece_is_shorter(ts: TorrentStore) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert ts.piece_span(TORRENT.info_hash, 0) == (0, PL)
    assert ts.piece_span(TORRENT.info_hash, 9) == (9 * PL, 1000)
    last = TORRENT.piece(9)
    assert len(last) == 1000
    assert not ts.verify_and_write(TORRENT.info_hash, 9, last + bytes(PL - 1000))  # padded
    assert ts.verify_and_write(TORRENT.info_hash, 9, memoryview(last))
    assert read_payload(ts, TORRENT, 9) == last
    assert ts.bitfield(TORRENT.info_hash) == bits([9], 10)


@pytest.mark.parametrize("index", [-1, 10, 1 << 40])
def test_index_out_of_range_is_an_error(ts: TorrentStore, index: int) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    with pytest.raises(ValueError, match=f"piece index {index} out of range"):
        ts.verify_and_write(TORRENT.info_hash, index, TORRENT.piece(0))
    with pytest.raises(ValueError, match="has 10 pieces"):
        ts.piece_span(TORRENT.info_hash, index)
    assert not ts.has(TORRENT.info_hash, index)


def test_a_held_piece_is_not_rewritten(ts: TorrentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    writes: list[int] = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, d, o: writes.append(o) or real_pwrite(fd, d, o))
    assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    assert writes == []
    assert ts.get(TORRENT.info_hash) is not None
    assert ts.uncommitted == 1


def test_memoryview_of_other_formats_is_accepted(ts: TorrentStore) -> None:
    fake = make_torrent(seeded_payload(7, 64), 32)
    ts.add(fake.info_hash, **fake.kwargs())
    view = memoryview(fake.piece(1)).cast("I")  # 8 items of 4 bytes
    assert ts.verify_and_write(fake.info_hash, 1, view)
    assert read_payload(ts, fake, 1) == fake.piece(1)


# --- durability -------------------------------------------------------------------------------


def test_restart_resumes_without_refetching(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        for i in (0, 4, 9):
            assert ts.verify_and_write(TORRENT.info_hash, i, TORRENT.piece(i))
        ts.commit()
    with opened(directory) as (_, ts):
        assert ts.bitfield(TORRENT.info_hash) == bits([0, 4, 9], 10)
        assert ts.missing(TORRENT.info_hash) == [1, 2, 3, 5, 6, 7, 8]
        for i in (0, 4, 9):
            assert read_payload(ts, TORRENT, i) == TORRENT.piece(i)
        for i in ts.missing(TORRENT.info_hash):
            assert ts.verify_and_write(TORRENT.info_hash, i, TORRENT.piece(i))
    with opened(directory) as (_, ts):
        info = ts.get(TORRENT.info_hash)
        assert info is not None and info.complete and info.progress == 1.0
        assert payload_path(directory, TORRENT).read_bytes() == TORRENT.payload
        assert ts.verify_all(TORRENT.info_hash) == 0


def test_close_commits(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        assert ts.verify_and_write(TORRENT.info_hash, 5, TORRENT.piece(5))
        assert ts.uncommitted == 1
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == [5]


def test_commit_syncs_the_payload_before_recording_bits(
    ts: TorrentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    assert ts.verify_and_write(TORRENT.info_hash, 1, TORRENT.piece(1))
    events: list[str] = []
    real_sync, real_txn = os.fdatasync, Store.transaction

    def fdatasync(fd: int) -> None:
        events.append("fdatasync")
        real_sync(fd)

    def transaction(self: Store, **kw: bool) -> Any:
        events.append("txn write" if kw.get("write") else "txn read")
        return real_txn(self, **kw)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(Store, "transaction", transaction)
    assert ts.commit() == 1
    assert events == ["fdatasync", "txn write"]


def test_a_failed_sync_unpublishes_the_pieces(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
        ts.commit()
        assert ts.verify_and_write(TORRENT.info_hash, 1, TORRENT.piece(1))

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        with monkeypatch.context() as m:
            m.setattr(os, "fdatasync", broken)
            with pytest.raises(StoreError, match=r"cannot sync payload of .*Input/output error"):
                ts.commit()
        # The bytes of piece 1 are not known to be on disk: no longer served.
        assert held(ts, TORRENT) == [0]
        assert ts.uncommitted == 0
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == [0]


CHILD = textwrap.dedent(
    """
    import sys, time
    from cache.store import Store
    from cache.torrents import TorrentStore
    from tests.unit.test_torrent_store import TORRENT as T, MAP_SIZE
    store = Store(sys.argv[1], map_size=MAP_SIZE)
    ts = TorrentStore(store)
    ts.add(T.info_hash, **T.kwargs())
    for i in range(4):
        assert ts.verify_and_write(T.info_hash, i, T.piece(i))
    ts.add_traffic(T.info_hash, downloaded=4 * len(T.piece(0)))
    ts.note_local_peer(T.info_hash, "10.0.0.1")
    ts.commit()
    for i in range(4, 8):
        assert ts.verify_and_write(T.info_hash, i, T.piece(i))
    ts.add_traffic(T.info_hash, downloaded=999, uploaded=777)
    ts.note_local_peer(T.info_hash, "10.0.0.2")
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_kill9_loses_only_uncommitted_pieces(directory: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "child died before it was ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # The uncommitted pieces' bytes did reach the file (page cache), but no bit says so.
    raw = payload_path(directory, TORRENT).read_bytes()
    assert raw[4 * PL : 8 * PL] == TORRENT.payload[4 * PL : 8 * PL]
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == [0, 1, 2, 3]
        assert ts.missing(TORRENT.info_hash) == [4, 5, 6, 7, 8, 9]
        for i in range(4):
            assert read_payload(ts, TORRENT, i) == TORRENT.piece(i)
        info = ts.get(TORRENT.info_hash)
        assert info is not None
        assert (info.bytes_downloaded, info.bytes_uploaded) == (4 * PL, 0)
        assert info.local_peers_served == 1
        # The lost pieces are simply fetched again.
        assert ts.verify_and_write(TORRENT.info_hash, 4, TORRENT.piece(4))
        assert ts.has(TORRENT.info_hash, 4)


# --- integrity on load ------------------------------------------------------------------------


def test_truncated_payload_clears_the_bits_at_open(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        for i in range(10):
            assert ts.verify_and_write(TORRENT.info_hash, i, TORRENT.piece(i))
    os.truncate(payload_path(directory, TORRENT), 5 * PL)
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == []
        assert os.path.getsize(payload_path(directory, TORRENT)) == len(TORRENT.payload)
        assert ts.verify_and_write(TORRENT.info_hash, 7, TORRENT.piece(7))
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == [7]  # the clear was persisted, the new piece too


def test_grown_payload_clears_the_bits_at_open(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    with open(payload_path(directory, TORRENT), "ab") as f:
        f.write(b"junk")
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == []
        assert os.path.getsize(payload_path(directory, TORRENT)) == len(TORRENT.payload)


def test_missing_payload_is_recreated_empty(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    payload_path(directory, TORRENT).unlink()
    with opened(directory) as (_, ts):
        assert held(ts, TORRENT) == []
        assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
        assert read_payload(ts, TORRENT, 0) == TORRENT.piece(0)


def test_orphan_payload_files_are_removed_at_open(directory: Path) -> None:
    with opened(directory):
        pass
    orphan = directory / "torrents" / ("ab" * 20 + ".payload")
    orphan.write_bytes(b"left by a crash in add()")
    unrelated = directory / "torrents" / "README"
    unrelated.write_bytes(b"not ours to judge")
    with opened(directory):
        assert not orphan.exists()
        assert unrelated.exists()


def test_verify_all_catches_a_corrupted_byte(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        for i in range(10):
            assert ts.verify_and_write(TORRENT.info_hash, i, TORRENT.piece(i))
        ts.commit()
        with open(payload_path(directory, TORRENT), "r+b") as f:
            f.seek(2 * PL + 123)
            byte = f.read(1)
            f.seek(2 * PL + 123)
            f.write(bytes([byte[0] ^ 0xFF]))
            f.seek(9 * PL + 999)  # last byte of the short last piece
            f.write(b"\xff" if TORRENT.payload[-1] != 0xFF else b"\x00")
        assert ts.verify_all(TORRENT.info_hash) == 2
        assert ts.missing(TORRENT.info_hash) == [2, 9]
        assert ts.verify_all(TORRENT.info_hash) == 0
    with opened(directory) as (_, ts):
        assert ts.missing(TORRENT.info_hash) == [2, 9]  # the clear is durable
        assert ts.verify_and_write(TORRENT.info_hash, 2, TORRENT.piece(2))  # healed by refetch
        assert read_payload(ts, TORRENT, 2) == TORRENT.piece(2)


def test_damaged_state_records_are_refused_with_a_message(directory: Path) -> None:
    with opened(directory) as (store, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    cases = [
        (b"\x01", "is truncated"),
        (b"\x09" + bytes(23) + bytes(2), "unknown version 9"),
        (b"\x01\x80" + bytes(2) + (10).to_bytes(4, "little") + bytes(16) + bytes(2), "flags 0x80"),
        (b"\x01\x00" + bytes(2) + (11).to_bytes(4, "little") + bytes(16) + bytes(2), "11 pieces"),
        (b"\x01\x00" + bytes(2) + (10).to_bytes(4, "little") + bytes(16) + bytes(3), "3 bytes"),
        (b"\x01\x00" + bytes(2) + (10).to_bytes(4, "little") + bytes(16) + b"\0\x01", "past the"),
    ]
    for raw, message in cases:
        store = Store(directory, map_size=MAP_SIZE)
        try:
            states = store.open_table(b"torrent_state")
            with store.transaction(write=True) as txn:
                txn.put(TORRENT.info_hash, raw, db=states)
            with pytest.raises(StoreError, match=message):
                TorrentStore(store)
        finally:
            store.close()


def test_one_torrent_store_per_store(directory: Path) -> None:
    with (
        opened(directory) as (store, _),
        pytest.raises(StoreError, match="already has an open TorrentStore"),
    ):
        TorrentStore(store)


def test_closed_torrent_store_refuses(directory: Path) -> None:
    with opened(directory) as (store, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        ts.close()
        ts.close()  # idempotent
        with pytest.raises(StoreError, match="closed"):
            ts.bitfield(TORRENT.info_hash)
        with pytest.raises(StoreError, match="closed"):
            ts.commit()
        assert not ts.has(TORRENT.info_hash, 0)
        TorrentStore(store).close()  # the store can have a new one


# --- operator actions -------------------------------------------------------------------------


def test_purge(directory: Path) -> None:
    other = make_torrent(seeded_payload(2, 3 * PL), PL, "other")
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        ts.add(other.info_hash, **other.kwargs())
        assert ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
        ts.note_local_peer(TORRENT.info_hash, "10.0.0.1")
        ts.commit()
        reader = ts.open_payload(TORRENT.info_hash)
        try:
            assert ts.purge(TORRENT.info_hash)
            # A sendfile in progress keeps reading the unlinked file.
            assert os.pread(reader, PL, 0) == TORRENT.piece(0)
        finally:
            os.close(reader)
        assert not payload_path(directory, TORRENT).exists()
        assert ts.get(TORRENT.info_hash) is None
        assert not ts.has(TORRENT.info_hash, 0)
        assert [t.info_hash for t in ts.list()] == [other.info_hash]
        assert not ts.purge(TORRENT.info_hash)
        with pytest.raises(UnknownTorrent):
            ts.verify_and_write(TORRENT.info_hash, 1, TORRENT.piece(1))
    with opened(directory) as (_, ts):
        assert ts.get(TORRENT.info_hash) is None  # not resurrected
        fresh = ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        assert fresh.have_count == 0 and fresh.local_peers_served == 0


def test_purge_during_a_write_never_touches_another_file(
    ts: TorrentStore, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    real_sha1 = hashlib.sha1

    def sha1_then_purge(data: Any = b"") -> Any:
        h = real_sha1(data)
        monkeypatch.setattr(hashlib, "sha1", real_sha1)
        assert ts.purge(TORRENT.info_hash)  # between the hash and the pwrite
        return h

    monkeypatch.setattr(hashlib, "sha1", sha1_then_purge)
    with pytest.raises(UnknownTorrent, match="purged"):
        ts.verify_and_write(TORRENT.info_hash, 0, TORRENT.piece(0))
    assert not payload_path(directory, TORRENT).exists()


def test_pin_and_unpin_persist(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        ts.pin(TORRENT.info_hash)
        info = ts.get(TORRENT.info_hash)
        assert info is not None and info.pinned
    with opened(directory) as (_, ts):
        info = ts.get(TORRENT.info_hash)
        assert info is not None and info.pinned
        ts.unpin(TORRENT.info_hash)
    with opened(directory) as (_, ts):
        info = ts.get(TORRENT.info_hash)
        assert info is not None and not info.pinned


def test_stats_are_buffered_then_flushed(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        writes = 0
        real_txn = Store.transaction

        def counting(self: Store, **kw: bool) -> Any:
            nonlocal writes
            writes += bool(kw.get("write"))
            return real_txn(self, **kw)

        monkeypatch.setattr(Store, "transaction", counting)
        for _ in range(1000):
            ts.add_traffic(TORRENT.info_hash, uploaded=16384)
            ts.note_local_peer(TORRENT.info_hash, "10.0.0.1")
        ts.add_traffic(TORRENT.info_hash, downloaded=5)
        ts.note_local_peer(TORRENT.info_hash, b"-qB4500-abcdefghijkl")
        assert writes == 0  # the hot path wrote nothing
        info = ts.get(TORRENT.info_hash)
        assert info is not None
        assert (info.bytes_uploaded, info.bytes_downloaded) == (1000 * 16384, 5)
        assert info.local_peers_served == 2
        ts.commit()
        assert writes == 1  # one transaction for everything
        info = ts.get(TORRENT.info_hash)
        assert info is not None
        assert (info.bytes_uploaded, info.local_peers_served) == (1000 * 16384, 2)
        monkeypatch.setattr(Store, "transaction", real_txn)
    with opened(directory) as (_, ts):
        ts.note_local_peer(TORRENT.info_hash, "10.0.0.1")  # already counted last session
        ts.note_local_peer(TORRENT.info_hash, "10.0.0.3")
        ts.add_traffic(TORRENT.info_hash, uploaded=1)
        info = ts.get(TORRENT.info_hash)
        assert info is not None
        assert info.local_peers_served == 3  # exact before the commit too
        assert (info.bytes_uploaded, info.bytes_downloaded) == (1000 * 16384 + 1, 5)
    with opened(directory) as (_, ts):
        [info] = ts.list()
        assert info.local_peers_served == 3
        assert info.bytes_uploaded == 1000 * 16384 + 1


def test_peer_identities_are_not_stored_in_clear(directory: Path) -> None:
    with opened(directory) as (_, ts):
        ts.add(TORRENT.info_hash, **TORRENT.kwargs())
        ts.note_local_peer(TORRENT.info_hash, "192.0.2.55")
    index = b"".join(p.read_bytes() for p in (directory / "index").iterdir())
    assert b"192.0.2.55" not in index


def test_negative_traffic_is_a_bug(ts: TorrentStore) -> None:
    ts.add(TORRENT.info_hash, **TORRENT.kwargs())
    with pytest.raises(ValueError, match="negative traffic"):
        ts.add_traffic(TORRENT.info_hash, uploaded=-1)


def test_list_is_oldest_first(ts: TorrentStore) -> None:
    fakes = [make_torrent(seeded_payload(s, 100), 64, f"t{s}") for s in range(5)]
    for fake in fakes:
        ts.add(fake.info_hash, **fake.kwargs())
    assert [t.name for t in ts.list()] == [f"t{s}" for s in range(5)]
    assert [t.total_length for t in ts.list()] == [100] * 5


# --- threads ----------------------------------------------------------------------------------


def test_threads_write_different_pieces(directory: Path) -> None:
    big = make_torrent(seeded_payload(3, 64 * PL + 7), PL)
    errors: list[BaseException] = []
    stop = threading.Event()
    with opened(directory) as (_, ts):
        ts.add(big.info_hash, **big.kwargs())

        def writer(k: int) -> None:
            try:
                for i in range(k, big.num_pieces, 4):
                    assert not ts.verify_and_write(big.info_hash, i, corrupt(big.piece(i)))
                    assert ts.verify_and_write(big.info_hash, i, big.piece(i))
                    ts.add_traffic(big.info_hash, downloaded=len(big.piece(i)))
                    ts.note_local_peer(big.info_hash, f"peer{i % 7}")
            except BaseException as e:
                errors.append(e)

        def committer() -> None:
            try:
                while not stop.is_set():
                    ts.commit()
                    for t in ts.list():
                        assert 0 <= t.have_count <= t.num_pieces
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        threads.append(threading.Thread(target=committer))
        for t in threads:
            t.start()
        for t in threads[:4]:
            t.join()
        stop.set()
        threads[4].join()
        assert errors == []
        info = ts.get(big.info_hash)
        assert info is not None and info.complete
        assert info.bytes_downloaded == len(big.payload)
        assert info.local_peers_served == 7
    with opened(directory) as (_, ts):
        info = ts.get(big.info_hash)
        assert info is not None and info.complete
        assert info.bytes_downloaded == len(big.payload)
        assert info.local_peers_served == 7
        assert ts.verify_all(big.info_hash) == 0
        assert payload_path(directory, big).read_bytes() == big.payload


# --- property ---------------------------------------------------------------------------------

ACTIONS = st.sampled_from(["good", "corrupt", "short", "long", "skip"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    piece_length=st.integers(1, 48),
    total=st.integers(1, 500),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_only_verified_pieces_are_stored(
    piece_length: int, total: int, seed: int, data: st.DataObject
) -> None:
    fake = make_torrent(seeded_payload(seed, total), piece_length)
    n = fake.num_pieces
    first = data.draw(st.lists(ACTIONS, min_size=n, max_size=n), label="first session")
    second = data.draw(st.lists(ACTIONS, min_size=n, max_size=n), label="second session")
    expected: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "cache"
        for actions in (first, second):
            with opened(directory) as (_, ts):
                ts.add(fake.info_hash, **fake.kwargs())
                assert held(ts, fake) == sorted(expected)
                for i, action in enumerate(actions):
                    piece = fake.piece(i)
                    if action == "good":
                        assert ts.verify_and_write(fake.info_hash, i, piece)
                        expected.add(i)
                    elif action == "corrupt":
                        ok = ts.verify_and_write(fake.info_hash, i, corrupt(piece, len(piece) - 1))
                        assert ok == (i in expected)  # a held piece is not rewritten
                    elif action == "short":
                        assert not ts.verify_and_write(fake.info_hash, i, piece[:-1])
                    elif action == "long":
                        assert not ts.verify_and_write(fake.info_hash, i, piece + b"x")
                assert ts.bitfield(fake.info_hash) == bits(expected, n)
        raw = payload_path(directory, fake).read_bytes()
        assert len(raw) == total
        for i in range(n):
            start = i * piece_length
            want = fake.piece(i) if i in expected else bytes(len(fake.piece(i)))
            assert raw[start : start + len(fake.piece(i))] == want
