"""The piece picker, driven by scripts of peer events (no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.errors import LocalProtocolError
from swarm.picker import BLOCK_SIZE, END_GAME_BATCH, BlockRequest, Picker

PIECE = 4 * BLOCK_SIZE


def _bits(n: int, pieces: set[int]) -> bytes:
    out = bytearray((n + 7) // 8)
    for i in pieces:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def _receive_all(picker: Picker, peer: str, reqs: list[BlockRequest]) -> list[int]:
    ready = []
    for r in reqs:
        ok, _ = picker.block_received(peer, r.index, r.begin, r.length)
        assert ok
        if picker.piece_ready(r.index):
            ready.append(r.index)
    return ready


def test_blocks_are_only_asked_of_peers_that_have_the_piece() -> None:
    p = Picker(8, PIECE, 8 * PIECE, rng=random.Random(1))
    p.add_peer("a")
    p.peer_bitfield("a", _bits(8, {2, 5}))
    reqs = p.pick("a", 100)
    assert {r.index for r in reqs} == {2, 5}
    assert len(reqs) == 8
    assert p.pick("a", 100) == []  # everything it has is requested, and nobody else asked


def test_last_piece_and_last_block_are_short() -> None:
    total = 2 * PIECE + BLOCK_SIZE + 100
    p = Picker(3, PIECE, total, rng=random.Random(1))
    p.add_peer("a")
    p.peer_has_all("a")
    reqs = p.pick("a", 100)
    last = [r for r in reqs if r.index == 2]
    assert [(r.begin, r.length) for r in last] == [(0, BLOCK_SIZE), (BLOCK_SIZE, 100)]
    assert sum(r.length for r in reqs) == total


def test_rarest_first_after_the_random_start() -> None:
    p = Picker(6, PIECE, 6 * PIECE, have=range(4), initial_random=4, rng=random.Random(2))
    for name in "abc":
        p.add_peer(name)
    p.peer_bitfield("a", _bits(6, {4, 5}))
    p.peer_bitfield("b", _bits(6, {4}))
    p.peer_bitfield("c", _bits(6, {4}))
    # piece 5 is held by one peer, piece 4 by three: 5 first.
    assert p.pick("a", 1)[0].index == 5


def test_started_pieces_are_finished_before_new_ones() -> None:
    p = Picker(4, PIECE, 4 * PIECE, have=range(0), initial_random=0, rng=random.Random(3))
    p.add_peer("a")
    p.add_peer("b")
    p.peer_has_all("a")
    p.peer_has_all("b")
    first = p.pick("a", 2)
    again = p.pick("b", 2)
    assert {r.index for r in again} == {first[0].index}


def test_prioritized_piece_comes_first() -> None:
    p = Picker(10, PIECE, 10 * PIECE, rng=random.Random(4))
    p.add_peer("a")
    p.peer_has_all("a")
    p.prioritize(7)
    assert {r.index for r in p.pick("a", 4)} == {7}


def test_strict_end_game_duplicates_only_when_nothing_is_free() -> None:
    p = Picker(1, PIECE, PIECE, rng=random.Random(5))
    p.add_peer("slow")
    p.add_peer("fast")
    p.peer_has_all("slow")
    p.peer_has_all("fast")
    slow = p.pick("slow", 3)  # 3 of 4 blocks
    fast = p.pick("fast", 10)
    assert len(fast) == 1  # the one free block, no duplicate while a block is free
    assert p.pick("fast", 10) == []  # busy peers do not duplicate
    assert p.block_received("fast", fast[0].index, fast[0].begin, fast[0].length)[0]
    dup = p.pick("fast", 10)  # idle now: it helps with the tail
    assert {(r.index, r.begin) for r in dup} == {(r.index, r.begin) for r in slow}
    ok, cancel = p.block_received("fast", dup[0].index, dup[0].begin, dup[0].length)
    assert ok and cancel == ["slow"]
    # the slow peer's late copy of the same block is refused, not counted twice
    ok, _ = p.block_received("slow", dup[0].index, dup[0].begin, dup[0].length)
    assert not ok


def test_unrequested_wrong_length_and_misaligned_blocks_are_refused() -> None:
    p = Picker(2, PIECE, 2 * PIECE, rng=random.Random(6))
    p.add_peer("a")
    p.add_peer("b")
    p.peer_has_all("a")
    p.peer_has_all("b")
    r = p.pick("a", 1)[0]
    assert p.block_received("b", r.index, r.begin, r.length) == (False, [])
    assert p.block_received("a", r.index, r.begin, r.length - 1) == (False, [])
    assert p.block_received("a", r.index, r.begin + 1, r.length) == (False, [])
    assert p.block_received("a", r.index, r.begin, r.length)[0]


def test_a_departed_peer_returns_its_blocks() -> None:
    p = Picker(1, PIECE, PIECE, rng=random.Random(7))
    p.add_peer("a")
    p.add_peer("b")
    p.peer_has_all("a")
    p.peer_has_all("b")
    assert len(p.pick("a", 4)) == 4
    p.remove_peer("a")
    assert len(p.pick("b", 4)) == 4


def test_end_game_duplicates_come_a_few_at_a_time() -> None:
    p = Picker(1, 64 * BLOCK_SIZE, 64 * BLOCK_SIZE, rng=random.Random(10))
    for name in ("slow", "idle"):
        p.add_peer(name)
        p.peer_has_all(name)
    assert len(p.pick("slow", 64)) == 64
    assert len(p.pick("idle", 64)) == END_GAME_BATCH


def test_a_failed_piece_is_refetched_whole_from_one_peer() -> None:
    p = Picker(2, PIECE, 2 * PIECE, have=[1], rng=random.Random(8))
    for name in "ab":
        p.add_peer(name)
        p.peer_has_all(name)
    assert _receive_all(p, "a", p.pick("a", 2)) == []
    assert _receive_all(p, "b", p.pick("b", 2)) == [0]
    p.piece_failed(0)
    reqs = p.pick("b", 100)
    assert len(reqs) == 4  # the whole piece, from b alone
    assert p.pick("a", 100) == []  # a gets no block of it, not even in end-game
    assert _receive_all(p, "b", reqs) == [0]
    p.piece_verified(0)
    assert p.complete


def test_exclusivity_ends_when_that_peer_leaves() -> None:
    p = Picker(1, PIECE, PIECE, rng=random.Random(9))
    for name in "ab":
        p.add_peer(name)
        p.peer_has_all(name)
    p.piece_failed(0)
    assert len(p.pick("a", 100)) == 4
    p.remove_peer("a")
    assert len(p.pick("b", 100)) == 4


def test_bad_construction_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Picker(2, PIECE, 3 * PIECE)


@settings(max_examples=60, deadline=None)
@given(
    num_pieces=st.integers(1, 12),
    tail=st.integers(1, PIECE),
    seed=st.integers(0, 2**32),
    npeers=st.integers(1, 4),
)
def test_random_swarm_always_completes_and_never_double_counts(
    num_pieces: int, tail: int, seed: int, npeers: int
) -> None:
    rng = random.Random(seed)
    total = (num_pieces - 1) * PIECE + tail
    p = Picker(num_pieces, PIECE, total, rng=random.Random(seed))
    peers = [f"p{i}" for i in range(npeers)]
    holdings: dict[str, set[int]] = {}
    for i, name in enumerate(peers):
        p.add_peer(name)
        if i == 0:
            p.peer_has_all(name)
            holdings[name] = set(range(num_pieces))
        else:
            held = {j for j in range(num_pieces) if rng.random() < 0.5}
            p.peer_bitfield(name, _bits(num_pieces, held))
            holdings[name] = held
    received_bytes = 0
    inflight: list[tuple[str, BlockRequest]] = []
    for _ in range(10_000):
        if p.complete:
            break
        name = rng.choice(peers)
        for r in p.pick(name, rng.randint(1, 6)):
            assert r.index in holdings[name]
            inflight.append((name, r))
        if not inflight:
            continue
        who, r = inflight.pop(rng.randrange(len(inflight)))
        if rng.random() < 0.1:
            p.request_failed(who, r.index, r.begin)
            continue
        ok, _ = p.block_received(who, r.index, r.begin, r.length)
        if ok:
            received_bytes += r.length
            if p.piece_ready(r.index):
                p.piece_verified(r.index)
    assert p.complete
    assert received_bytes == total


def test_rate_limiter_grants_blocks_at_the_configured_rate() -> None:
    from swarm.downloader import RateLimiter

    now = [0.0]
    limiter = RateLimiter(10 * BLOCK_SIZE, burst_seconds=0.5, clock=lambda: now[0])
    assert limiter.take(100 * BLOCK_SIZE) == 5 * BLOCK_SIZE  # the burst
    assert limiter.take(BLOCK_SIZE) == 0
    granted = 0
    for _ in range(100):  # ten seconds in 0.1 s steps
        now[0] += 0.1
        granted += limiter.take(100 * BLOCK_SIZE)
    # 10 blocks/s for 10 s, never more (the last step may miss a block to float rounding)
    assert 99 * BLOCK_SIZE <= granted <= 100 * BLOCK_SIZE
    assert RateLimiter(0).take(12345) == 12345  # 0 = unlimited
