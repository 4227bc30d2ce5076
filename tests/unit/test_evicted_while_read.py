"""An object evicted (or purged) between its index lookup and the opening of its blob is gone,
not corrupt: the request is served from the origin, and nothing is reported or dropped."""

from __future__ import annotations

import asyncio

from cache.store import BlobRef, ObjectMeta, Store
from swarmcache.http.dedup import DedupAttempt
from swarmcache.http.handler import CacheHandler
from swarmcache.http.target import Target

URL = b"http://example.com/big.iso"


def _stored(store: Store, key: bytes, body: bytes) -> ObjectMeta:
    with store.begin_blob() as writer:
        writer.write(body)
        ref = writer.commit()
    meta = ObjectMeta(URL, 200, b"OK", (), 1.0, 1.0, ref, stored_at=1.0)
    store.put(key, meta)
    return meta


def _corrupt_reported(handler: CacheHandler) -> float:
    value = handler.metrics.registry.get_sample_value("swarmcache_store_corrupt_blobs_total")
    return value or 0.0


def test_a_hit_on_an_object_evicted_meanwhile_is_not_a_corrupt_blob(
    handler: CacheHandler,
) -> None:
    store = handler.store
    meta = _stored(store, URL, b"old body " * 1000)
    store.delete(URL)  # the evictor, between the hit's lookup and its open
    served = asyncio.run(handler._serve_stored(None, None, URL, meta, b"", "hit"))  # type: ignore[arg-type]
    assert served is None  # the caller fetches it again
    assert _corrupt_reported(handler) == 0


def test_a_fingerprint_candidate_evicted_meanwhile_is_not_a_corrupt_blob(
    handler: CacheHandler,
) -> None:
    store = handler.store
    meta = _stored(store, URL, b"x" * (2 << 20))
    store.delete(URL)
    target = Target(URL, URL, "example.com", 80, b"/big.iso", b"example.com")
    attempt = DedupAttempt(target=target, fields=[], length=meta.blob.size, validator=None)
    ref: BlobRef = meta.blob
    verdict, fd = asyncio.run(handler.dedup._confirm(attempt, ref, b"x" * 100))
    assert fd == -1 and verdict.value == "unusable"
    assert _corrupt_reported(handler) == 0
