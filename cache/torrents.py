"""The torrent piece store: one payload file per torrent, its facts and piece bitfield in LMDB.

Why it is built this way:

* **One payload file per torrent, pieces at fixed offsets.** Piece ``i`` lives at
  ``i * piece_length`` in ``<dir>/torrents/<hex info_hash>.payload``, a file created sparse at
  its full length. Serving a block to a peer is one ``os.sendfile`` from
  :meth:`TorrentStore.open_payload`; there is no per-piece file or index entry to look up.
* **It lives inside the HTTP store.** The records are named tables in the
  :class:`~cache.store.Store`'s LMDB environment and every write goes through the store's
  writer lock, so the cache directory still has one index, one writer and one ``flock``.
  ``cache/`` must not import ``swarm/``, so :meth:`TorrentStore.add` takes already-parsed facts
  (piece length, hashes, ...) next to the raw info dict, and checks them against it (the info
  hash, the ``pieces`` string, the ``piece length``) so that a caller's bug cannot make us
  verify pieces against the wrong hashes.
* **A piece is visible only once it verified.** :meth:`TorrentStore.verify_and_write` hashes the
  piece before writing a byte: a bad piece is never written at all. A good one is ``pwrite``-n into
  place and its bit set in memory; from then on it is served (from the page cache if need be).
* **Durability is batched, and ordered.** A bit becomes durable only in :meth:`TorrentStore.commit`,
  which first ``fdatasync``-s every payload file with new pieces and only then records their bits
  in one LMDB write transaction. A crash (``kill -9``, power loss) therefore loses at worst the bits
  of pieces written since the last commit, which are fetched again; it can never leave a bit set
  for a piece whose bytes are not on disk. On open, a payload file that is missing or not of its
  expected size gets all its bits cleared: nothing is served from a file that is not what we wrote.
* **The hot path does no I/O and takes no lock.** :meth:`TorrentStore.has` and
  :meth:`TorrentStore.bitfield` read an in-memory bytearray; traffic counters and local peers are
  buffered in memory and written back by :meth:`TorrentStore.commit`. Hashing and writing run in
  worker threads (``hashlib`` releases the GIL), so every method is thread-safe.
* **Eviction clears bits before it frees blocks.** :meth:`TorrentStore.evict_pieces` clears a
  range's bits in memory (nothing new is served from it) and durably (a crash cannot bring them
  back), and only then may :meth:`TorrentStore.punch` give the blocks back with
  ``fallocate(PUNCH_HOLE)``; ``punch`` re-checks under the torrent's ``io_lock`` that no piece
  was written back meanwhile. Reading a punched range yields zeros, so the order is what keeps
  zeros from ever being served; the caller also waits until no send of those pieces is queued
  (``cache/evictor.py``, ``Seeder.in_flight``).
* **Locks, outermost first:** ``_admin`` serialises the rare operations that change durable state
  (add, commit, pin, purge, the end of verify_all, close); a per-torrent ``io_lock`` guards the
  payload fd's lifetime against a purge (a pwrite to a closed, reused fd number would corrupt
  another file); ``_lock`` guards the in-memory bits and counters and is never held across a
  system call.

Layout (beside the HTTP store's, see ``cache/store.py``)::

    <dir>/torrents/<hex>.payload   one per torrent, sparse, pieces at i * piece_length
    <dir>/index/                   tables torrents, torrent_state, torrent_peers, torrent_meta

Tables: ``torrents`` maps the info hash to its immutable record (geometry, name, raw info dict);
``torrent_state`` to what changes (pinned, traffic, the durable bitfield); ``torrent_peers``
(dupsort) to a keyed 8-byte digest of each local peer served, so that the count of distinct
local peers survives restarts without storing subscriber addresses in clear.

Only v1 piece hashes (SHA-1) are implemented; hybrid torrents are stored through their v1
layout. v2-only torrents (per-piece SHA-256 merkle roots) are an extension point of ``hash_kind``.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import hashlib
import math
import os
import re
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Protocol, Self

from cache.store import Store, StoreError

__all__ = [
    "HashKind",
    "TorrentInfo",
    "TorrentMismatch",
    "TorrentObserver",
    "TorrentStore",
    "UnknownTorrent",
]

HashKind = Literal["sha1", "merkle-sha256"]

_SCHEMA_VERSION: Final = 1
_RECORD_VERSION: Final = 1
_STATE_VERSION: Final = 1
_KIND_SHA1: Final = 1
_FLAG_PINNED: Final = 0x01
_SHA1_LEN: Final = 20

# version, hash kind, reserved, name length, piece length, total length, added_at,
# offset of the concatenated piece hashes inside the info dict
_RECORD_HEAD = struct.Struct("<BBHIQQdQ")
# version, flags, reserved, number of pieces, bytes uploaded, bytes downloaded; then the bitfield
_STATE_HEAD = struct.Struct("<BBHIQQ")
_U32 = struct.Struct("<I")

_META_VERSION_KEY: Final = b"version"
_META_PEER_KEY: Final = b"peer-key"

_PAYLOAD_NAME = re.compile(r"([0-9a-f]{40}|[0-9a-f]{64})\.payload")
_READ_CHUNK: Final = 4 << 20

# One TorrentStore per Store: two would each believe they own the payload files.
_OPEN_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset + length)`` keeping the file's size; it then reads zeros."""
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class TorrentObserver(Protocol):
    """Told when held pieces change (``cache/evictor.py``); called in the caller's thread, so
    implementations must be thread-safe and quick."""

    def piece_stored(self, info_hash: bytes, index: int, length: int) -> None: ...

    def pieces_dropped(self, info_hash: bytes, pieces: Sequence[tuple[int, int]]) -> None:
        """(index, length) of pieces no longer held (a failed sync, a failed re-check)."""

    def torrent_removed(self, info_hash: bytes) -> None: ...

    def torrent_pinned(self, info_hash: bytes, pinned: bool) -> None: ...


class UnknownTorrent(StoreError, LookupError):
    """The info hash is not (or no longer) in the torrent store."""


class TorrentMismatch(StoreError, ValueError):
    """The facts given to :meth:`TorrentStore.add` contradict each other or the stored torrent."""


@dataclass(frozen=True, slots=True)
class TorrentInfo:
    """A snapshot of one stored torrent, counters included (pending ones merged in)."""

    info_hash: bytes
    name: str
    piece_length: int
    total_length: int
    num_pieces: int
    have_count: int
    pinned: bool
    added_at: float
    bytes_uploaded: int
    bytes_downloaded: int
    local_peers_served: int
    info: bytes

    @property
    def progress(self) -> float:
        """Fraction of pieces held and verified, in [0, 1]."""
        return self.have_count / self.num_pieces

    @property
    def complete(self) -> bool:
        return self.have_count == self.num_pieces


class _Torrent:
    """Everything in memory about one torrent; mutable fields are guarded as the module says."""

    __slots__ = (
        "added_at",
        "closed",
        "down",
        "down_pending",
        "durable",
        "fd",
        "hashes_at",
        "have",
        "info",
        "info_hash",
        "io_lock",
        "name",
        "num_pieces",
        "peers_pending",
        "pending",
        "piece_length",
        "pinned",
        "total_length",
        "up",
        "up_pending",
        "visible",
    )

    def __init__(
        self,
        info_hash: bytes,
        *,
        name: str,
        info: bytes,
        piece_length: int,
        total_length: int,
        hashes_at: int,
        added_at: float,
        fd: int,
    ) -> None:
        self.info_hash = info_hash
        self.name = name
        self.info = info
        self.piece_length = piece_length
        self.total_length = total_length
        self.num_pieces = -(-total_length // piece_length)
        self.hashes_at = hashes_at
        self.added_at = added_at
        self.fd = fd
        self.closed = False
        self.io_lock = threading.Lock()
        self.pinned = False
        # visible: verified and written (servable). durable: recorded in LMDB, and a subset of
        # visible. pending: visible but not yet durable.
        self.visible = bytearray((self.num_pieces + 7) // 8)
        self.durable = bytearray(len(self.visible))
        self.have = 0
        self.pending: set[int] = set()
        self.up = 0  # persisted counters
        self.down = 0
        self.up_pending = 0  # not yet persisted
        self.down_pending = 0
        self.peers_pending: set[bytes] = set()

    def span(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_pieces:
            raise ValueError(
                f"piece index {index} out of range: torrent {self.info_hash.hex()} has "
                f"{self.num_pieces} pieces"
            )
        offset = index * self.piece_length
        return offset, min(self.piece_length, self.total_length - offset)

    def expected_hash(self, index: int) -> bytes:
        at = self.hashes_at + index * _SHA1_LEN
        return self.info[at : at + _SHA1_LEN]


def _test(bits: bytearray, index: int) -> bool:
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def _set(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


def _clear(bits: bytearray, index: int) -> None:
    bits[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF


def _popcount(bits: bytes | bytearray) -> int:
    return int.from_bytes(bits, "big").bit_count()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_name(name: str) -> bytes:
    # surrogatepass round-trips any str, including names decoded with surrogateescape.
    return name.encode("utf-8", "surrogatepass")


def _check_facts(
    info_hash: bytes,
    info: bytes,
    piece_length: int,
    total_length: int,
    piece_hashes: Sequence[bytes],
) -> int:
    """Raise :class:`TorrentMismatch` unless the facts agree; return where the hashes are."""
    if len(info_hash) not in (20, 32):
        raise TorrentMismatch(f"info hash must be 20 or 32 bytes, got {len(info_hash)}")
    if piece_length <= 0:
        raise TorrentMismatch(f"piece length must be positive, got {piece_length}")
    if total_length <= 0:
        raise TorrentMismatch(f"total length must be positive, got {total_length}")
    num_pieces = -(-total_length // piece_length)
    if len(piece_hashes) != num_pieces:
        raise TorrentMismatch(
            f"{len(piece_hashes)} piece hashes for {num_pieces} pieces "
            f"({total_length} bytes in pieces of {piece_length})"
        )
    for i, h in enumerate(piece_hashes):
        if len(h) != _SHA1_LEN:
            raise TorrentMismatch(f"piece hash {i} is {len(h)} bytes, not {_SHA1_LEN}")
    if len(info_hash) == 20:
        ok = info_hash in (hashlib.sha1(info).digest(), hashlib.sha256(info).digest()[:20])
    else:
        ok = info_hash == hashlib.sha256(info).digest()
    if not ok:
        raise TorrentMismatch(f"info dict does not hash to info hash {info_hash.hex()}")
    if b"12:piece lengthi%de" % piece_length not in info:
        raise TorrentMismatch(f"info dict does not have piece length {piece_length}")
    joined = b"".join(piece_hashes)
    prefix = b"6:pieces%d:" % len(joined)
    at = info.find(prefix + joined)
    if at < 0:
        raise TorrentMismatch("piece hashes are not the info dict's 'pieces' string")
    return at + len(prefix)


def _encode_record(t: _Torrent) -> bytes:
    name = _encode_name(t.name)
    head = _RECORD_HEAD.pack(
        _RECORD_VERSION,
        _KIND_SHA1,
        0,
        len(name),
        t.piece_length,
        t.total_length,
        t.added_at,
        t.hashes_at,
    )
    return b"".join((head, name, t.info))


def _decode_record(info_hash: bytes, raw: bytes) -> tuple[str, bytes, int, int, float, int]:
    """(name, info, piece length, total length, added_at, hashes offset) or StoreError."""
    where = f"torrent record {info_hash.hex()}"
    if len(raw) < _RECORD_HEAD.size:
        raise StoreError(f"{where} is truncated ({len(raw)} bytes)")
    version, kind, _, name_len, piece_length, total_length, added_at, hashes_at = (
        _RECORD_HEAD.unpack_from(raw, 0)
    )
    if version != _RECORD_VERSION:
        raise StoreError(f"{where} has unknown version {version}")
    if kind != _KIND_SHA1:
        raise StoreError(f"{where} has unknown hash kind {kind}")
    start = _RECORD_HEAD.size
    if name_len > len(raw) - start:
        raise StoreError(f"{where}: name length {name_len} runs past the record")
    try:
        name = raw[start : start + name_len].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as e:
        raise StoreError(f"{where}: name is not UTF-8: {e}") from e
    info = raw[start + name_len :]
    if piece_length == 0 or total_length == 0 or not math.isfinite(added_at):
        raise StoreError(f"{where} has a zero length or a non-finite time")
    num_pieces = -(-total_length // piece_length)
    if hashes_at + num_pieces * _SHA1_LEN > len(info):
        raise StoreError(f"{where}: piece hashes run past the info dict")
    return name, info, piece_length, total_length, added_at, hashes_at


def _encode_state(t: _Torrent, durable: bytes | bytearray, up: int, down: int) -> bytes:
    flags = _FLAG_PINNED if t.pinned else 0
    head = _STATE_HEAD.pack(_STATE_VERSION, flags, 0, t.num_pieces, up, down)
    return head + bytes(durable)


def _decode_state(t: _Torrent, raw: bytes) -> tuple[bool, int, int, bytearray]:
    """(pinned, uploaded, downloaded, durable bitfield) or StoreError."""
    where = f"torrent state {t.info_hash.hex()}"
    if len(raw) < _STATE_HEAD.size:
        raise StoreError(f"{where} is truncated ({len(raw)} bytes)")
    version, flags, _, num_pieces, up, down = _STATE_HEAD.unpack_from(raw, 0)
    if version != _STATE_VERSION:
        raise StoreError(f"{where} has unknown version {version}")
    if flags & ~_FLAG_PINNED:
        raise StoreError(f"{where} has unknown flags {flags:#x}")
    if num_pieces != t.num_pieces:
        raise StoreError(f"{where} is for {num_pieces} pieces, the torrent has {t.num_pieces}")
    bits = bytearray(raw[_STATE_HEAD.size :])
    if len(bits) != len(t.visible):
        raise StoreError(f"{where}: bitfield is {len(bits)} bytes, expected {len(t.visible)}")
    spare = 8 * len(bits) - num_pieces
    if spare and bits[-1] & ((1 << spare) - 1):
        raise StoreError(f"{where}: bits set past the last piece")
    return bool(flags & _FLAG_PINNED), up, down, bits


class TorrentStore:
    """Piece storage for torrents, beside the HTTP objects of ``store`` (one per Store).

    Close it before the Store. :meth:`add`, :meth:`commit`, :meth:`purge`, :meth:`verify_all`,
    :meth:`verify_and_write` and opening do disk I/O (fsync, hashing): run them in a worker
    thread. The rest is memory, or one short LMDB read, and is fine on the event loop.
    """

    def __init__(self, store: Store) -> None:
        with _OPEN_LOCK:
            if store in _OPEN_STORES:
                raise StoreError(f"store {store.directory} already has an open TorrentStore")
            _OPEN_STORES.add(store)
        self._store = store
        self._dir = os.path.join(store.directory, "torrents")
        self._admin = threading.Lock()
        self._lock = threading.Lock()
        self._torrents: dict[bytes, _Torrent] = {}
        self._closed = False
        self.observer: TorrentObserver | None = None
        try:
            os.makedirs(self._dir, exist_ok=True)
            self._records = store.open_table(b"torrents")
            self._states = store.open_table(b"torrent_state")
            self._peers = store.open_table(b"torrent_peers", dupsort=True)
            self._meta = store.open_table(b"torrent_meta")
            self._peer_key = self._check_schema()
            self._load()
        except OSError as e:
            self._abandon()
            raise StoreError(f"cannot open torrent store in {self._dir}: {e}") from e
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        for t in self._torrents.values():
            with contextlib.suppress(OSError):
                os.close(t.fd)
        self._torrents.clear()
        self._closed = True
        with _OPEN_LOCK:
            _OPEN_STORES.discard(self._store)

    def _check_schema(self) -> bytes:
        with self._store.transaction(write=True) as txn:
            version = txn.get(_META_VERSION_KEY, db=self._meta)
            if version is None:
                txn.put(_META_VERSION_KEY, _U32.pack(_SCHEMA_VERSION), db=self._meta)
            elif version != _U32.pack(_SCHEMA_VERSION):
                raise StoreError(f"torrent schema {version!r} is not version {_SCHEMA_VERSION}")
            key = txn.get(_META_PEER_KEY, db=self._meta)
            if key is None:
                key = secrets.token_bytes(16)
                txn.put(_META_PEER_KEY, key, db=self._meta)
        return bytes(key)

    def _path(self, info_hash: bytes) -> str:
        return os.path.join(self._dir, info_hash.hex() + ".payload")

    def _load(self) -> None:
        with self._store.transaction() as txn:
            states = dict(txn.cursor(db=self._states))
            for key, raw in txn.cursor(db=self._records):
                ih = bytes(key)
                name, info, piece_length, total_length, added_at, hashes_at = _decode_record(
                    ih, bytes(raw)
                )
                t = _Torrent(
                    ih,
                    name=name,
                    info=info,
                    piece_length=piece_length,
                    total_length=total_length,
                    hashes_at=hashes_at,
                    added_at=added_at,
                    fd=-1,
                )
                state = states.get(key)
                if state is not None:
                    t.pinned, t.up, t.down, t.durable = _decode_state(t, bytes(state))
                self._torrents[ih] = t
        damaged: list[_Torrent] = []
        created = False
        for t in self._torrents.values():
            path = self._path(t.info_hash)
            created |= not os.path.exists(path)
            t.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if os.fstat(t.fd).st_size != t.total_length:
                # Missing, truncated or grown behind our back: none of its bits can be trusted.
                t.durable = bytearray(len(t.durable))
                damaged.append(t)
            t.visible[:] = t.durable
            t.have = _popcount(t.visible)
        if damaged:
            # The cleared bits are made durable before the file gets its length back: were the
            # clear undone by a crash, a full-length file of holes must not meet the old bits.
            with self._store.transaction(write=True, durable=True) as txn:
                for t in damaged:
                    txn.put(t.info_hash, _encode_state(t, t.durable, t.up, t.down), db=self._states)
            for t in damaged:
                os.ftruncate(t.fd, t.total_length)
                os.fsync(t.fd)
        # Payload files without a record: left by a crash inside add() or purge().
        for entry in os.scandir(self._dir):
            m = _PAYLOAD_NAME.fullmatch(entry.name)
            if m and bytes.fromhex(m.group(1)) not in self._torrents:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if created:
            _fsync_dir(self._dir)

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is pending, then close the payload files; idempotent."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            with self._admin:
                for t in self._torrents.values():
                    with t.io_lock:
                        t.closed = True
                        with contextlib.suppress(OSError):
                            os.close(t.fd)
                self._abandon()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("torrent store is closed")

    def _require(self, info_hash: bytes) -> _Torrent:
        self._check_open()
        t = self._torrents.get(info_hash)
        if t is None:
            raise UnknownTorrent(f"torrent {info_hash.hex()} is not in the store")
        return t

    # --- adding and removing -------------------------------------------------------------

    def add(
        self,
        info_hash: bytes,
        *,
        info: bytes,
        name: str,
        piece_length: int,
        total_length: int,
        piece_hashes: Sequence[bytes],
        hash_kind: HashKind = "sha1",
        pinned: bool = False,
    ) -> TorrentInfo:
        """Start storing a torrent (or return it if it is already stored).

        ``info`` is the raw bencoded info dict, which must hash to ``info_hash`` (SHA-1, or
        SHA-256 truncated or not). ``piece_hashes`` are the v1 SHA-1s of its ``pieces`` string;
        hybrid torrents are verified through their v1 layout, so ``total_length`` is the v1
        total (pad files included). ``hash_kind="merkle-sha256"`` (v2-only torrents, verified
        per piece against SHA-256 merkle roots) is reserved and raises ``NotImplementedError``.

        Adding an info hash already stored is a no-op (``pinned=True`` pins it), unless the
        facts differ from the stored ones: :class:`TorrentMismatch`. Slow (fsync): run it in a
        worker thread.
        """
        if hash_kind != "sha1":
            raise NotImplementedError(
                f"hash kind {hash_kind!r}: v2-only torrents (SHA-256 merkle per piece) are not "
                "supported yet; store hybrid torrents through their v1 piece hashes"
            )
        info_hash, info = bytes(info_hash), bytes(info)
        hashes_at = _check_facts(info_hash, info, piece_length, total_length, piece_hashes)
        with self._admin:
            self._check_open()
            t = self._torrents.get(info_hash)
            if t is not None:
                facts = (t.info, t.name, t.piece_length, t.total_length)
                if facts != (info, name, piece_length, total_length):
                    raise TorrentMismatch(
                        f"torrent {info_hash.hex()} is stored with a different info dict, "
                        "name or geometry"
                    )
                if pinned and not t.pinned:
                    self._set_pinned(t, True)
                return self._snapshot(t, self._peer_counts([t])[0])
            path = self._path(info_hash)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise StoreError(f"cannot create payload file {path}: {e}") from e
            t = _Torrent(
                info_hash,
                name=name,
                info=info,
                piece_length=piece_length,
                total_length=total_length,
                hashes_at=hashes_at,
                added_at=time.time(),
                fd=fd,
            )
            t.pinned = pinned
            try:
                os.ftruncate(fd, total_length)  # sparse: no blocks until pieces arrive
                # The file must be durable before the record that names it.
                os.fsync(fd)
                _fsync_dir(self._dir)
                with self._store.transaction(write=True) as txn:
                    txn.put(info_hash, _encode_record(t), db=self._records)
                    txn.put(info_hash, _encode_state(t, t.durable, 0, 0), db=self._states)
            except (OSError, StoreError) as e:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                if isinstance(e, StoreError):
                    raise
                raise StoreError(f"cannot create payload file {path}: {e}") from e
            with self._lock:
                self._torrents[info_hash] = t
            return self._snapshot(t, 0)

    def purge(self, info_hash: bytes) -> bool:
        """Forget a torrent and delete its payload file; False if it was not stored.

        Open payload fds (a sendfile in progress) keep working on the unlinked file.
        """
        with self._admin:
            self._check_open()
            t = self._torrents.get(info_hash)
            if t is None:
                return False
            # Durable before the unlink: a resurrected record would name a missing file (its
            # bits would be cleared at open, but it would still be wrong to bring it back).
            with self._store.transaction(write=True, durable=True) as txn:
                txn.delete(info_hash, db=self._records)
                txn.delete(info_hash, db=self._states)
                txn.delete(info_hash, db=self._peers)  # every duplicate
            with t.io_lock:
                t.closed = True
                with self._lock:
                    del self._torrents[info_hash]
                with contextlib.suppress(OSError):
                    os.close(t.fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(info_hash))
            if self.observer is not None:
                self.observer.torrent_removed(info_hash)
            return True

    def pin(self, info_hash: bytes) -> None:
        """Never evict this torrent (persisted at once)."""
        with self._admin:
            self._set_pinned(self._require(info_hash), True)

    def unpin(self, info_hash: bytes) -> None:
        with self._admin:
            self._set_pinned(self._require(info_hash), False)

    def _set_pinned(self, t: _Torrent, pinned: bool) -> None:
        # Under _admin: durable, up and down only change there, so the record is consistent.
        old, t.pinned = t.pinned, pinned
        try:
            with self._store.transaction(write=True) as txn:
                txn.put(t.info_hash, _encode_state(t, t.durable, t.up, t.down), db=self._states)
        except StoreError:
            t.pinned = old
            raise
        if self.observer is not None and old != pinned:
            self.observer.torrent_pinned(t.info_hash, pinned)

    def is_pinned(self, info_hash: bytes) -> bool:
        """Whether the torrent is pinned (False if unknown); memory only."""
        t = self._torrents.get(info_hash)
        return t is not None and t.pinned

    # --- pieces ---------------------------------------------------------------------------

    def verify_and_write(self, info_hash: bytes, index: int, data: bytes | memoryview) -> bool:
        """Store piece ``index`` if ``data`` is exactly that piece; False (nothing written) if not.

        On success the piece is visible at once (:meth:`has`, :meth:`bitfield`) and durable
        after the next :meth:`commit`. A piece already held is not rewritten. Raises
        ``ValueError`` for an index out of range, :class:`UnknownTorrent` if the torrent is not
        (or, by a concurrent purge, no longer) stored, :class:`StoreError` on a write error.
        Hashes and writes: run it in a worker thread; calls may run in parallel.
        """
        t = self._require(info_hash)
        offset, length = t.span(index)
        with memoryview(data) as mv, mv.cast("B") as view:
            if len(view) != length:
                return False
            if _test(t.visible, index):
                return True
            if hashlib.sha1(view).digest() != t.expected_hash(index):
                return False
            with t.io_lock:
                if t.closed:
                    raise UnknownTorrent(f"torrent {info_hash.hex()} was purged or closed")
                pos = 0
                while pos < length:
                    try:
                        n = os.pwrite(t.fd, view[pos:], offset + pos)
                    except OSError as e:
                        raise StoreError(
                            f"cannot write piece {index} of {info_hash.hex()}: {e}"
                        ) from e
                    pos += n
                with self._lock:
                    added = not _test(t.visible, index)
                    if added:
                        _set(t.visible, index)
                        t.have += 1
                        t.pending.add(index)
        if added and self.observer is not None:
            self.observer.piece_stored(info_hash, index, length)
        return True

    def commit(self) -> int:
        """Make pieces written so far durable, and write back buffered counters.

        Order: ``fdatasync`` each payload file with new pieces, then one LMDB write transaction
        with their bits and the counters. Returns the number of pieces made durable. Call it on
        a timer or every N pieces (see :attr:`uncommitted`); :meth:`close` calls it. Slow:
        run it in a worker thread.
        """
        with self._admin:
            self._check_open()
            with self._lock:
                work = [
                    (t, frozenset(t.pending), t.up_pending, t.down_pending, t.peers_pending.copy())
                    for t in self._torrents.values()
                    if t.pending or t.up_pending or t.down_pending or t.peers_pending
                ]
            if not work:
                return 0
            failed: list[tuple[_Torrent, OSError]] = []
            for t, pieces, *_ in work:
                if pieces:
                    try:
                        self._datasync(t)
                    except OSError as e:
                        failed.append((t, e))
            if failed:
                # After a failed fdatasync the kernel may have dropped the dirty pages: the
                # bytes of these pieces are unknown, so they are no longer served.
                dropped: list[tuple[_Torrent, list[int]]] = []
                with self._lock:
                    for t, _ in failed:
                        for i in t.pending:
                            _clear(t.visible, i)
                        t.have -= len(t.pending)
                        dropped.append((t, sorted(t.pending)))
                        t.pending.clear()
                for t, indices in dropped:
                    self._tell_dropped(t, indices)
                first, error = failed[0]
                raise StoreError(
                    f"cannot sync payload of {first.info_hash.hex()}: {error}"
                ) from error
            updates: list[tuple[_Torrent, bytearray]] = []
            with self._store.transaction(write=True) as txn:
                for t, pieces, up, down, peers in work:
                    if pieces or up or down:
                        durable = bytearray(t.durable)
                        for i in pieces:
                            _set(durable, i)
                        state = _encode_state(t, durable, t.up + up, t.down + down)
                        txn.put(t.info_hash, state, db=self._states)
                        updates.append((t, durable))
                    for digest in peers:
                        txn.put(t.info_hash, digest, db=self._peers, dupdata=False)
            with self._lock:
                for t, pieces, up, down, peers in work:
                    t.pending -= pieces
                    t.up += up
                    t.up_pending -= up
                    t.down += down
                    t.down_pending -= down
                    t.peers_pending -= peers
                for t, durable in updates:
                    t.durable = durable
            return sum(len(w[1]) for w in work)

    def _datasync(self, t: _Torrent) -> None:
        # A dup, taken under io_lock, so a concurrent purge cannot close the fd under us, and
        # the writers of this torrent do not wait for the sync.
        with t.io_lock:
            if t.closed:
                return
            fd = os.dup(t.fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    @property
    def uncommitted(self) -> int:
        """Pieces written and visible but not yet durable (lost, and refetched, on a crash)."""
        return sum(len(t.pending) for t in list(self._torrents.values()))

    def verify_all(self, info_hash: bytes) -> int:
        """Re-hash every held piece from disk; clear (durably) and count those that fail.

        Slow (reads the whole payload): run it in a worker thread.
        """
        t = self._require(info_hash)
        fd = self.open_payload(info_hash)
        bad: list[int] = []
        try:
            for index in range(t.num_pieces):
                if not _test(t.visible, index):
                    continue
                offset, length = t.span(index)
                h = hashlib.sha1()
                pos = 0
                while pos < length:
                    chunk = os.pread(fd, min(_READ_CHUNK, length - pos), offset + pos)
                    if not chunk:
                        break
                    h.update(chunk)
                    pos += len(chunk)
                if pos != length or h.digest() != t.expected_hash(index):
                    bad.append(index)
        except OSError as e:
            raise StoreError(f"cannot read payload of {info_hash.hex()}: {e}") from e
        finally:
            os.close(fd)
        if not bad:
            return 0
        with self._admin:
            if self._closed or self._torrents.get(info_hash) is not t:
                return len(bad)  # purged or closed meanwhile: nothing left to clear
            durable = bytearray(t.durable)
            for i in bad:
                _clear(durable, i)
            # durable: an undone clear would serve the corrupt pieces again after a crash.
            with self._store.transaction(write=True, durable=True) as txn:
                txn.put(info_hash, _encode_state(t, durable, t.up, t.down), db=self._states)
            gone: list[int] = []
            with self._lock:
                t.durable = durable
                for i in bad:
                    if _test(t.visible, i):
                        _clear(t.visible, i)
                        t.have -= 1
                        gone.append(i)
                    t.pending.discard(i)
            self._tell_dropped(t, gone)
        return len(bad)

    def _tell_dropped(self, t: _Torrent, indices: Sequence[int]) -> None:
        if self.observer is not None and indices:
            self.observer.pieces_dropped(t.info_hash, [(i, t.span(i)[1]) for i in indices])

    # --- eviction ---------------------------------------------------------------------------

    def evict_pieces(self, info_hash: bytes, first: int, stop: int) -> builtins.list[int]:
        """Stop serving the held pieces in ``[first, stop)`` and forget them durably.

        Returns the indices cleared: none for a pinned or unknown torrent (checked under the
        admin lock, so a concurrent pin wins). The bytes stay on disk until :meth:`punch`. The
        observer is not told: the caller (the evictor) is the one evicting. Slow (a durable
        LMDB commit): run it in a worker thread.
        """
        with self._admin:
            self._check_open()
            t = self._torrents.get(info_hash)
            if t is None or t.pinned:
                return []
            stop = min(stop, t.num_pieces)
            with self._lock:
                cleared = [i for i in range(max(0, first), stop) if _test(t.visible, i)]
                was_pending = {i for i in cleared if i in t.pending}
                for i in cleared:
                    _clear(t.visible, i)
                    t.pending.discard(i)
                t.have -= len(cleared)
            if not cleared:
                return []
            durable = bytearray(t.durable)
            for i in cleared:
                _clear(durable, i)
            try:
                with self._store.transaction(write=True, durable=True) as txn:
                    txn.put(info_hash, _encode_state(t, durable, t.up, t.down), db=self._states)
            except StoreError:
                # Nothing was punched: the bytes are intact, so the pieces are served again.
                with self._lock:
                    for i in cleared:
                        if not _test(t.visible, i):
                            _set(t.visible, i)
                            t.have += 1
                            if i in was_pending:
                                t.pending.add(i)
                raise
            with self._lock:
                t.durable = durable
            return cleared

    def punch(self, info_hash: bytes, pieces: Iterable[int]) -> int:
        """Give the disk blocks of evicted ``pieces`` back to the filesystem.

        Only pieces not held are touched (one written back since :meth:`evict_pieces` is
        skipped: the check and the punch happen under the torrent's ``io_lock``, which every
        write holds). Returns the bytes of allocation released (``st_blocks`` before minus
        after). :class:`StoreError` if the filesystem cannot punch holes. Worker thread.
        """
        t = self._torrents.get(info_hash)
        if t is None:
            return 0
        with t.io_lock:
            if t.closed:
                return 0
            with self._lock:
                todo = sorted(
                    i for i in set(pieces) if 0 <= i < t.num_pieces and not _test(t.visible, i)
                )
            try:
                before = os.fstat(t.fd).st_blocks
                run_start = prev = -2
                for i in [*todo, -2]:
                    if i == prev + 1:
                        prev = i
                        continue
                    if run_start >= 0:
                        offset = run_start * t.piece_length
                        end = min((prev + 1) * t.piece_length, t.total_length)
                        _punch_hole(t.fd, offset, end - offset)
                    run_start = prev = i
                after = os.fstat(t.fd).st_blocks
            except OSError as e:
                raise StoreError(f"cannot punch holes in payload of {info_hash.hex()}: {e}") from e
        return max(0, before - after) * 512

    def disk_bytes(self, info_hash: bytes) -> int:
        """Bytes the payload file occupies on disk (``st_blocks``), holes excluded."""
        t = self._require(info_hash)
        try:
            return int(os.stat(self._path(t.info_hash)).st_blocks) * 512
        except OSError as e:
            raise StoreError(f"cannot stat payload of {info_hash.hex()}: {e}") from e

    # --- reading ----------------------------------------------------------------------------

    def has(self, info_hash: bytes, index: int) -> bool:
        """Whether piece ``index`` is held and verified (False for unknown torrents/indices)."""
        t = self._torrents.get(info_hash)
        if t is None or not 0 <= index < t.num_pieces:
            return False
        return _test(t.visible, index)

    def bitfield(self, info_hash: bytes) -> bytes:
        """The held pieces as a BEP 3 bitfield (piece 0 is the high bit of byte 0)."""
        return bytes(self._require(info_hash).visible)

    def missing(self, info_hash: bytes) -> builtins.list[int]:
        """Indices of the pieces not held, ascending."""
        t = self._require(info_hash)
        bits = bytes(t.visible)
        return [i for i in range(t.num_pieces) if not bits[i >> 3] & (0x80 >> (i & 7))]

    def progress(self, info_hash: bytes) -> float:
        """Fraction of pieces held, in [0, 1]."""
        t = self._require(info_hash)
        return t.have / t.num_pieces

    def piece_span(self, info_hash: bytes, index: int) -> tuple[int, int]:
        """(offset, length) of piece ``index`` in the payload file; the last piece is shorter."""
        return self._require(info_hash).span(index)

    def open_payload(self, info_hash: bytes) -> int:
        """A new read-only fd on the payload file (for ``os.sendfile``); the caller closes it.

        Serve only pieces for which :meth:`has` is true: the rest of the file is holes or
        unverified bytes.
        """
        t = self._require(info_hash)
        try:
            return os.open(self._path(t.info_hash), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise UnknownTorrent(f"torrent {info_hash.hex()} was purged") from e
        except OSError as e:
            raise StoreError(f"cannot open payload of {info_hash.hex()}: {e}") from e

    def get(self, info_hash: bytes) -> TorrentInfo | None:
        self._check_open()
        t = self._torrents.get(info_hash)
        if t is None:
            return None
        return self._snapshot(t, self._peer_counts([t])[0])

    def list(self) -> builtins.list[TorrentInfo]:
        """Every stored torrent, oldest first."""
        self._check_open()
        torrents = sorted(list(self._torrents.values()), key=lambda t: (t.added_at, t.info_hash))
        counts = self._peer_counts(torrents)
        return [self._snapshot(t, n) for t, n in zip(torrents, counts, strict=True)]

    def _snapshot(self, t: _Torrent, peers: int) -> TorrentInfo:
        with self._lock:
            return TorrentInfo(
                info_hash=t.info_hash,
                name=t.name,
                piece_length=t.piece_length,
                total_length=t.total_length,
                num_pieces=t.num_pieces,
                have_count=t.have,
                pinned=t.pinned,
                added_at=t.added_at,
                bytes_uploaded=t.up + t.up_pending,
                bytes_downloaded=t.down + t.down_pending,
                local_peers_served=peers,
                info=t.info,
            )

    def _peer_counts(self, torrents: Sequence[_Torrent]) -> builtins.list[int]:
        # Pending digests are snapshotted before the read transaction starts: a digest leaves
        # the pending set only after its commit, so each peer is counted exactly once.
        with self._lock:
            pending = [frozenset(t.peers_pending) for t in torrents]
        counts = []
        with self._store.transaction() as txn:
            cursor = txn.cursor(db=self._peers)
            for t, digests in zip(torrents, pending, strict=True):
                stored = cursor.count() if cursor.set_key(t.info_hash) else 0
                new = sum(1 for d in digests if not cursor.set_key_dup(t.info_hash, d))
                counts.append(int(stored) + new)
        return counts

    # --- counters (buffered) ----------------------------------------------------------------

    def add_traffic(self, info_hash: bytes, *, uploaded: int = 0, downloaded: int = 0) -> None:
        """Count payload bytes sent to / received from peers; in memory until :meth:`commit`.

        Counts for a torrent that is not stored (purged meanwhile) are dropped.
        """
        if uploaded < 0 or downloaded < 0:
            raise ValueError(f"negative traffic: uploaded={uploaded} downloaded={downloaded}")
        t = self._torrents.get(info_hash)
        if t is None:
            return
        with self._lock:
            t.up_pending += uploaded
            t.down_pending += downloaded

    def note_local_peer(self, info_hash: bytes, peer: bytes | str) -> None:
        """Record that a local peer (id or address) was served; counted once per distinct peer.

        Only a keyed 8-byte digest is stored. In memory until :meth:`commit`; peers of a
        torrent that is not stored are dropped.
        """
        t = self._torrents.get(info_hash)
        if t is None:
            return
        raw = peer.encode("utf-8", "surrogatepass") if isinstance(peer, str) else bytes(peer)
        digest = hashlib.blake2b(raw, key=self._peer_key, digest_size=8).digest()
        with self._lock:
            t.peers_pending.add(digest)
