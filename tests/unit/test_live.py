"""The live ring: every reader gets a contiguous slice of what was written (or contiguous pieces
separated only by recorded skips), and the ring never holds more than its blocks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.live import (
    Cursor,
    LagPolicy,
    LiveRules,
    Ring,
    continues_stream,
    shareable_response,
    stream_may_continue,
)
from swarmcache.config import Config, ConfigError

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 700)),
        st.tuples(st.just("join"), st.integers(0, 4), st.integers(0, 900)),
        st.tuples(st.just("read"), st.integers(0, 4), st.integers(1, 600)),
        st.tuples(st.just("seam")),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(
    ops=_ops,
    block=st.integers(1, 200),
    blocks=st.integers(1, 8),
    align=st.sampled_from([1, 3, 188]),
    lag=st.sampled_from(list(LagPolicy)),
    seed=st.integers(0, 2**32),
)
def test_readers_get_contiguous_slices_of_the_stream_in_bounded_memory(
    ops: list[tuple[object, ...]],
    block: int,
    blocks: int,
    align: int,
    lag: LagPolicy,
    seed: int,
) -> None:
    ring = Ring(block_bytes=block, blocks=blocks, align=align)
    rnd = random.Random(seed)
    written = bytearray()
    # reader -> (cursor, the offset we expect it to be at, cut off?)
    readers: dict[int, tuple[Cursor, int, bool]] = {}
    for op in ops:
        if op[0] == "write":
            data = rnd.randbytes(int(op[1]))  # type: ignore[call-overload]
            ring.append(data)
            written += data
        elif op[0] == "seam":
            # The upstream broke: its unfinished unit is dropped, never shown to a reader.
            dropped = ring.drop_partial()
            assert dropped < align
            del written[len(written) - dropped :]
        elif op[0] == "join":
            cursor = ring.join(int(op[2]))  # type: ignore[call-overload]
            assert ring.tail <= cursor.offset <= ring.head
            assert cursor.offset >= ring.head - int(op[2]) - align or cursor.offset == ring.tail
            readers[int(op[1])] = (cursor, cursor.offset, False)  # type: ignore[call-overload]
        elif int(op[1]) in readers:  # type: ignore[call-overload]
            reader = int(op[1])  # type: ignore[call-overload]
            cursor, expected, cut = readers[reader]
            if cut:
                continue
            was_behind = ring.behind(cursor)
            tail_before = ring.tail
            got = ring.read(cursor, int(op[2]), lag)  # type: ignore[call-overload]
            if got.behind:
                assert lag is LagPolicy.DISCONNECT and was_behind and not got.views
                readers[reader] = (cursor, expected, True)
                continue
            if got.skipped:
                assert was_behind and lag is LagPolicy.SKIP
                expected += got.skipped
                assert expected >= tail_before
            else:
                assert not was_behind
            data = b"".join(got.views)
            assert len(data) == got.nbytes <= int(op[2])  # type: ignore[call-overload]
            assert data == written[expected : expected + len(data)]
            expected += len(data)
            assert cursor.offset == expected
            readers[reader] = (cursor, expected, False)
        assert ring.held_bytes <= ring.capacity == block * blocks
        # Only whole units are readable; the rest of an unfinished one waits.
        assert ring.head == len(written) - ring.pending
        assert ring.head % align == 0 and ring.pending < align
        assert ring.head - ring.tail <= ring.capacity


def test_a_reader_that_keeps_up_gets_the_whole_stream() -> None:
    ring = Ring(block_bytes=10, blocks=2)
    cursor = ring.join()
    out = bytearray()
    for i in range(100):
        ring.append(bytes([i]) * 7)
        got = ring.read(cursor, 1000)
        out += b"".join(got.views)
    assert out == b"".join(bytes([i]) * 7 for i in range(100))
    assert cursor.skips == 0


def test_a_slow_reader_is_skipped_to_the_live_edge_and_counted() -> None:
    ring = Ring(block_bytes=4, blocks=2)
    cursor = ring.join()
    ring.append(b"abcdefghijklmnop")  # only "ijklmnop" is still held
    got = ring.read(cursor, 100)
    assert got.skipped == 16 and b"".join(got.views) == b""
    assert cursor.skips == 1 and cursor.skipped_bytes == 16
    ring.append(b"qr")
    assert b"".join(ring.read(cursor, 100).views) == b"qr"


def test_a_slow_reader_is_cut_off_under_the_disconnect_policy() -> None:
    ring = Ring(block_bytes=4, blocks=2)
    cursor = ring.join()
    ring.append(b"abcdefghijkl")
    got = ring.read(cursor, 100, LagPolicy.DISCONNECT)
    assert got.behind and not got.views and cursor.offset == 0


def test_join_with_a_back_buffer_is_aligned_and_held() -> None:
    ring = Ring(block_bytes=100, blocks=4, align=188)
    ring.append(bytes(1000))
    # 1000 - 300 = 700, aligned down to 564; the tail is 600, so the next packet start: 752.
    assert ring.edge(300) == 752
    assert ring.edge(0) == 940
    assert ring.join(10_000).offset == 752


def test_views_stay_valid_after_the_ring_moves_on() -> None:
    ring = Ring(block_bytes=4, blocks=1)
    cursor = ring.join()
    ring.append(b"abc")
    view = ring.read(cursor, 10).views[0]
    ring.append(b"defghijk")
    assert bytes(view) == b"abc"
    assert ring.held_bytes == 4


def test_a_seam_drops_the_broken_unit_so_readers_stay_aligned() -> None:
    ring = Ring(block_bytes=8, blocks=4, align=4)
    cursor = ring.join()
    ring.append(b"AAAAB")  # one whole unit and the start of the next
    ring.append(b"B")
    assert b"".join(ring.read(cursor, 100).views) == b"AAAA" and ring.pending == 2
    assert ring.drop_partial() == 2  # the upstream broke mid-unit
    ring.append(b"CC")  # the new connection's first unit, in two reads
    ring.append(b"CCD")
    late = ring.join()
    assert late.offset == 8
    assert b"".join(ring.read(cursor, 100).views) == b"CCCC"
    ring.close()  # a clean end: the last, unfinished unit is delivered too
    assert b"".join(ring.read(cursor, 100).views) == b"D"
    assert b"".join(ring.read(late, 100).views) == b"D"


def test_a_closed_ring_refuses_writes() -> None:
    ring = Ring(block_bytes=4, blocks=1)
    ring.close()
    with pytest.raises(ValueError):
        ring.append(b"x")


@pytest.mark.parametrize(
    ("patterns", "types", "url", "ctype", "live"),
    [
        (["http://radio.example/*"], [], b"http://radio.example/jazz", None, True),
        (["http://radio.example/*"], [], b"http://other.example/jazz", None, False),
        (["re:/live/[a-z]+\\.ts$"], [], b"http://tv.example/live/one.ts", None, True),
        ([], ["audio/mpeg"], b"http://x/", b"Audio/MPEG; charset=x", True),
        ([], ["video/*"], b"http://x/", b"video/mp2t", True),
        ([], ["video/*"], b"http://x/", b"audio/aac", False),
        ([], [], b"http://radio.example/jazz", b"audio/mpeg", False),
    ],
)
def test_live_rules(
    patterns: list[str], types: list[str], url: bytes, ctype: bytes | None, live: bool
) -> None:
    assert LiveRules(patterns, types).matches(url, ctype) is live


def test_a_bad_pattern_is_named() -> None:
    with pytest.raises(ValueError, match="re:\\(unclosed"):
        LiveRules(["re:(unclosed"], [])


@pytest.mark.parametrize(
    ("headers", "shared"),
    [
        ([(b"content-type", b"audio/mpeg")], True),
        ([(b"cache-control", b"private")], False),
        ([(b"cache-control", b"no-store")], False),
        ([(b"set-cookie", b"a=b")], False),
        ([(b"vary", b"*")], False),
    ],
)
def test_private_streams_are_not_shared(headers: list[tuple[bytes, bytes]], shared: bool) -> None:
    assert shareable_response(headers) is shared


_MP3 = [(b"content-type", b"audio/mpeg")]


@pytest.mark.parametrize(
    ("status", "headers", "carries_on"),
    [
        (200, [(b"content-type", b"Audio/MPEG ")], True),
        (503, _MP3, False),
        (200, [(b"content-type", b"text/html")], False),
        (200, [*_MP3, (b"content-length", b"512")], False),
        (200, [*_MP3, (b"cache-control", b"private")], False),
        (200, [*_MP3, (b"icy-metaint", b"16000")], False),
    ],
)
def test_a_reconnect_carries_on_only_the_same_kind_of_stream(
    status: int, headers: list[tuple[bytes, bytes]], carries_on: bool
) -> None:
    assert continues_stream(200, _MP3, status, headers) is carries_on


def test_a_stream_with_icy_metadata_is_never_continued() -> None:
    icy = [*_MP3, (b"icy-metaint", b"16000")]
    assert not continues_stream(200, icy, 200, icy)
    # Known from the first head: no reconnect is even tried (no wasted upstream connection).
    assert not stream_may_continue(icy) and stream_may_continue(_MP3)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"lag_policy": "drop"}, "live.lag_policy"),
        ({"url_patterns": ["re:(unclosed"]}, "live.url_patterns"),
        ({"ring_bytes": 65536, "block_bytes": 65536}, "live.ring_bytes"),
        ({"back_buffer_bytes": 8 << 20}, "live.back_buffer_bytes"),
        ({"upstream_end": "retry"}, "live.upstream_end"),
        ({"linger": -1}, "live.linger"),
        ({"blocks": 3}, "live.blocks"),
    ],
)
def test_bad_live_settings_are_named(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().override(live=table)


def test_live_settings_load() -> None:
    config = Config().override(
        live={"url_patterns": ["http://radio.example/*"], "lag_policy": "disconnect"}
    )
    assert config.live.url_patterns == ("http://radio.example/*",)
    assert config.live.lag_policy == "disconnect"
