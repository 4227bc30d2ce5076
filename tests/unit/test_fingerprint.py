"""Content fingerprints (cache/fingerprint.py): the pure decisions and the LMDB table."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.fingerprint import (
    FingerprintIndex,
    SampleVerdict,
    fingerprint,
    judge_sample,
    parse_content_range,
    sample_ranges,
    strong_validator,
)
from cache.store import BlobRef, Store, StoreError
from swarmcache.http.dedup import _copy_range
from tests.unit.test_store import meta_for, write_blob

# --- fingerprint ----------------------------------------------------------------------


def test_fingerprint_depends_on_prefix_length_and_total_length() -> None:
    prefix = os.urandom(1000)
    base = fingerprint(prefix, 5000)
    assert len(base) == 40 and base[:8] == (5000).to_bytes(8, "big")
    assert fingerprint(prefix, 5000) == base
    assert fingerprint(prefix, 5001) != base  # same start, other length: other file
    assert fingerprint(prefix[:999], 5000) != base  # other prefix span never compares
    assert fingerprint(b"\x00" + prefix[1:], 5000) != base


def test_fingerprint_refuses_a_prefix_longer_than_the_body() -> None:
    with pytest.raises(ValueError):
        fingerprint(b"abc", 2)


# --- sample ranges ------------------------------------------------------------------------


@given(
    length=st.integers(min_value=1, max_value=1 << 40),
    skip=st.integers(min_value=0, max_value=1 << 20),
    count=st.integers(min_value=1, max_value=8),
    size=st.integers(min_value=1, max_value=1 << 16),
    seed=st.integers(),
)
def test_sample_ranges_stay_in_the_body_past_the_prefix_and_include_the_end(
    length: int, skip: int, count: int, size: int, seed: int
) -> None:
    ranges = sample_ranges(length, skip=skip, count=count, size=size, rng=random.Random(seed))
    if skip >= length:
        assert ranges == []
        return
    assert ranges == sorted(ranges)
    assert 1 <= len(ranges) <= count
    for first, last in ranges:
        assert skip <= first <= last < length
    # The last bytes are always compared: formats keep signatures and directories there.
    assert ranges[-1][1] == length - 1
    # Either the samples, or (when the rest is small) the whole rest of the body.
    if length - skip <= count * size:
        assert ranges == [(skip, length - 1)]
    else:
        assert all(last - first + 1 == size for first, last in ranges)


def test_sample_offsets_vary_between_confirmations() -> None:
    rng = random.SystemRandom()
    draws = {
        tuple(sample_ranges(50 << 20, skip=65536, count=4, size=16384, rng=rng)) for _ in range(20)
    }
    assert len(draws) > 1  # an origin cannot know which bytes will be compared


@pytest.mark.parametrize(("count", "size"), [(0, 10), (1, 0)])
def test_sample_ranges_reject_nonsense(count: int, size: int) -> None:
    with pytest.raises(ValueError):
        sample_ranges(100, skip=0, count=count, size=size, rng=random.Random(1))


# --- Content-Range and validators -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"bytes 0-9/10", (0, 9, 10)),
        (b" bytes 100-199/5000 ", (100, 199, 5000)),
        (b"bytes 9-0/10", None),
        (b"bytes 0-10/10", None),
        (b"bytes */10", None),
        (b"bytes 0-9/*", None),
        (b"items 0-9/10", None),
        (b"bytes -1-9/10", None),
        (b"bytes 0-9/10, 20-29/10", None),
        (b"", None),
    ],
)
def test_parse_content_range(value: bytes, parsed: tuple[int, int, int] | None) -> None:
    assert parse_content_range(value) == parsed


@given(st.binary(max_size=60))
def test_parse_content_range_never_raises(value: bytes) -> None:
    result = parse_content_range(value)
    if result is not None:
        first, last, complete = result
        assert 0 <= first <= last < complete


def test_only_a_single_strong_etag_is_a_validator() -> None:
    assert strong_validator([(b"etag", b'"abc"')]) == b'"abc"'
    assert strong_validator([(b"etag", b'W/"abc"')]) is None
    assert strong_validator([]) is None
    assert strong_validator([(b"etag", b'"a"'), (b"etag", b'"b"')]) is None


# --- judging one sample -----------------------------------------------------------------


BODY = os.urandom(4096)
WANT = (1000, 1999)
EXPECTED = BODY[1000:2000]


def _206(first: int = 1000, last: int = 1999, total: int = 4096) -> list[tuple[bytes, bytes]]:
    return [(b"content-range", b"bytes %d-%d/%d" % (first, last, total))]


def test_the_same_bytes_confirm() -> None:
    verdict = judge_sample(206, _206(), EXPECTED, WANT, 4096, EXPECTED, validator=None)
    assert verdict is SampleVerdict.SAME


def test_other_bytes_are_a_different_file() -> None:
    other = bytes([EXPECTED[0] ^ 1]) + EXPECTED[1:]
    verdict = judge_sample(206, _206(), other, WANT, 4096, EXPECTED, validator=None)
    assert verdict is SampleVerdict.DIFFERENT


@pytest.mark.parametrize(
    ("status", "headers", "body", "validator"),
    [
        (200, [], EXPECTED, None),  # the origin ignored Range
        (206, [], EXPECTED, None),  # no Content-Range
        (206, _206(total=4097), EXPECTED, None),  # a different length: another version
        (206, _206(first=1001), EXPECTED, None),  # not the range asked for
        (206, _206() + _206(), EXPECTED, None),  # two ranges
        (206, _206(), EXPECTED[:-1], None),  # short body
        (206, _206(), EXPECTED + b"x", None),  # long body
        (206, [*_206(), (b"etag", b'"v2"')], EXPECTED, b'"v1"'),  # another version
    ],
)
def test_anything_but_a_proper_partial_response_proves_nothing(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, validator: bytes | None
) -> None:
    verdict = judge_sample(status, headers, body, WANT, 4096, EXPECTED, validator=validator)
    assert verdict is SampleVerdict.UNUSABLE


@given(st.binary(min_size=1000, max_size=1000))
def test_a_sample_is_same_exactly_when_the_bytes_are_equal(body: bytes) -> None:
    verdict = judge_sample(206, _206(), body, WANT, 4096, EXPECTED, validator=None)
    assert (verdict is SampleVerdict.SAME) == (body == EXPECTED)
    assert verdict is not SampleVerdict.UNUSABLE


# --- the LMDB table -----------------------------------------------------------------------


def _stored(store: Store, key: bytes, body: bytes) -> BlobRef:
    ref = write_blob(store, body)
    store.put(key, meta_for(ref, url=key))
    return ref


def test_candidates_are_the_stored_blobs_with_that_fingerprint(store: Store) -> None:
    index = FingerprintIndex(store)
    prefix = os.urandom(100)
    a = _stored(store, b"http://a/x", prefix + os.urandom(900))
    b = _stored(store, b"http://b/y", prefix + os.urandom(900))
    fp = fingerprint(prefix, 1000)
    index.add(fp, a, b"origin-1")
    index.add(fp, a, b"origin-1")  # recording the same blob again adds nothing
    index.add(fp, b, b"origin-1")
    assert sorted(index.candidates(fp, 1000), key=lambda r: r.digest) == sorted(
        [a, b], key=lambda r: r.digest
    )
    assert len(index) == 2
    assert index.candidates(fingerprint(prefix, 1001), 1001) == []


def test_a_scope_filter_keeps_candidates_of_that_scope_only(store: Store) -> None:
    """A sampled match may only use a body the same origin (or service) sent in full."""
    index = FingerprintIndex(store)
    prefix = os.urandom(100)
    mine = _stored(store, b"http://a/x", prefix + os.urandom(900))
    theirs = _stored(store, b"http://evil/x", prefix + os.urandom(900))
    fp = fingerprint(prefix, 1000)
    index.add(fp, mine, b"a @10.0.0.1:80")
    index.add(fp, theirs, b"evil @10.6.6.6:80")
    index.add(fp, mine, b"service:dist")  # the same blob, also sent in full by a service
    assert index.candidates(fp, 1000, b"a @10.0.0.1:80") == [mine]
    assert index.candidates(fp, 1000, b"service:dist") == [mine]
    assert index.candidates(fp, 1000, b"a @10.0.0.2:80") == []
    assert sorted(index.candidates(fp, 1000), key=lambda r: r.digest) == sorted(
        [mine, theirs], key=lambda r: r.digest
    )
    assert index.has_length(1000) and not index.has_length(999)


def test_an_entry_whose_blob_is_gone_is_ignored_and_removed(store: Store) -> None:
    index = FingerprintIndex(store)
    prefix = os.urandom(100)
    a = _stored(store, b"http://a/x", prefix + os.urandom(900))
    b = _stored(store, b"http://b/y", prefix + os.urandom(900))
    fp = fingerprint(prefix, 1000)
    index.add(fp, a, b"origin-1")
    index.add(fp, b, b"origin-1")
    store.delete(b"http://a/x")  # a's last reference: its file is unlinked
    assert index.candidates(fp, 1000) == [b]
    assert len(index) == 1


def test_a_blob_shared_by_two_urls_stays_a_candidate_until_both_are_gone(store: Store) -> None:
    index = FingerprintIndex(store)
    body = os.urandom(1000)
    ref = _stored(store, b"http://a/x", body)
    assert _stored(store, b"http://b/x?token=2", body) == ref
    assert store.stats().blobs == 1
    fp = fingerprint(body[:100], 1000)
    index.add(fp, ref, b"origin-1")
    store.delete(b"http://a/x")
    assert index.candidates(fp, 1000) == [ref]
    store.delete(b"http://b/x?token=2")
    assert index.candidates(fp, 1000) == []


def test_prune_removes_every_dead_entry(store: Store) -> None:
    index = FingerprintIndex(store)
    refs = [_stored(store, b"http://h/%d" % i, os.urandom(300)) for i in range(5)]
    for i, ref in enumerate(refs):
        index.add(fingerprint(b"%d" % i, 300), ref, b"origin-1")
    for i in (0, 2, 4):
        store.delete(b"http://h/%d" % i)
    assert index.prune() == 3
    assert len(index) == 2
    assert index.prune() == 0


def test_the_table_survives_a_reopen(tmp_path: Path) -> None:
    body = os.urandom(500)
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        ref = _stored(store, b"http://a/x", body)
        FingerprintIndex(store).add(fingerprint(body[:10], 500), ref, b"origin-1")
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        assert FingerprintIndex(store).candidates(fingerprint(body[:10], 500), 500) == [ref]


def test_a_duplicate_body_commits_to_the_existing_blob(store: Store) -> None:
    body = os.urandom(70_000)
    first = _stored(store, b"http://a/x", body)
    with store.begin_blob() as writer:
        writer.write(body)
        again = writer.commit(fsync=True)
        assert not os.path.exists(writer.path)  # the copy is gone, the original kept
    assert again == first
    assert hashlib.sha256(Path(store.blob_path(first)).read_bytes()).hexdigest() == first.digest


# --- copying the rest of a stored blob -----------------------------------------------------------


def test_copy_range_appends_exactly_the_requested_bytes(tmp_path: Path) -> None:
    src_path = tmp_path / "src"
    body = os.urandom(3 << 20)
    src_path.write_bytes(body)
    dst_path = tmp_path / "dst"
    src = os.open(src_path, os.O_RDONLY)
    dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(dst, body[:1000])
        assert _copy_range(src, dst, 1000, len(body) - 1000) == len(body) - 1000
    finally:
        os.close(src)
        os.close(dst)
    assert dst_path.read_bytes() == body


def test_copy_range_refuses_to_read_past_the_end(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"short")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(StoreError, match="shorter"):
            _copy_range(src, dst, 0, 100)
    finally:
        os.close(src)
        os.close(dst)
