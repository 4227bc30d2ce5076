"""Tests for cache.eviction: quota, pinning, lazy heaps, the TinyLFU sketch and admission, and the
byte-hit-ratio comparison against LRU on skewed traces with one-off giants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.eviction import (
    LFUDA,
    LRU,
    EvictionError,
    EvictionPolicy,
    FrequencySketch,
    GDSFPolicy,
    Quota,
    TinyLFU,
    default_policy,
    simulate,
    zipf_trace,
)

PolicyFactory = Callable[[int], EvictionPolicy]

FACTORIES: dict[str, PolicyFactory] = {
    "lru": lambda cap: LRU(),
    "lfuda": lambda cap: LFUDA(),
    "gdsf": lambda cap: GDSFPolicy(),
    "tinylfu-lfuda": lambda cap: default_policy(cap, expected_items=256),
    "tinylfu-lru": lambda cap: TinyLFU(LRU(), cap, expected_items=256),
}


# --- quota ------------------------------------------------------------------------------------


def test_quota_frees_down_to_low_only_once_over_high() -> None:
    q = Quota(1000, high=0.9, low=0.7)
    assert (q.high_bytes, q.low_bytes) == (900, 700)
    assert q.to_free(850, 50) == 0  # lands exactly on high: no eviction yet
    assert q.to_free(850, 51) == 850 + 51 - 700
    assert not q.over_high(900)
    assert q.over_high(901)


@pytest.mark.parametrize(
    ("limit", "high", "low", "message"),
    [
        (0, 0.9, 0.8, "limit must be positive"),
        (100, 0.8, 0.9, "low <= high"),
        (100, 1.1, 0.9, "high <= 1"),
        (100, 0.9, 0.0, "0 < low"),
    ],
)
def test_quota_rejects_nonsense(limit: int, high: float, low: float, message: str) -> None:
    with pytest.raises(EvictionError, match="quota") as info:
        Quota(limit, high, low)
    assert message.split()[0] in str(info.value)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_sizes_are_refused_with_a_message(name: str) -> None:
    policy = FACTORIES[name](100)
    with pytest.raises(EvictionError, match="non-negative int, got -1"):
        policy.on_insert("k", -1)
    with pytest.raises(EvictionError, match=r"got 1\.5"):
        policy.admit("k", 1.5)  # type: ignore[arg-type]
    with pytest.raises(EvictionError, match="not tracked"):
        policy.set_pinned("nope", True)


traces = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 400)), min_size=1, max_size=300)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=40, deadline=None)
@given(
    trace=traces,
    capacity=st.integers(1, 1500),
    marks=st.sampled_from([(1.0, 1.0), (0.95, 0.85), (0.5, 0.2)]),
    pinned=st.frozensets(st.integers(0, 30), max_size=3),
)
def test_store_never_exceeds_quota(
    name: str,
    trace: list[tuple[int, int]],
    capacity: int,
    marks: tuple[float, float],
    pinned: frozenset[int],
) -> None:
    policy = FACTORIES[name](capacity)
    # simulate() itself raises if the policy evicts something unstored or pinned, or if its
    # used_bytes drifts from the store's own count.
    result = simulate(policy, trace, capacity, high=marks[0], low=marks[1], pinned=pinned)
    assert result.max_used <= capacity
    assert policy.used_bytes <= capacity
    assert result.requests == len(trace)
    assert result.bytes_hit <= result.bytes_requested


# --- pinning and detaching --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_victims_never_include_pinned(name: str) -> None:
    policy = FACTORIES[name](10_000)
    for i in range(20):
        policy.on_insert(i, 100, pinned=i % 4 == 0)
    for i in range(20):
        for _ in range(i):
            policy.on_hit(i)  # pinned keys hot or cold must not matter
    out = policy.victims(10**9)
    assert sorted(int(str(k)) for k in out) == [i for i in range(20) if i % 4]
    assert policy.used_bytes == 5 * 100
    assert policy.victims(1) == []  # only pinned left
    policy.set_pinned(4, False)
    assert policy.victims(1) == [4]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_victims_detach_so_a_second_call_picks_others(name: str) -> None:
    policy = FACTORIES[name](10_000)
    for i in range(10):
        policy.on_insert(i, 10)
    first = policy.victims(25)
    assert len(first) == 3
    assert policy.used_bytes == 70
    assert all(k not in policy for k in first)
    second = policy.victims(25)
    assert not set(first) & set(second)
    for k in first:
        policy.on_remove(k)  # the store confirms the deletion: a no-op by now
    assert policy.used_bytes == 40
    assert len(policy) == 4


@pytest.mark.parametrize("name", ["lru", "tinylfu-lfuda"])
def test_pinned_objects_survive_a_flood_of_giants(name: str) -> None:
    capacity = 10_000
    pinned = frozenset(range(5))
    trace = [(k, 500) for k in pinned]
    for g in range(200):
        trace.append((1000 + g, 4000))  # one-off, 40 % of the cache
        trace.append((100 + g % 7, 300))
    tail = [(k, 500) for k in pinned]
    policy = FACTORIES[name](capacity)
    flood = simulate(policy, trace, capacity, pinned=pinned)
    assert all(k in policy for k in pinned)
    assert flood.max_used <= capacity
    # the flood really pressed on the store: LRU evicts for it, TinyLFU turns it away
    assert flood.evictions + flood.refused > 150, flood
    # the five re-requests at the end are all hits
    full = simulate(FACTORIES[name](capacity), trace + tail, capacity, pinned=pinned)
    assert full.hits - flood.hits == 5, (flood, full)


# --- LRU and LFU-DA order, lazy deletion ------------------------------------------------------


def test_lru_evicts_least_recently_used_first() -> None:
    lru = LRU()
    for k in "abcd":
        lru.on_insert(k, 1)
    lru.on_hit("a")
    lru.on_hit("c")
    assert lru.peek_victims(4) == [("b", 1), ("d", 1), ("a", 1), ("c", 1)]
    assert lru.victims(2) == ["b", "d"]


def test_lfuda_keeps_frequent_bytes_regardless_of_size() -> None:
    p = LFUDA()
    p.on_insert("big-hot", 10_000)
    p.on_insert("small-cold", 1)
    for _ in range(3):
        p.on_hit("big-hot")
    # byte-hit view: the frequent object stays even though it is 10 000x larger
    assert p.victims(1) == ["small-cold"]
    g = GDSFPolicy()
    g.on_insert("big-hot", 10_000)
    g.on_insert("small-cold", 1)
    for _ in range(3):
        g.on_hit("big-hot")
    # object-hit view (GDSF, cost 1): the big one goes
    assert g.victims(1) == ["big-hot"]


def test_lfuda_aging_lets_newcomers_outrank_stale_favourites() -> None:
    p = LFUDA()
    p.on_insert("old-hot", 1)
    for _ in range(3):
        p.on_hit("old-hot")  # priority 4
    for i in range(10):  # a stream of objects each hit 4 times, then evicted
        p.on_insert(i, 1)
        for _ in range(4):
            p.on_hit(i)
    assert p.victims(1) == ["old-hot"]
    assert p.age == 4.0
    for _ in range(10):
        p.victims(1)
    assert p.age >= 5.0
    p.on_insert("new", 1)  # enters at L + 1, above what "old-hot" ever had
    p.on_insert("old-hot", 1)
    for _ in range(3):
        p.on_hit("old-hot")
    assert p.victims(1) == ["new"]


ops = st.lists(
    st.tuples(st.sampled_from(["insert", "hit", "remove", "pin", "unpin"]), st.integers(0, 15)),
    max_size=400,
)


@pytest.mark.parametrize("factory", [LFUDA, GDSFPolicy, LRU])
@settings(max_examples=80, deadline=None)
@given(ops=ops)
def test_removed_keys_are_never_victims(
    factory: Callable[[], EvictionPolicy], ops: list[tuple[str, int]]
) -> None:
    policy = factory()
    live: dict[int, bool] = {}  # key -> pinned
    for op, k in ops:
        if op == "insert":
            policy.on_insert(k, k + 1, pinned=False)
            live[k] = False
        elif op == "hit":
            assert policy.on_hit(k) == (k in live)
        elif op == "remove":
            policy.on_remove(k)
            live.pop(k, None)
        elif k in live:
            policy.set_pinned(k, op == "pin")
            live[k] = op == "pin"
    assert policy.used_bytes == sum(k + 1 for k in live)
    if isinstance(policy, GDSFPolicy):
        # lazy deletion must not let the heap grow without bound
        assert len(policy._heap) <= 2 * len(live) + 65
    out = policy.victims(10**9)
    assert len(out) == len(set(out))
    assert set(out) == {k for k, pin in live.items() if not pin}


# --- the sketch -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    counts=st.dictionaries(st.integers(), st.integers(1, 15), max_size=200),
    doorkeeper=st.booleans(),
)
def test_sketch_never_undercounts(counts: dict[int, int], doorkeeper: bool) -> None:
    sketch = FrequencySketch(64, sample_size=10**9, doorkeeper=doorkeeper)
    for key, n in counts.items():
        for _ in range(n):
            sketch.add(key)
    for key, n in counts.items():
        assert sketch.estimate(key) >= n, (key, n)


def test_sketch_is_close_for_an_uncrowded_table() -> None:
    sketch = FrequencySketch(1024, sample_size=10**9)
    for key in range(50):
        for _ in range(key % 10 + 1):
            sketch.add(key)
    exact = sum(sketch.estimate(k) == k % 10 + 1 for k in range(50))
    assert exact >= 45
    assert sketch.estimate("never-seen") <= 1


def test_sketch_counters_saturate_and_halve() -> None:
    sketch = FrequencySketch(256, sample_size=10**9, doorkeeper=False)
    for _ in range(40):
        sketch.add("hot")
    for _ in range(9):
        sketch.add("warm")
    assert sketch.estimate("hot") == 15  # 4-bit counters
    assert sketch.estimate("warm") == 9
    sketch.halve()
    assert sketch.estimate("hot") == 7
    assert sketch.estimate("warm") == 4


def test_sketch_halves_itself_after_sample_size_additions() -> None:
    sketch = FrequencySketch(64, sample_size=100)
    for _ in range(12):
        sketch.add("x")
    assert sketch.estimate("x") == 12  # 11 in the sketch + 1 doorkeeper bit
    for i in range(88):
        sketch.add(("filler", i))
    assert sketch.estimate("x") <= 6  # halved, doorkeeper cleared


def test_sketch_rejects_bad_shapes() -> None:
    with pytest.raises(EvictionError, match="width must be positive, got 0"):
        FrequencySketch(0)
    with pytest.raises(EvictionError, match=r"depth must be 1\.\.4, got 9"):
        FrequencySketch(16, depth=9)


# --- admission --------------------------------------------------------------------------------


def _full_tinylfu() -> TinyLFU:
    capacity = 1000
    policy = TinyLFU(LFUDA(), capacity, expected_items=256)
    for i in range(10):
        policy.admit(i, 100)
        policy.on_insert(i, 100)
        for _ in range(2):
            policy.on_hit(i)
    assert policy.used_bytes == capacity
    return policy


def test_admit_refuses_one_off_giant_but_admits_popular_object() -> None:
    policy = _full_tinylfu()
    assert not policy.admit("giant", 400)  # seen once, would displace four popular objects
    for _ in range(5):
        admitted = policy.admit("popular", 400)
    assert admitted
    assert not policy.admit("one-off-small", 50)  # a tie-free loss: 1 < 3


def test_admit_everything_while_there_is_room_but_never_oversized() -> None:
    policy = TinyLFU(LRU(), 1000, expected_items=64, max_object_fraction=0.5)
    assert policy.admit("a", 500)
    assert not policy.admit("b", 501)
    policy.on_insert("a", 500)
    assert policy.admit("c", 500)


def test_admit_refuses_when_only_pinned_bytes_could_be_freed() -> None:
    policy = TinyLFU(LRU(), 1000, expected_items=64)
    policy.on_insert("pinned", 900, pinned=True)
    for _ in range(10):
        ok = policy.admit("hot", 200)
    assert not ok


# --- traces and the byte-hit-ratio comparison -------------------------------------------------


def test_zipf_trace_is_reproducible_skewed_and_has_one_off_giants() -> None:
    a = zipf_trace(1000, 20_000, 0.9, "pareto", seed=7, giant_size=5_000_000)
    assert a == zipf_trace(1000, 20_000, 0.9, "pareto", seed=7, giant_size=5_000_000)
    assert a != zipf_trace(1000, 20_000, 0.9, "pareto", seed=8, giant_size=5_000_000)
    assert len(a) == 20_000
    giants = [(k, s) for k, s in a if k >= 10**9]
    assert 40 <= len(giants) <= 200
    assert len({k for k, _ in giants}) == len(giants)
    assert all(5_000_000 <= s <= 10_000_000 for _, s in giants)
    popular = Counter(k for k, _ in a if k < 10**9).most_common()
    top = sum(n for _, n in popular[:100])
    assert top > 0.5 * sum(n for _, n in popular)  # top 10 % of objects, over half the requests
    sizes = {k: s for k, s in a if k < 10**9}
    assert max(sizes.values()) > 20 * sorted(sizes.values())[len(sizes) // 2]  # heavy tail


def test_zipf_trace_rejects_bad_arguments() -> None:
    with pytest.raises(EvictionError, match="n_objects >= 1"):
        zipf_trace(0, 10)
    with pytest.raises(EvictionError, match="unknown size_dist 'uniform'"):
        zipf_trace(10, 10, size_dist="uniform")  # type: ignore[arg-type]


SizeDist = Literal["lognormal", "pareto"]


def _catalogue_bytes(n_objects: int, seed: int, size_dist: SizeDist) -> int:
    trace = zipf_trace(n_objects, 30_000, 0.9, size_dist, seed)
    return sum({k: s for k, s in trace}.values())


@pytest.mark.parametrize("size_dist", ["lognormal", "pareto"])
def test_default_policy_beats_lru_on_byte_hit_ratio(size_dist: SizeDist) -> None:
    rows = []
    for seed in (1, 2, 3):
        catalogue = _catalogue_bytes(4000, seed, size_dist)
        for fraction in (0.02, 0.05):
            capacity = int(catalogue * fraction)
            trace = zipf_trace(
                4000,
                30_000,
                0.9,
                size_dist,
                seed,
                giant_size=int(capacity * 0.15),
            )
            lru = simulate(LRU(), trace, capacity)
            best = simulate(default_policy(capacity, expected_items=4000), trace, capacity)
            assert best.max_used <= capacity and lru.max_used <= capacity
            rows.append((seed, fraction, lru.byte_hit_ratio, best.byte_hit_ratio))
    table = "\n".join(
        f"{size_dist} seed={s} cap={f:.0%} LRU={lb:.3f} default={db:.3f} x{db / lb:.2f}"
        for s, f, lb, db in rows
    )
    print("\n" + table)
    assert all(db >= 1.05 * lb for _, _, lb, db in rows), table


def test_default_policy_still_beats_lru_with_mild_popularity_churn() -> None:
    # New objects take over 5 % of the popularity ranks ten times per trace (new torrents
    # displacing old ones); the admission filter must not lock the newcomers out.
    rows = []
    for seed in (1, 2, 3):
        capacity = int(_catalogue_bytes(4000, seed, "lognormal") * 0.05)
        trace = zipf_trace(
            4000, 30_000, 0.9, "lognormal", seed, giant_size=int(capacity * 0.15), churn=0.05
        )
        lru = simulate(LRU(), trace, capacity).byte_hit_ratio
        best = simulate(default_policy(capacity, expected_items=4000), trace, capacity)
        rows.append((seed, lru, best.byte_hit_ratio))
    table = "\n".join(f"churn seed={s} LRU={lb:.3f} default={db:.3f}" for s, lb, db in rows)
    print("\n" + table)
    assert all(db >= 1.05 * lb for _, lb, db in rows), table


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 20)), min_size=1, max_size=60),
    st.booleans(),
)
def test_counting_n_sightings_at_once_equals_n_single_ones(
    batches: list[tuple[int, int]], doorkeeper: bool
) -> None:
    """The hit path hands the policy batched counts; the sketch must end up identical."""
    one_by_one = FrequencySketch(64, doorkeeper=doorkeeper, sample_size=10**9)
    batched = FrequencySketch(64, doorkeeper=doorkeeper, sample_size=10**9)
    for key, count in batches:
        for _ in range(count):
            one_by_one.add(key)
        batched.add(key, count)
    assert all(one_by_one.estimate(k) == batched.estimate(k) for k in range(41))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_on_hits_is_the_same_as_that_many_on_hit(name: str) -> None:
    single, batched = FACTORIES[name](10_000), FACTORIES[name](10_000)
    for policy in (single, batched):
        for k in range(20):
            policy.on_insert(k, 100 + k)
    hits = [(k % 7, 1 + k % 3) for k in range(30)]
    for key, count in hits:
        for _ in range(count):
            single.on_hit(key)
        batched.on_hits(key, count)
    assert single.victims(1_000) == batched.victims(1_000)
