"""Tests for cache.advisor: the one-pass LRU curve against a request-by-request LRU simulation,
log parsing (HTTP and BitTorrent lines, malformed ones), SHARDS sampling, the policy replay."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.advisor import (
    Access,
    LogLineError,
    LogReader,
    StackDistances,
    default_sizes,
    parse_pieces,
    simulate_policy,
)
from cache.eviction import LRU, simulate, zipf_trace

IH = "ab" * 20


def _curve_vs_simulation(trace: list[tuple[int, int]], sizes: list[int], slots: int = 1024) -> None:
    engine = StackDistances(sizes, slots=slots)
    engine.feed(Access(key, size, size) for key, size in trace)
    for point in engine.curve():
        sim = simulate(LRU(), trace, point.size)
        assert point.hit_ratio == sim.hit_ratio, point
        assert point.byte_hit_ratio == sim.byte_hit_ratio, point


@settings(max_examples=300, deadline=None)
@given(
    catalogue=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=12),
    picks=st.lists(st.integers(min_value=0, max_value=11), min_size=1, max_size=120),
    sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=6),
)
def test_stack_curve_equals_brute_force_lru(
    catalogue: list[int], picks: list[int], sizes: list[int]
) -> None:
    # Each key has one size; some objects are larger than some disks (they pass through).
    trace = [(p % len(catalogue), catalogue[p % len(catalogue)]) for p in picks]
    _curve_vs_simulation(trace, sizes, slots=4)  # a tiny tree: renumbered many times


def test_stack_curve_equals_simulation_on_a_zipf_trace_past_compaction() -> None:
    # 3000 requests: the Fenwick tree is renumbered several times on the way.
    trace = zipf_trace(300, 3000, seed=5, median_size=1000, giant_rate=0.01, giant_size=20_000)
    _curve_vs_simulation(trace, [5_000, 20_000, 60_000, 150_000, 400_000])


def test_curve_grows_with_the_disk_up_to_the_ceiling() -> None:
    trace = zipf_trace(500, 5000, seed=1, median_size=1000)
    engine = StackDistances(default_sizes(sum({k: s for k, s in trace}.values())))
    engine.feed(Access(k, s, s) for k, s in trace)
    ratios = [p.byte_hit_ratio for p in engine.curve()]
    assert ratios == sorted(ratios)
    # At the working set every object stays: only the first request of each misses.
    assert ratios[-1] == pytest.approx(engine.ceiling.byte_hit_ratio)
    assert 0.3 < ratios[-1] < 1.0


def test_shards_sampling_tracks_the_exact_curve() -> None:
    trace = zipf_trace(50_000, 200_000, alpha=0.8, seed=3, median_size=10_000, sigma=1.0)
    working_set = sum({k: s for k, s in trace}.values())
    sizes = [working_set // 20, working_set // 5, working_set // 2]
    exact = StackDistances(sizes)
    sampled = StackDistances(sizes, sample_rate=0.1)
    for key, size in trace:
        exact.add(Access(key, size, size))
        sampled.add(Access(key, size, size))
    assert 0.05 * len(trace) < sampled.sampled_requests < 0.15 * len(trace)
    for e, s in zip(exact.curve(), sampled.curve(), strict=True):
        assert abs(e.byte_hit_ratio - s.byte_hit_ratio) < 0.03, (e, s)
        assert abs(e.hit_ratio - s.hit_ratio) < 0.03, (e, s)
    assert abs(sampled.working_set_bytes - working_set) < 0.2 * working_set


def test_uncacheable_requests_are_misses_at_every_size() -> None:
    engine = StackDistances([10, 1000])
    engine.feed([Access("a", 5, 5), Access("a", 5, 5), Access("p", 0, 90, cacheable=False)])
    assert [p.byte_hit_ratio for p in engine.curve()] == [0.05, 0.05]
    assert engine.uncacheable_bytes == 90


# --- log lines ----------------------------------------------------------------------------


def _http(method: str, url: str, status: int, sent: int, result: str, upstream: int) -> str:
    return f'1700000000.000 10.0.0.5 {method} "{url}" {status} {sent} {result} {upstream} 1.5'


def test_http_lines_name_the_object_and_its_size() -> None:
    reader = LogReader()
    miss = reader.feed(_http("GET", "http://o/a", 200, 1000, "MISS", 1010))
    assert miss == [Access("http://o/a", 1010, 1000)]
    ranged = reader.feed(_http("GET", "http://o/a", 206, 100, "HIT", 0))
    assert ranged == [Access("http://o/a", 1010, 100, box_hit_bytes=100)]
    passed = reader.feed(_http("GET", "http://o/private", 200, 500, "PASS", 500))
    assert passed == [Access("http://o/private", 0, 500, cacheable=False)]
    post = reader.feed(_http("POST", "http://o/form", 200, 50, "MISS", 50))
    assert not post[0].cacheable


def test_objects_larger_than_max_object_bytes_are_never_cacheable() -> None:
    reader = LogReader(max_object_bytes=1000)
    (access,) = reader.feed(_http("GET", "http://o/iso", 200, 5000, "MISS", 5000))
    assert not access.cacheable


def test_bittorrent_lines_become_piece_range_requests() -> None:
    reader = LogReader(chunk_bytes=4 * 256 * 1024)
    line = f"1700000000.000 10.0.0.7 BT {IH} 262144 0-5,9 1835008 262144 3.0"
    accesses = reader.feed(line)
    # pieces 0-3 -> range 0, 4-5 -> range 1, 9 -> range 2; 7 pieces share the bytes
    assert [a.key for a in accesses] == [(IH, 0), (IH, 1), (IH, 2)]
    assert all(a.size == 4 * 262144 for a in accesses)
    assert sum(a.requested for a in accesses) == 1835008
    assert [a.requested for a in accesses] == [4 * 262144, 2 * 262144, 262144]
    assert sum(a.box_hit_bytes for a in accesses) == 1835008 - 262144


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("garbage", "expected 9 fields"),
        ('x 10.0.0.5 GET "http://o/" 200 1 HIT 0 1.0', "time"),
        ("1.0 10.0.0.5 GET http://o/ 200 1 HIT 0 1.0", "not quoted"),
        ('1.0 10.0.0.5 GET "http://o/" 200 -1 HIT 0 1.0', "bytes sent"),
        ('1.0 10.0.0.5 GET "http://o/" 200 1 MAYBE 0 1.0', "unknown result"),
        (f"1.0 10.0.0.7 BT {IH[:-1]} 16384 0 1 0 1.0", "40 hex"),
        (f"1.0 10.0.0.7 BT {IH} 16384 5-2 1 0 1.0", "piece range"),
        (f"1.0 10.0.0.7 BT {IH} 0 1 1 0 1.0", "piece length"),
        (f"1.0 10.0.0.7 BT {IH} 16384 1 1 5 1.0", "exceed"),
    ],
)
def test_malformed_lines_are_reported_with_the_reason(line: str, message: str) -> None:
    with pytest.raises(LogLineError, match=message):
        LogReader().feed(line)


def test_parse_pieces() -> None:
    assert parse_pieces("-") == []
    assert parse_pieces("0-3,7,9-9") == [(0, 3), (7, 7), (9, 9)]


def test_default_sizes_end_at_the_working_set() -> None:
    sizes = default_sizes(10 << 30)
    assert sizes[-1] == 10 << 30 and sizes == sorted(sizes) and len(sizes) >= 8


def test_policy_replay_reports_the_default_against_lru() -> None:
    trace = zipf_trace(2000, 20_000, seed=1, giant_size=0)
    catalogue = sum({k: s for k, s in trace}.values())
    (point,) = simulate_policy(trace, [catalogue // 20])
    assert point.lru_byte_hit_ratio == simulate(LRU(), trace, catalogue // 20).byte_hit_ratio
    # measured in cache/eviction.py: the default beats LRU on skewed traces
    assert point.default_byte_hit_ratio > point.lru_byte_hit_ratio
