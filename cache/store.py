"""The on-disk store: an LMDB index over content-addressed blob files.

Why it is built this way:

* **Bodies are files, the index is LMDB.** A hit is served with ``os.sendfile`` straight from a
  blob file, so bodies never pass through Python; the index answers "what do we hold for this
  key" in microseconds from a memory map, with one writer and lock-free readers.
* **Blobs are named by their SHA-256.** Identical bodies (the same file under two URLs, or later
  the same file inside a torrent) share one file; a refcount in the ``blobs`` table says when the
  last reference is gone. The name is also the integrity check: :meth:`Store.verify_blob`
  re-hashes a file against its own name.
* **The index only ever points at complete blobs.** A body is written to ``tmp/``, fsync'd,
  renamed to ``blobs/ab/cd/<sha256>`` (and the directory fsync'd), and only then may
  :meth:`Store.put` reference it; ``put`` re-checks the file's size under the writer lock, the
  same lock under which a file whose refcount hit zero is unlinked. A crash at any point leaves
  at worst an orphan file (swept by :meth:`Store.sweep_orphans`) or a temp file (cleared at the
  next open), never an index entry without its bytes.
* **Nothing here is async.** Index calls are short LMDB transactions and are fine on the event
  loop. Whatever can take long (hashing a blob, fsyncing a blob, scanning the whole index) is a
  separate method the caller runs in an executor thread; each call opens its own LMDB
  transaction, so any thread may call any method.
* **Hit counters are buffered.** A hit must not cost an index write (each write transaction
  fdatasyncs), so :meth:`Store.touch` only updates an in-memory table that is merged into every
  read and written back by :meth:`Store.flush_touches` (by the daemon on a timer, automatically
  once enough have piled up, and at :meth:`Store.close`). Counts lost in a crash only make
  eviction slightly less well informed.

Layout::

    <dir>/lock                  flock'd while open: one Store per directory
    <dir>/index/                LMDB env: objects, blobs, blob_refs, info
    <dir>/blobs/ab/cd/<sha256>  complete bodies, immutable once renamed into place
    <dir>/tmp/                  bodies being written; emptied at open
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import math
import os
import re
import secrets
import shutil
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self

import lmdb

__all__ = [
    "BlobRef",
    "BlobWriter",
    "CorruptBlob",
    "ObjectMeta",
    "Store",
    "StoreError",
    "StoreObserver",
    "StoreStats",
]

_SCHEMA_VERSION: Final = 1
_META_VERSION: Final = 1

# Keys longer than this are stored under their SHA-256 (LMDB keys, and dupsort values, which
# the blob_refs table stores internal keys as, are limited to 511 bytes).
_MAX_INLINE_KEY: Final = 400
_INLINE: Final = b"k"
_HASHED: Final = b"h"

# Touches pending in memory past which touch() writes them back itself.
_TOUCH_FLUSH_AT: Final = 8192
# Objects deleted per write transaction by delete_where(): bounds how long other writers
# (possibly the event loop) wait on the writer lock.
_DELETE_BATCH: Final = 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BLOB_REC = struct.Struct("<QQ")  # refcount, size
# version, flags, status, request_time, response_time, stored_at, last_access, hits,
# blob size, blob digest, number of headers, number of vary names
_META_HEAD = struct.Struct("<BBHddddQQ32sII")
_FLAG_PINNED: Final = 0x01


class StoreError(Exception):
    """The store could not do what was asked (I/O error, bad record, closed store, ...)."""


class CorruptBlob(StoreError):
    """A blob file is missing or does not have the size the index says it has."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A complete blob: its SHA-256 (lowercase hex), which is also its file name, and size."""

    digest: str
    size: int

    def __post_init__(self) -> None:
        # The digest becomes a path: anything but 64 lowercase hex chars could escape blobs/.
        if _HEX64.fullmatch(self.digest) is None:
            raise ValueError(f"not a sha256 hex digest: {self.digest!r}")
        if self.size < 0:
            raise ValueError(f"negative blob size: {self.size}")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """One stored HTTP response: what is needed to serve, revalidate and evict it."""

    url: bytes
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    request_time: float
    response_time: float
    blob: BlobRef
    vary: tuple[bytes, ...] = ()
    stored_at: float = 0.0
    hits: int = 0
    last_access: float = 0.0
    pinned: bool = False

    def encode(self) -> bytes:
        """A compact, versioned binary record (raises :class:`StoreError` if unrepresentable).

        Layout: a fixed head, then the lengths of every byte string (url, reason, each header
        name and value, each vary name) as one u32 array, then the strings back to back, so
        that decoding is one ``unpack_from`` and a run of slices.
        """
        floats = (self.request_time, self.response_time, self.stored_at, self.last_access)
        if not all(math.isfinite(f) for f in floats):
            raise StoreError("ObjectMeta times must be finite")
        try:
            strings = [self.url, self.reason]
            for name, value in self.headers:
                strings += (name, value)
            strings += self.vary
            head = _META_HEAD.pack(
                _META_VERSION,
                _FLAG_PINNED if self.pinned else 0,
                self.status,
                *floats,
                self.hits,
                self.blob.size,
                bytes.fromhex(self.blob.digest),
                len(self.headers),
                len(self.vary),
            )
            lengths = struct.pack(f"<{len(strings)}I", *map(len, strings))
            return b"".join((head, lengths, *strings))
        except (struct.error, OverflowError, ValueError, TypeError) as e:
            raise StoreError(f"cannot encode ObjectMeta: {e}") from e

    @staticmethod
    def decode(data: bytes | memoryview) -> ObjectMeta:
        """Inverse of :meth:`encode`; anything malformed raises :class:`StoreError`."""
        try:
            return _decode_meta(bytes(data))
        except (struct.error, ValueError, TypeError) as e:
            raise StoreError(f"malformed ObjectMeta record: {e}") from e


def _decode_meta(buf: bytes) -> ObjectMeta:
    (
        version,
        flags,
        status,
        request_time,
        response_time,
        stored_at,
        last_access,
        hits,
        size,
        digest,
        n_headers,
        n_vary,
    ) = _META_HEAD.unpack_from(buf, 0)
    if version != _META_VERSION:
        raise StoreError(f"unknown ObjectMeta version {version}")
    if flags & ~_FLAG_PINNED:
        raise StoreError(f"unknown ObjectMeta flags {flags:#x}")
    if not all(math.isfinite(f) for f in (request_time, response_time, stored_at, last_access)):
        raise StoreError("non-finite time in ObjectMeta record")
    n_strings = 2 + 2 * n_headers + n_vary
    pos = _META_HEAD.size
    # Checked before unpacking so that a garbage count cannot make us allocate much.
    if 4 * n_strings > len(buf) - pos:
        raise StoreError("ObjectMeta record is truncated")
    lengths = struct.unpack_from(f"<{n_strings}I", buf, pos)
    pos += 4 * n_strings
    if sum(lengths) != len(buf) - pos:
        raise StoreError("ObjectMeta record lengths do not add up")
    strings = []
    for n in lengths:
        strings.append(buf[pos : pos + n])
        pos += n
    names = strings[2 : 2 + 2 * n_headers : 2]
    values = strings[3 : 2 + 2 * n_headers : 2]
    return ObjectMeta(
        url=strings[0],
        status=status,
        reason=strings[1],
        headers=tuple(zip(names, values, strict=True)),
        request_time=request_time,
        response_time=response_time,
        blob=BlobRef(digest.hex(), size),
        vary=tuple(strings[2 + 2 * n_headers :]),
        stored_at=stored_at,
        hits=hits,
        last_access=last_access,
        pinned=bool(flags & _FLAG_PINNED),
    )


class StoreObserver(Protocol):
    """Told of every change to the index once it is committed (``cache/evictor.py``).

    Called in the thread of the store call that made the change, under the store's writer lock
    for everything but :meth:`object_hit`: implementations must be thread-safe and quick, and
    must not call back into the store's writing methods.
    """

    def object_stored(self, key: bytes, meta: ObjectMeta) -> None: ...

    def object_removed(self, key: bytes) -> None: ...

    def object_hit(self, key: bytes) -> None: ...

    def blobs_changed(self, added: Sequence[BlobRef], freed: Sequence[BlobRef]) -> None:
        """Blob files newly referenced by the index, and blob files unlinked."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    objects: int
    blobs: int
    bytes: int  # sum of the sizes of the blobs the index references


def _blob_path(root: str, digest: str) -> str:
    return os.path.join(root, digest[:2], digest[2:4], digest)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A blob being written to ``tmp/``; see :meth:`Store.begin_blob`.

    Readers may open :attr:`path` read-only and read bytes ``[0, size)`` while it grows; their
    descriptors stay valid after :meth:`commit` renames (or :meth:`abort` unlinks) the file, but
    the temp path itself is gone then: late readers use :meth:`Store.blob_path` of the ref.
    """

    __slots__ = ("_blob_root", "_fd", "_hash", "_hashed", "_state", "path", "size")

    def __init__(self, tmp_dir: str, blob_root: str) -> None:
        self._blob_root = blob_root
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in _hash; the rest is hashed from the file
        self._state = "open"
        self.size = 0
        self.path = os.path.join(tmp_dir, secrets.token_hex(12) + ".part")
        try:
            self._fd: int = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise StoreError(f"cannot create temp blob {self.path}: {e}") from e

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # a no-op once committed

    def fileno(self) -> int:
        if self._state != "open":
            raise StoreError(f"blob writer is {self._state}")
        return self._fd

    def account_written(self, n: int) -> None:
        """Count ``n`` bytes the caller appended to :meth:`fileno` itself (``os.splice``).

        They never pass through this process's memory, so they are hashed from the file at
        :meth:`commit`, in the committing (worker) thread.
        """
        if self._state != "open":
            raise StoreError(f"blob writer is {self._state}")
        self.size += n

    def _catch_up_hash(self) -> None:
        if self._hashed == self.size:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"cannot reopen temp blob {self.path}: {e}") from e
        try:
            while self._hashed < self.size:
                chunk = os.pread(fd, min(4 << 20, self.size - self._hashed), self._hashed)
                if not chunk:
                    raise StoreError(f"temp blob {self.path} is shorter than written")
                self._hash.update(chunk)
                self._hashed += len(chunk)
        finally:
            os.close(fd)

    def write(self, data: bytes | memoryview) -> None:
        if self._state != "open":
            raise StoreError(f"blob writer is {self._state}")
        self._catch_up_hash()
        with memoryview(data) as mv, mv.cast("B") as view:
            pos, total = 0, len(view)
            while pos < total:
                try:
                    n = os.write(self._fd, view[pos:])
                except OSError as e:
                    raise StoreError(f"cannot write temp blob {self.path}: {e}") from e
                # Hash and count per chunk so size and digest stay true to the file even if
                # a later chunk fails (ENOSPC): readers never see a size beyond the bytes.
                self._hash.update(view[pos : pos + n])
                pos += n
                self.size += n
                self._hashed += n

    def commit(self, *, fsync: bool = True) -> BlobRef:
        """Make the blob permanent under its digest; does not touch the index.

        Slow with ``fsync`` (the default): run it in a worker thread. Skipping the fsync is
        only safe when losing the blob in a power failure is acceptable: after a kill -9 the
        page cache still holds the bytes either way.
        """
        if self._state != "open":
            raise StoreError(f"blob writer is {self._state}")
        try:
            self._catch_up_hash()
        except StoreError:
            self.abort()
            raise
        ref = BlobRef(self._hash.hexdigest(), self.size)
        final = _blob_path(self._blob_root, ref.digest)
        shard = os.path.dirname(final)
        try:
            # The same body already stored under its name (the same file under another URL,
            # a fingerprint match) is durable there: this copy is dropped unsynced, or every
            # deduplicated fill would write its whole body to disk for nothing.
            duplicate = self._dedup(final, ref.size)
            if fsync and not duplicate:
                os.fsync(self._fd)
            os.close(self._fd)
            self._state = "closing"
            created = not duplicate and not os.path.isdir(shard)
            if created:
                os.makedirs(shard, exist_ok=True)
            if not duplicate:
                # rename() also replaces an existing file of the wrong size: a damaged copy
                # is healed by the next fill of the same body.
                os.rename(self.path, final)
                if fsync:
                    # The rename must be durable before put() lets the index point at it.
                    _fsync_dir(shard)
                    if created:
                        _fsync_dir(os.path.dirname(shard))
                        _fsync_dir(self._blob_root)
        except OSError as e:
            if self._state == "open":  # closing twice could close a reused fd number
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._state = "closing"
            self.abort()
            raise StoreError(f"cannot commit blob {ref.digest}: {e}") from e
        self._state = "committed"
        return ref

    def _dedup(self, final: str, size: int) -> bool:
        try:
            if os.stat(final).st_size != size:
                return False
            # A fresh mtime keeps sweep_orphans() off the file until our put() references it.
            os.utime(final)
        except FileNotFoundError:
            return False
        os.unlink(self.path)
        return True

    def abort(self) -> None:
        """Drop the temp file; idempotent, and a no-op after a successful commit."""
        if self._state in ("committed", "aborted"):
            return
        if self._state == "open":
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._state = "aborted"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _ikey(key: bytes) -> bytes:
    if len(key) <= _MAX_INLINE_KEY:
        return _INLINE + key
    return _HASHED + hashlib.sha256(key).digest()


def _encode_record(key: bytes, ikey: bytes, meta: ObjectMeta) -> bytes:
    if ikey[:1] == _INLINE:
        return meta.encode()
    return _U32.pack(len(key)) + key + meta.encode()


def _decode_record(ikey: bytes, raw: bytes) -> tuple[bytes, ObjectMeta]:
    if ikey[:1] == _INLINE:
        return ikey[1:], ObjectMeta.decode(raw)
    try:
        (n,) = _U32.unpack_from(raw, 0)
    except struct.error as e:
        raise StoreError("malformed long-key record") from e
    key = raw[4 : 4 + n]
    if len(key) != n:
        raise StoreError("malformed long-key record")
    return key, ObjectMeta.decode(memoryview(raw)[4 + n :])


class Store:
    """The index and the blob files under one directory. One instance per directory.

    All methods are synchronous and may be called from any thread. Index methods are short
    LMDB transactions; :meth:`verify_blob`, :meth:`delete_where`, :meth:`iter_objects`,
    :meth:`sweep_orphans` and :meth:`BlobWriter.commit` may take long and belong in a worker
    thread.
    """

    def __init__(self, directory: str | os.PathLike[str], *, map_size: int = 64 << 30) -> None:
        self.directory = os.fspath(directory)
        self._blob_root = os.path.join(self.directory, "blobs")
        self._tmp_dir = os.path.join(self.directory, "tmp")
        index_dir = os.path.join(self.directory, "index")
        # Serialises our write transactions with the unlinks that follow them, so put()'s
        # check that a blob file exists cannot interleave with a decref that removes it.
        self._wlock = threading.Lock()
        self._touches: dict[bytes, tuple[int, float]] = {}
        # Guards read-modify-write of _touches (touch on the loop vs a flush in a worker).
        self._tlock = threading.Lock()
        self._verified: set[BlobRef] = set()
        self._verifying: dict[BlobRef, threading.Event] = {}
        self._vlock = threading.Lock()
        self._closed = False
        self.observer: StoreObserver | None = None
        try:
            for d in (self.directory, index_dir, self._blob_root, self._tmp_dir):
                os.makedirs(d, exist_ok=True)
            self._lock_fd = os.open(
                os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise StoreError(f"cannot open store at {self.directory}: {e}") from e
        try:
            # Another owner would clear our tmp/ (and we its): refuse rather than corrupt.
            # flock is released by the kernel when a process dies, even by kill -9.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            raise StoreError(f"store {self.directory} is in use by another Store") from e
        try:
            self._clear_tmp()
            # sync=True: each commit fdatasyncs the data pages, so a committed put survives a
            # power loss and LMDB can never be left corrupt (NOSYNC could reorder meta ahead of
            # data). metasync=False saves the second fsync per commit: a system crash may then
            # undo the *last* transaction. Undoing a put only orphans a blob (swept later);
            # undoing a touch or update loses counters. Undoing a removal would resurrect an
            # object whose file we unlinked, so removals call env.sync(True) before unlinking.
            # A kill -9 loses nothing committed: the page cache outlives the process.
            self._env = lmdb.open(
                index_dir,
                map_size=map_size,
                subdir=True,
                max_dbs=16,  # room for fingerprints, torrents, popularity
                max_readers=512,
                max_spare_txns=8,
                lock=True,
                writemap=False,
                sync=True,
                metasync=False,
                readahead=False,  # random access over an index that may exceed RAM
            )
            self._objects = self._env.open_db(b"objects")
            self._blobs = self._env.open_db(b"blobs")
            # digest -> every internal key referencing it: drop_blob() without a full scan.
            self._refs = self._env.open_db(b"blob_refs", dupsort=True)
            self._info = self._env.open_db(b"info")
            self._check_schema()
        except (OSError, lmdb.Error) as e:
            self._close_handles()
            raise StoreError(f"cannot open store at {self.directory}: {e}") from e
        except StoreError:
            self._close_handles()
            raise

    def _clear_tmp(self) -> None:
        for entry in os.scandir(self._tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

    def _check_schema(self) -> None:
        with self._env.begin(write=True, db=self._info) as txn:
            raw = txn.get(b"version")
            if raw is None:
                txn.put(b"version", _U32.pack(_SCHEMA_VERSION))
                txn.put(b"bytes", _U64.pack(0))
            elif raw != _U32.pack(_SCHEMA_VERSION):
                raise StoreError(f"store schema {raw!r} is not version {_SCHEMA_VERSION}")

    def _close_handles(self) -> None:
        if hasattr(self, "_env"):
            self._env.close()
        os.close(self._lock_fd)

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
        """Write back pending touches and close the index; idempotent."""
        if self._closed:
            return
        try:
            self.flush_touches()
            with contextlib.suppress(lmdb.Error):
                self._env.sync(True)
        finally:
            self._closed = True
            self._close_handles()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    # --- sibling indexes (cache/torrents.py) -------------------------------------------------

    def open_table(self, name: bytes, *, dupsort: bool = False) -> Any:
        """Open (creating) a named LMDB table in this store's environment, for a sibling index."""
        self._check_open()
        try:
            return self._env.open_db(name, dupsort=dupsort)
        except lmdb.Error as e:
            raise StoreError(f"cannot open table {name!r}: {e}") from e

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False, durable: bool = False) -> Iterator[Any]:
        """An LMDB transaction for a sibling index; ``lmdb.Error`` becomes :class:`StoreError`.

        A write transaction holds the writer lock, so the store keeps a single writer. With
        ``durable`` the commit is followed by a full sync (see the metasync note in
        ``__init__``): required before unlinking a file the transaction stopped referencing.
        """
        self._check_open()
        try:
            if not write:
                with self._env.begin() as txn:
                    yield txn
                return
            with self._wlock:
                with self._env.begin(write=True) as txn:
                    yield txn
                if durable:
                    self._env.sync(True)
        except lmdb.Error as e:
            raise StoreError(f"transaction failed: {e}") from e

    # --- blobs ------------------------------------------------------------------------------

    def begin_blob(self) -> BlobWriter:
        self._check_open()
        return BlobWriter(self._tmp_dir, self._blob_root)

    def blob_path(self, ref: BlobRef) -> str:
        return _blob_path(self._blob_root, ref.digest)

    def has_blob(self, ref: BlobRef) -> bool:
        """Whether some object references ``ref`` (so its file exists until unreferenced)."""
        self._check_open()
        try:
            with self._env.begin(db=self._blobs) as txn:
                raw = txn.get(bytes.fromhex(ref.digest))
        except lmdb.Error as e:
            raise StoreError(f"has_blob failed: {e}") from e
        return raw is not None and _BLOB_REC.unpack(raw)[1] == ref.size

    def open_blob(self, ref: BlobRef) -> int:
        """An ``O_RDONLY`` fd on the blob; :class:`CorruptBlob` if missing or of the wrong size.

        The caller owns the fd, and on :class:`CorruptBlob` decides whether to
        :meth:`drop_blob`.
        """
        path = self.blob_path(ref)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise CorruptBlob(f"blob {ref.digest} is missing") from e
        except OSError as e:
            raise StoreError(f"cannot open blob {ref.digest}: {e}") from e
        try:
            size = os.fstat(fd).st_size
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot stat blob {ref.digest}: {e}") from e
        if size != ref.size:
            os.close(fd)
            raise CorruptBlob(f"blob {ref.digest} has {size} bytes, expected {ref.size}")
        return fd

    def is_verified(self, ref: BlobRef) -> bool:
        return ref in self._verified

    def mark_verified(self, ref: BlobRef) -> None:
        """Record that ``ref`` was hashed as it was written by this process (no re-hash)."""
        with self._vlock:
            self._verified.add(ref)

    def verify_blob(self, ref: BlobRef) -> bool:
        """Re-hash the whole file against its name (slow: run in a worker thread).

        A blob that passes is remembered for the life of this Store and never hashed again;
        concurrent calls for the same blob wait for one hash instead of repeating it.
        """
        if ref in self._verified:
            return True
        with self._vlock:
            event = self._verifying.get(ref)
            owner = event is None
            if event is None:
                event = self._verifying[ref] = threading.Event()
        if not owner:
            event.wait()
            return ref in self._verified
        try:
            ok = self._hash_matches(ref)
            if ok:
                with self._vlock:
                    self._verified.add(ref)
            return ok
        finally:
            with self._vlock:
                del self._verifying[ref]
            event.set()

    def _hash_matches(self, ref: BlobRef) -> bool:
        try:
            with open(self.blob_path(ref), "rb") as f:
                if os.fstat(f.fileno()).st_size != ref.size:
                    return False
                return hashlib.file_digest(f, "sha256").hexdigest() == ref.digest
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot read blob {ref.digest}: {e}") from e

    def drop_blob(self, ref: BlobRef) -> int:
        """Remove every object pointing at ``ref`` and its file; returns the objects removed."""
        self._check_open()
        d32 = bytes.fromhex(ref.digest)
        removed: list[bytes] = []
        try:
            with self._wlock:
                with self._env.begin(write=True) as txn:
                    cursor = txn.cursor(db=self._refs)
                    if cursor.set_key(d32):
                        removed = list(cursor.iternext_dup())
                    keys: list[bytes] = []
                    for ikey in removed:
                        raw_meta = txn.get(ikey, db=self._objects)
                        if raw_meta is not None:
                            keys.append(_decode_record(ikey, raw_meta)[0])
                        txn.delete(ikey, db=self._objects)
                    txn.delete(d32, db=self._refs)  # all duplicates
                    raw = txn.get(d32, db=self._blobs)
                    if raw is not None:
                        _, size = _BLOB_REC.unpack(raw)
                        txn.delete(d32, db=self._blobs)
                        self._add_bytes(txn, -size)
                self._env.sync(True)
                self._unlink_blob(ref.digest)
                self._notify((), keys, (), [ref] if raw is not None else [])
        except lmdb.Error as e:
            raise StoreError(f"drop_blob failed: {e}") from e
        with self._vlock:
            self._verified.discard(ref)
        return len(removed)

    def sweep_orphans(self, *, min_age: float = 3600.0) -> int:
        """Unlink blob files the index does not reference; returns the number removed.

        Such files are left by a crash between :meth:`BlobWriter.commit` and :meth:`put`, or by
        a fill whose put was refused. Files younger than ``min_age`` seconds are spared: they
        may be committed blobs whose put is still to come. Slow (walks blobs/): run it in a
        worker thread.
        """
        self._check_open()
        cutoff = time.time() - min_age
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self._blob_root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if _HEX64.fullmatch(name) is None or path != _blob_path(self._blob_root, name):
                    continue  # not ours to judge
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                    continue
                d32 = bytes.fromhex(name)
                # Under the writer lock: a put() cannot reference the file between our check
                # and the unlink.
                try:
                    with self._wlock, self._env.begin(db=self._blobs) as txn:
                        if txn.get(d32) is None:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(path)
                                removed += 1
                except lmdb.Error as e:
                    raise StoreError(f"sweep_orphans failed: {e}") from e
        return removed

    def _unlink_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_blob_path(self._blob_root, digest))

    # --- index ------------------------------------------------------------------------------

    def _total_bytes(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"bytes", db=self._info)
        if raw is None:
            raise StoreError("index lacks its byte counter")
        total: int = _U64.unpack(raw)[0]
        return total

    def _add_bytes(self, txn: lmdb.Transaction, delta: int) -> None:
        total = self._total_bytes(txn)
        txn.put(b"bytes", _U64.pack(max(0, total + delta)), db=self._info)

    def _incref(self, txn: lmdb.Transaction, ref: BlobRef, ikey: bytes) -> bool:
        """True when the blob was not referenced before."""
        d32 = bytes.fromhex(ref.digest)
        raw = txn.get(d32, db=self._blobs)
        if raw is None:
            refs = 0
            self._add_bytes(txn, ref.size)
        else:
            refs, size = _BLOB_REC.unpack(raw)
            if size != ref.size:
                raise StoreError(f"blob {ref.digest} is indexed with size {size}, not {ref.size}")
        txn.put(d32, _BLOB_REC.pack(refs + 1, ref.size), db=self._blobs)
        txn.put(d32, ikey, db=self._refs, dupdata=True)
        return raw is None

    def _decref(self, txn: lmdb.Transaction, ref: BlobRef, ikey: bytes) -> bool:
        """True when that was the last reference: the caller unlinks after the commit."""
        d32 = bytes.fromhex(ref.digest)
        txn.delete(d32, ikey, db=self._refs)
        raw = txn.get(d32, db=self._blobs)
        if raw is None:
            return True  # already unaccounted for: nothing may keep the file alive
        refs, size = _BLOB_REC.unpack(raw)
        if refs > 1:
            txn.put(d32, _BLOB_REC.pack(refs - 1, size), db=self._blobs)
            return False
        txn.delete(d32, db=self._blobs)
        self._add_bytes(txn, -size)
        return True

    def _finish_removal(self, dead: list[BlobRef]) -> None:
        """After a committed txn that removed objects: make it durable, then unlink blobs."""
        self._env.sync(True)
        for ref in dead:
            self._unlink_blob(ref.digest)
        if dead:
            with self._vlock:
                self._verified.difference_update(dead)

    def _notify(
        self,
        stored: Iterable[tuple[bytes, ObjectMeta]],
        removed: Iterable[bytes],
        added: Sequence[BlobRef],
        freed: Sequence[BlobRef],
    ) -> None:
        observer = self.observer
        if observer is None:
            return
        for key, meta in stored:
            observer.object_stored(key, meta)
        for key in removed:
            observer.object_removed(key)
        if added or freed:
            observer.blobs_changed(added, freed)

    def _merged(self, key: bytes, meta: ObjectMeta) -> ObjectMeta:
        # dict.get is atomic under the GIL: no lock on the hit path.
        pending = self._touches.get(key)
        if pending is None:
            return meta
        return dataclasses.replace(
            meta, hits=meta.hits + pending[0], last_access=max(meta.last_access, pending[1])
        )

    def _forget_touches(self, key: bytes) -> None:
        with self._tlock:
            self._touches.pop(key, None)

    def put(self, key: bytes, meta: ObjectMeta) -> None:
        """Store ``meta`` under ``key``; its blob must be committed and complete."""
        self._check_open()
        ikey = _ikey(key)
        record = _encode_record(key, ikey, meta)
        path = self.blob_path(meta.blob)
        dead: list[BlobRef] = []
        added: list[BlobRef] = []
        try:
            with self._wlock:
                with self._env.begin(write=True) as txn:
                    try:
                        size = os.stat(path).st_size
                    except FileNotFoundError as e:
                        raise StoreError(f"blob {meta.blob.digest} is not on disk") from e
                    if size != meta.blob.size:
                        raise StoreError(
                            f"blob {meta.blob.digest} has {size} bytes, meta says {meta.blob.size}"
                        )
                    old_raw = txn.get(ikey, db=self._objects)
                    old = None if old_raw is None else _decode_record(ikey, old_raw)[1]
                    if old is None or old.blob != meta.blob:
                        if self._incref(txn, meta.blob, ikey):
                            added.append(meta.blob)
                        if old is not None and self._decref(txn, old.blob, ikey):
                            dead.append(old.blob)
                    txn.put(ikey, record, db=self._objects)
                    self._forget_touches(key)
                if dead:
                    self._finish_removal(dead)
                self._notify([(key, meta)], (), added, dead)
        except lmdb.Error as e:
            raise StoreError(f"put failed: {e}") from e
        except OSError as e:
            raise StoreError(f"put failed: {e}") from e

    def get(self, key: bytes) -> ObjectMeta | None:
        self._check_open()
        ikey = _ikey(key)
        try:
            with self._env.begin(db=self._objects) as txn:
                raw = txn.get(ikey)
        except lmdb.Error as e:
            raise StoreError(f"get failed: {e}") from e
        if raw is None:
            return None
        stored_key, meta = _decode_record(ikey, raw)
        if stored_key != key:
            return None  # a SHA-256 collision between two long keys
        return self._merged(key, meta)

    def update(self, key: bytes, meta: ObjectMeta) -> None:
        """Replace the meta of ``key`` keeping its blob (a 304, new counters); no-op if gone.

        ``meta`` replaces the hit counters too: callers derive it from :meth:`get`, which
        already counted the pending touches, so those are dropped. The pin flag is the one
        stored now: a pin set while the caller was revalidating is kept.
        """
        self._check_open()
        ikey = _ikey(key)
        try:
            with self._wlock:
                with self._env.begin(write=True, db=self._objects) as txn:
                    old_raw = txn.get(ikey)
                    if old_raw is None:
                        return
                    old = _decode_record(ikey, old_raw)[1]
                    if old.blob != meta.blob:
                        raise StoreError("update() cannot change the blob: use put()")
                    meta = dataclasses.replace(meta, pinned=old.pinned)
                    txn.put(ikey, _encode_record(key, ikey, meta))
                    self._forget_touches(key)
                self._notify([(key, meta)], (), (), ())
        except lmdb.Error as e:
            raise StoreError(f"update failed: {e}") from e

    def touch(self, key: bytes, now: float) -> None:
        """Count a hit (in memory; see :meth:`flush_touches`)."""
        with self._tlock:
            hits, last = self._touches.get(key, (0, 0.0))
            self._touches[key] = (hits + 1, max(last, now))
        observer = self.observer
        if observer is not None:
            observer.object_hit(key)
        # Never wait for the writer lock on the hit path: if it is busy, flush next time.
        if len(self._touches) >= _TOUCH_FLUSH_AT and self._wlock.acquire(blocking=False):
            try:
                self._flush_locked()
            finally:
                self._wlock.release()

    def flush_touches(self) -> int:
        """Write pending hit counts into the index (one write txn); returns keys written."""
        self._check_open()
        with self._wlock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        with self._tlock:
            pending, self._touches = self._touches, {}
        if not pending:
            return 0
        written = 0
        try:
            with self._env.begin(write=True, db=self._objects) as txn:
                for key, (hits, last) in pending.items():
                    ikey = _ikey(key)
                    raw = txn.get(ikey)
                    if raw is None:
                        continue
                    stored_key, meta = _decode_record(ikey, raw)
                    if stored_key != key:
                        continue
                    meta = dataclasses.replace(
                        meta, hits=meta.hits + hits, last_access=max(meta.last_access, last)
                    )
                    txn.put(ikey, _encode_record(key, ikey, meta))
                    written += 1
        except lmdb.Error as e:
            raise StoreError(f"flush_touches failed: {e}") from e
        return written

    def delete(self, key: bytes) -> bool:
        return bool(self.delete_keys([key]))

    def delete_keys(
        self,
        keys: Iterable[bytes],
        predicate: Callable[[bytes, ObjectMeta], bool] | None = None,
    ) -> list[bytes]:
        """Delete ``keys`` (only those whose current meta satisfies ``predicate``, if given);
        returns the keys deleted.

        Batches of ``_DELETE_BATCH`` per write transaction. The predicate is asked under the
        writer lock about the meta as it is now, so the evictor's "not pinned" check cannot
        race with a pin. It must not modify the store.
        """
        self._check_open()
        keys = list(keys)
        deleted: list[bytes] = []
        for start in range(0, len(keys), _DELETE_BATCH):
            dead: list[BlobRef] = []
            batch: list[bytes] = []
            try:
                with self._wlock:
                    with self._env.begin(write=True) as txn:
                        for key in keys[start : start + _DELETE_BATCH]:
                            ikey = _ikey(key)
                            raw = txn.get(ikey, db=self._objects)
                            if raw is None:
                                continue
                            stored_key, meta = _decode_record(ikey, raw)
                            if stored_key != key:
                                continue
                            if predicate is not None and not predicate(
                                key, self._merged(key, meta)
                            ):
                                continue
                            txn.delete(ikey, db=self._objects)
                            if self._decref(txn, meta.blob, ikey):
                                dead.append(meta.blob)
                            self._forget_touches(key)
                            batch.append(key)
                    self._finish_removal(dead)
                    self._notify((), batch, (), dead)
            except lmdb.Error as e:
                raise StoreError(f"delete failed: {e}") from e
            deleted += batch
        return deleted

    def delete_where(
        self, predicate: Callable[[bytes, ObjectMeta], bool], *, prefix: bytes | None = None
    ) -> int:
        """Delete every object for which ``predicate(key, meta)`` holds; returns the count.

        Scans a snapshot without holding the writer lock, then deletes in batches, asking the
        predicate again about the current meta (it may have changed since the scan). The
        predicate must not modify the store. With ``prefix`` only keys starting with it are
        considered (see :meth:`iter_prefix`). Slow: run it in a worker thread.
        """
        scan = self.iter_objects() if prefix is None else self.iter_prefix(prefix)
        candidates = [key for key, meta in scan if predicate(key, meta)]
        return len(self.delete_keys(candidates, predicate))

    def set_pinned_where(
        self,
        decide: Callable[[bytes, ObjectMeta], bool | None],
        *,
        prefix: bytes | None = None,
    ) -> int:
        """Set the pinned flag of objects to ``decide(key, meta)`` (None: leave it alone).

        Returns how many flags changed. Hit counters, pending ones included, are kept. Batched
        like :meth:`delete_where`, and as slow: run it in a worker thread.
        """
        scan = self.iter_objects() if prefix is None else self.iter_prefix(prefix)
        candidates = [key for key, meta in scan if decide(key, meta) not in (None, meta.pinned)]
        changed = 0
        for start in range(0, len(candidates), _DELETE_BATCH):
            updated: list[tuple[bytes, ObjectMeta]] = []
            try:
                with self._wlock:
                    with self._env.begin(write=True, db=self._objects) as txn:
                        for key in candidates[start : start + _DELETE_BATCH]:
                            ikey = _ikey(key)
                            raw = txn.get(ikey)
                            if raw is None:
                                continue
                            stored_key, meta = _decode_record(ikey, raw)
                            pinned = decide(key, meta) if stored_key == key else None
                            if pinned is None or pinned == meta.pinned:
                                continue
                            meta = dataclasses.replace(meta, pinned=pinned)
                            txn.put(ikey, _encode_record(key, ikey, meta))
                            updated.append((key, meta))
                            changed += 1
                    # The evictor learns of the new flags (a pinned object is never offered).
                    self._notify(updated, (), (), ())
            except lmdb.Error as e:
                raise StoreError(f"set_pinned_where failed: {e}") from e
        return changed

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, ObjectMeta]]:
        """Every (key, meta) whose key starts with ``prefix``, in one snapshot.

        Short keys are a key range of the index, so this reads only what matches; the few keys
        too long to store inline (kept under their hash) are all read and filtered. Same
        caveat as :meth:`iter_objects`: exhaust or close it promptly.
        """
        self._check_open()
        try:
            txn = self._env.begin(db=self._objects)
        except lmdb.Error as e:
            raise StoreError(f"iter_prefix failed: {e}") from e
        try:
            for start in (_INLINE + prefix, _HASHED):
                cursor = txn.cursor()
                if not cursor.set_range(start):
                    continue
                for ikey, raw in cursor:
                    if not ikey.startswith(start):
                        break
                    key, meta = _decode_record(ikey, raw)
                    if key.startswith(prefix):
                        yield key, self._merged(key, meta)
        except lmdb.Error as e:
            raise StoreError(f"iter_prefix failed: {e}") from e
        finally:
            txn.abort()

    def iter_objects(self) -> Iterator[tuple[bytes, ObjectMeta]]:
        """Every (key, meta) in one read-transaction snapshot.

        Exhaust or close the iterator promptly: while it is open LMDB cannot reuse pages freed
        by writers, so the index file grows.
        """
        self._check_open()
        try:
            txn = self._env.begin(db=self._objects)
        except lmdb.Error as e:
            raise StoreError(f"iter_objects failed: {e}") from e
        try:
            for ikey, raw in txn.cursor():
                key, meta = _decode_record(ikey, raw)
                yield key, self._merged(key, meta)
        except lmdb.Error as e:
            raise StoreError(f"iter_objects failed: {e}") from e
        finally:
            txn.abort()

    def stats(self) -> StoreStats:
        self._check_open()
        try:
            with self._env.begin() as txn:
                objects = txn.stat(self._objects)["entries"]
                blobs = txn.stat(self._blobs)["entries"]
                size = self._total_bytes(txn)
        except lmdb.Error as e:
            raise StoreError(f"stats failed: {e}") from e
        return StoreStats(objects=int(objects), blobs=int(blobs), bytes=size)
