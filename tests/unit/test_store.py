"""Tests for cache/store.py: the LMDB index and the content-addressed blob files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.store import (
    BlobRef,
    CorruptBlob,
    ObjectMeta,
    Store,
    StoreError,
)

ROOT = Path(__file__).resolve().parents[2]


def write_blob(store: Store, body: bytes) -> BlobRef:
    with store.begin_blob() as w:
        w.write(body)
        return w.commit()


def meta_for(ref: BlobRef, url: bytes = b"http://example.com/x", **kw: Any) -> ObjectMeta:
    return dataclasses.replace(
        ObjectMeta(
            url=url,
            status=200,
            reason=b"OK",
            headers=((b"content-type", b"text/plain"), (b"etag", b'"v1"')),
            request_time=1000.0,
            response_time=1000.5,
            blob=ref,
            vary=(b"accept-encoding",),
            stored_at=1000.5,
        ),
        **kw,
    )


def blob_files(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "blobs").rglob("*") if p.is_file())


def read_fd(fd: int) -> bytes:
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- blobs ----------------------------------------------------------------------------------


def test_blob_commit_is_content_addressed_and_sharded(store: Store, tmp_path: Path) -> None:
    body = os.urandom(100_000)
    w = store.begin_blob()
    assert Path(w.path).parent == tmp_path / "store" / "tmp"
    w.write(body[:1000])
    w.write(memoryview(body)[1000:])
    assert w.size == len(body)
    ref = w.commit()
    digest = hashlib.sha256(body).hexdigest()
    assert ref == BlobRef(digest, len(body))
    path = Path(store.blob_path(ref))
    assert path == tmp_path / "store" / "blobs" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == body
    assert read_fd(store.open_blob(ref)) == body
    assert not os.listdir(tmp_path / "store" / "tmp")
    assert not os.path.exists(w.path)


def test_empty_blob(store: Store) -> None:
    ref = write_blob(store, b"")
    assert ref == BlobRef(hashlib.sha256(b"").hexdigest(), 0)
    assert read_fd(store.open_blob(ref)) == b""


def test_read_while_write(store: Store) -> None:
    w = store.begin_blob()
    reader = os.open(w.path, os.O_RDONLY)
    try:
        w.write(b"a" * 10)
        assert os.pread(reader, 100, 0) == b"a" * 10
        w.write(b"b" * 5)
        assert os.pread(reader, 100, w.size - 5) == b"b" * 5
        ref = w.commit()
        # The reader's descriptor survives the rename.
        assert os.pread(reader, 100, 0) == b"a" * 10 + b"b" * 5
    finally:
        os.close(reader)
    assert ref.size == 15


def test_dedup_drops_second_copy(store: Store, tmp_path: Path) -> None:
    ref1 = write_blob(store, b"same body")
    ref2 = write_blob(store, b"same body")
    assert ref1 == ref2
    assert len(blob_files(tmp_path / "store")) == 1
    assert not os.listdir(tmp_path / "store" / "tmp")


def test_commit_heals_a_truncated_copy(store: Store) -> None:
    ref = write_blob(store, b"0123456789")
    with open(store.blob_path(ref), "r+b") as f:
        f.truncate(3)
    with pytest.raises(CorruptBlob):
        store.open_blob(ref)
    assert write_blob(store, b"0123456789") == ref
    assert read_fd(store.open_blob(ref)) == b"0123456789"


def test_abort_is_idempotent_and_final(store: Store) -> None:
    w = store.begin_blob()
    w.write(b"partial")
    w.abort()
    w.abort()
    assert not os.path.exists(w.path)
    with pytest.raises(StoreError):
        w.write(b"more")
    with pytest.raises(StoreError):
        w.commit()
    with pytest.raises(StoreError):
        w.fileno()


def test_abort_after_commit_keeps_blob(store: Store) -> None:
    w = store.begin_blob()
    w.write(b"kept")
    ref = w.commit()
    w.abort()
    with pytest.raises(StoreError):
        w.commit()
    assert Path(store.blob_path(ref)).read_bytes() == b"kept"


def test_writer_context_aborts_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.begin_blob() as w:
        w.write(b"x")
        path = w.path
        raise RuntimeError
    assert not os.path.exists(path)


def test_commit_failure_cleans_up(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    w = store.begin_blob()
    w.write(b"doomed")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreError):
        w.commit()
    assert not os.path.exists(w.path)
    with pytest.raises(StoreError):
        w.write(b"more")
    w.abort()


def test_blob_ref_rejects_path_tricks() -> None:
    with pytest.raises(ValueError):
        BlobRef("../../etc/passwd", 1)
    with pytest.raises(ValueError):
        BlobRef("A" * 64, 1)
    with pytest.raises(ValueError):
        BlobRef("a" * 64, -1)


# --- index ----------------------------------------------------------------------------------


def test_put_get_roundtrip(store: Store) -> None:
    ref = write_blob(store, b"hello")
    meta = meta_for(ref)
    assert store.get(b"k") is None
    store.put(b"k", meta)
    assert store.get(b"k") == meta
    assert store.stats() == type(store.stats())(objects=1, blobs=1, bytes=5)


def test_put_refuses_missing_or_wrong_size_blob(store: Store) -> None:
    missing = BlobRef(hashlib.sha256(b"never written").hexdigest(), 13)
    with pytest.raises(StoreError):
        store.put(b"k", meta_for(missing))
    ref = write_blob(store, b"hello")
    with pytest.raises(StoreError):
        store.put(b"k", meta_for(BlobRef(ref.digest, ref.size + 1)))
    assert store.get(b"k") is None
    assert store.stats().objects == 0
    assert store.stats().bytes == 0


def test_shared_blob_refcount(store: Store, tmp_path: Path) -> None:
    ref = write_blob(store, b"identical body")
    store.put(b"a", meta_for(ref, url=b"http://a/"))
    ref_b = write_blob(store, b"identical body")
    store.put(b"b", meta_for(ref_b, url=b"http://b/"))
    assert ref == ref_b
    assert len(blob_files(tmp_path / "store")) == 1
    assert store.stats() == type(store.stats())(objects=2, blobs=1, bytes=14)

    assert store.delete(b"a") is True
    assert store.delete(b"a") is False
    assert os.path.exists(store.blob_path(ref))
    assert read_fd(store.open_blob(ref)) == b"identical body"
    assert store.stats().blobs == 1

    assert store.delete(b"b") is True
    assert not os.path.exists(store.blob_path(ref))
    assert blob_files(tmp_path / "store") == []
    assert store.stats() == type(store.stats())(objects=0, blobs=0, bytes=0)


def test_put_replacing_blob_decrefs_old(store: Store) -> None:
    old = write_blob(store, b"version one")
    store.put(b"k", meta_for(old))
    store.put(b"k", meta_for(old, hits=3))  # same blob again: no double count
    assert store.stats().blobs == 1
    new = write_blob(store, b"version two!")
    store.put(b"k", meta_for(new))
    assert not os.path.exists(store.blob_path(old))
    assert store.stats() == type(store.stats())(objects=1, blobs=1, bytes=12)
    assert store.delete(b"k")
    assert not os.path.exists(store.blob_path(new))


def test_update_and_touch(store: Store) -> None:
    ref = write_blob(store, b"body")
    store.put(b"k", meta_for(ref))
    store.touch(b"k", 2000.0)
    store.touch(b"k", 1500.0)
    got = store.get(b"k")
    assert got is not None
    assert (got.hits, got.last_access) == (2, 2000.0)
    assert store.flush_touches() == 1
    assert store.flush_touches() == 0
    got = store.get(b"k")
    assert got is not None
    assert (got.hits, got.last_access) == (2, 2000.0)

    store.touch(b"k", 3000.0)
    current = store.get(b"k")
    assert current is not None
    refreshed = dataclasses.replace(current, response_time=2999.0, headers=((b"etag", b'"v2"'),))
    store.update(b"k", refreshed)
    store.flush_touches()  # the touch was already in `current`: not counted twice
    assert refreshed.hits == 3
    assert store.get(b"k") == refreshed
    assert store.stats().blobs == 1

    other = write_blob(store, b"other")
    with pytest.raises(StoreError):
        store.update(b"k", meta_for(other))
    store.update(b"gone", refreshed)  # no-op
    assert store.get(b"gone") is None
    store.touch(b"gone", 1.0)
    store.flush_touches()
    assert store.get(b"gone") is None


def test_touch_flushes_itself_when_many_pile_up(store: Store) -> None:
    ref = write_blob(store, b"body")
    keys = [b"k%d" % i for i in range(9000)]
    for key in keys[:5]:
        store.put(key, meta_for(ref))
    for key in keys:
        store.touch(key, 5.0)
    # The automatic flush wrote the first 8192 touches: nothing of them is pending any more.
    assert len(store._touches) < 8192
    assert all(m.hits == 1 for _, m in store.iter_objects())


def test_long_keys(store: Store) -> None:
    ref = write_blob(store, b"body")
    long_key = b"GET http://example.com/" + b"x" * 5000
    longer_key = long_key + b"y"
    store.put(long_key, meta_for(ref))
    assert store.get(long_key) == meta_for(ref)
    assert store.get(longer_key) is None
    store.put(longer_key, meta_for(ref, hits=1))
    assert dict(store.iter_objects()) == {
        long_key: meta_for(ref),
        longer_key: meta_for(ref, hits=1),
    }
    store.touch(long_key, 9.0)
    store.flush_touches()
    assert store.get(long_key) == meta_for(ref, hits=1, last_access=9.0)
    assert store.delete(long_key)
    assert store.get(long_key) is None
    assert store.drop_blob(ref) == 1


def test_delete_where_by_host(store: Store) -> None:
    for i in range(2500):
        host = b"a.example" if i % 2 else b"b.example"
        ref = write_blob(store, b"body %d" % (i % 7))
        store.put(b"key%d" % i, meta_for(ref, url=b"http://" + host + b"/%d" % i))
    n = store.delete_where(lambda key, meta: meta.url.startswith(b"http://a.example/"))
    assert n == 1250
    remaining = list(store.iter_objects())
    assert len(remaining) == 1250
    assert all(m.url.startswith(b"http://b.example/") for _, m in remaining)
    assert store.stats().objects == 1250
    # Bodies used only by a.example objects are gone, shared ones are kept.
    assert store.stats().blobs == len({m.blob for _, m in remaining})


def test_iter_objects_is_a_snapshot(store: Store) -> None:
    ref = write_blob(store, b"body")
    for i in range(10):
        store.put(b"k%d" % i, meta_for(ref))
    it = store.iter_objects()
    first = next(it)
    store.delete(b"k9")
    rest = list(it)
    assert len([first, *rest]) == 10
    assert store.stats().objects == 9


def test_restart_keeps_objects(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with Store(directory) as s:  # the default 64 GiB map is sparse
        refs = [write_blob(s, b"body %d" % i) for i in range(20)]
        for i, ref in enumerate(refs):
            s.put(b"k%d" % i, meta_for(ref))
        s.touch(b"k0", 42.0)  # pending at close: written back by close()
        before = s.stats()
    with Store(directory) as s:
        assert s.stats() == before
        for i, ref in enumerate(refs):
            expected = meta_for(ref, hits=1, last_access=42.0) if i == 0 else meta_for(ref)
            assert s.get(b"k%d" % i) == expected
            assert read_fd(s.open_blob(ref)) == b"body %d" % i


def test_closed_store_refuses(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    s.close()
    s.close()
    with pytest.raises(StoreError):
        s.get(b"k")
    with pytest.raises(StoreError):
        s.begin_blob()


def test_one_store_per_directory(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path / "store")
    # The refused second open must not have cleared the first one's temp files.
    w = store.begin_blob()
    w.write(b"x")
    assert os.path.exists(w.path)
    w.abort()


def test_open_clears_tmp(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    Store(directory).close()
    (directory / "tmp" / "leftover.part").write_bytes(b"junk")
    (directory / "tmp" / "subdir").mkdir()
    Store(directory).close()
    assert os.listdir(directory / "tmp") == []


# --- integrity ------------------------------------------------------------------------------


def test_truncated_blob_raises_corrupt(store: Store) -> None:
    ref = write_blob(store, b"x" * 1000)
    store.put(b"k", meta_for(ref))
    with open(store.blob_path(ref), "r+b") as f:
        f.truncate(500)
    with pytest.raises(CorruptBlob):
        store.open_blob(ref)
    assert store.verify_blob(ref) is False
    os.unlink(store.blob_path(ref))
    with pytest.raises(CorruptBlob):
        store.open_blob(ref)
    assert store.verify_blob(ref) is False


def test_bit_flip_fails_verification(store: Store) -> None:
    body = os.urandom(200_000)
    ref = write_blob(store, body)
    store.put(b"k", meta_for(ref))
    store.put(b"k2", meta_for(ref))
    flipped = bytearray(body)
    flipped[123_456] ^= 0x01
    Path(store.blob_path(ref)).write_bytes(flipped)
    os.close(store.open_blob(ref))  # same size: only hashing can tell
    assert store.verify_blob(ref) is False
    assert store.is_verified(ref) is False
    assert store.drop_blob(ref) == 2
    assert store.get(b"k") is None and store.get(b"k2") is None
    assert not os.path.exists(store.blob_path(ref))
    assert store.stats() == type(store.stats())(objects=0, blobs=0, bytes=0)


def test_verify_hashes_at_most_once(store: Store) -> None:
    ref = write_blob(store, b"y" * 5000)
    assert store.is_verified(ref) is False
    assert store.verify_blob(ref) is True
    assert store.is_verified(ref) is True
    # A later same-size change is not re-hashed within this process's lifetime...
    Path(store.blob_path(ref)).write_bytes(b"z" * 5000)
    assert store.verify_blob(ref) is True
    # ...but dropping the blob forgets it.
    store.drop_blob(ref)
    assert store.is_verified(ref) is False


def test_concurrent_verify_hashes_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = write_blob(store, b"w" * 5000)
    calls = 0
    release = threading.Event()
    real = Store._hash_matches

    def slow_hash(self: Store, r: BlobRef) -> bool:
        nonlocal calls
        calls += 1
        release.wait(5)
        return real(self, r)

    monkeypatch.setattr(Store, "_hash_matches", slow_hash)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.verify_blob(ref))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert results == [True] * 4
    assert calls == 1


def test_sweep_orphans(store: Store) -> None:
    kept = write_blob(store, b"referenced")
    store.put(b"k", meta_for(kept))
    orphan = write_blob(store, b"never put")
    assert store.sweep_orphans() == 0  # too young: its put may still be coming
    assert store.sweep_orphans(min_age=0) == 1
    assert not os.path.exists(store.blob_path(orphan))
    assert read_fd(store.open_blob(kept)) == b"referenced"


def test_threads_share_the_store(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                key = b"t%d-%d" % (n, i)
                ref = write_blob(store, b"shared" if i % 2 else key)
                store.put(key, meta_for(ref))
                assert store.get(key) == meta_for(ref)
                store.touch(key, float(i))
                if i % 3 == 0:
                    assert store.delete(key)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    objects = list(store.iter_objects())
    assert store.stats().objects == len(objects) == 4 * 66
    assert store.stats().blobs == len({m.blob for _, m in objects})
    assert store.stats().bytes == sum(r.size for r in {m.blob for _, m in objects})


# --- kill -9 ------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from cache.store import Store, ObjectMeta
    directory, mode = sys.argv[1], sys.argv[2]
    store = Store(directory)
    body = bytes(range(256)) * 4096  # 1 MiB
    w = store.begin_blob()
    w.write(body[: len(body) // 2])
    if mode != "half":
        w.write(body[len(body) // 2 :])
        ref = w.commit()
        if mode == "put":
            store.put(b"key", ObjectMeta(
                url=b"http://example.com/big", status=200, reason=b"OK", headers=(),
                request_time=1.0, response_time=2.0, blob=ref,
            ))
    print(w.path, flush=True)
    time.sleep(60)
    """
)
BODY = bytes(range(256)) * 4096


def run_and_kill(directory: Path, mode: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        temp_path = proc.stdout.readline().strip()
        assert temp_path, "child died before it was ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return temp_path


def test_kill9_mid_blob(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    temp_path = run_and_kill(directory, "half")
    assert os.path.getsize(temp_path) == len(BODY) // 2  # the crash left a partial file
    with Store(directory) as s:
        assert not os.path.exists(temp_path)
        assert os.listdir(directory / "tmp") == []
        assert blob_files(directory) == []
        assert s.get(b"key") is None
        assert s.stats() == type(s.stats())(objects=0, blobs=0, bytes=0)


def test_kill9_after_commit_before_put(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    run_and_kill(directory, "commit")
    digest = hashlib.sha256(BODY).hexdigest()
    with Store(directory) as s:
        assert s.get(b"key") is None
        assert list(s.iter_objects()) == []
        assert s.stats() == type(s.stats())(objects=0, blobs=0, bytes=0)
        # The committed blob is a complete orphan: nothing serves it, the sweep removes it.
        assert [p.name for p in blob_files(directory)] == [digest]
        assert s.sweep_orphans(min_age=0) == 1
        assert blob_files(directory) == []


def test_kill9_after_put(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    run_and_kill(directory, "put")
    with Store(directory) as s:
        meta = s.get(b"key")
        assert meta is not None
        assert meta.blob == BlobRef(hashlib.sha256(BODY).hexdigest(), len(BODY))
        assert read_fd(s.open_blob(meta.blob)) == BODY
        assert s.verify_blob(meta.blob)
        assert s.stats() == type(s.stats())(objects=1, blobs=1, bytes=len(BODY))
        assert os.listdir(directory / "tmp") == []


# --- encoding -----------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
small_bytes = st.binary(max_size=64)
metas = st.builds(
    ObjectMeta,
    url=st.binary(max_size=300),
    status=st.integers(0, 65535),
    reason=small_bytes,
    headers=st.lists(st.tuples(small_bytes, small_bytes), max_size=8).map(tuple),
    request_time=finite,
    response_time=finite,
    blob=st.builds(
        BlobRef,
        digest=st.binary(min_size=32, max_size=32).map(bytes.hex),
        size=st.integers(0, 2**64 - 1),
    ),
    vary=st.lists(small_bytes, max_size=4).map(tuple),
    stored_at=finite,
    hits=st.integers(0, 2**64 - 1),
    last_access=finite,
    pinned=st.booleans(),
)


@given(metas)
def test_meta_roundtrip(meta: ObjectMeta) -> None:
    assert ObjectMeta.decode(meta.encode()) == meta


@given(st.binary(max_size=400))
def test_meta_decode_garbage_raises_store_error(data: bytes) -> None:
    with contextlib.suppress(StoreError):
        ObjectMeta.decode(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(metas, st.data())
def test_meta_decode_damaged_record(meta: ObjectMeta, data: st.DataObject) -> None:
    encoded = bytearray(meta.encode())
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(StoreError):
        ObjectMeta.decode(bytes(encoded[:cut]))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] ^= data.draw(st.integers(1, 255))
    try:
        decoded = ObjectMeta.decode(bytes(encoded))
    except StoreError:
        return
    # The encoding is canonical: whatever decodes re-encodes to exactly the same bytes.
    assert decoded.encode() == bytes(encoded)


def test_meta_encode_rejects_unrepresentable() -> None:
    ref = BlobRef("0" * 64, 1)
    with pytest.raises(StoreError):
        meta_for(ref, status=70000).encode()
    with pytest.raises(StoreError):
        meta_for(ref, hits=-1).encode()
    with pytest.raises(StoreError):
        meta_for(ref, stored_at=float("nan")).encode()


def test_corrupt_index_record_raises_store_error(store: Store) -> None:
    ref = write_blob(store, b"body")
    store.put(b"k", meta_for(ref))
    with store._env.begin(write=True, db=store._objects) as txn:
        txn.put(b"kk", b"\x01garbage")
    with pytest.raises(StoreError):
        store.get(b"k")


def test_spliced_bytes_are_hashed_from_the_file_at_commit(store: Store) -> None:
    """Bytes appended behind the writer's back (os.splice) still get the right digest."""
    head, middle, tail = os.urandom(1000), os.urandom(300_000), os.urandom(77)
    writer = store.begin_blob()
    writer.write(head)
    os.write(writer.fileno(), middle)
    writer.account_written(len(middle))
    writer.write(tail)
    ref = writer.commit(fsync=False)
    body = head + middle + tail
    assert ref.digest == hashlib.sha256(body).hexdigest()
    assert ref.size == len(body)


def test_a_spliced_blob_shorter_than_accounted_is_refused(store: Store) -> None:
    writer = store.begin_blob()
    writer.write(b"abc")
    writer.account_written(10)  # claims bytes that never reached the file
    with pytest.raises(StoreError, match="shorter than written"):
        writer.commit(fsync=False)
    assert not os.path.exists(writer.path)


def test_update_keeps_a_pin_set_since_the_caller_read_the_object(store: Store) -> None:
    """A revalidation reads the object, waits for the origin's 304, then updates it: a pin the
    operator set in between must survive (inspect and top show the stored flag)."""
    ref = write_blob(store, b"body")
    store.put(b"k", meta_for(ref))
    read_before_pin = store.get(b"k")
    assert read_before_pin is not None and not read_before_pin.pinned
    assert store.set_pinned_where(lambda key, meta: True) == 1
    store.update(b"k", dataclasses.replace(read_before_pin, response_time=2999.0))
    got = store.get(b"k")
    assert got is not None and got.pinned and got.response_time == 2999.0
