"""Size advisor: the byte hit ratio the box would have had at other disk sizes, from its log.

Why it is built this way
------------------------
* **One pass gives every size.** Replaying the log once per candidate disk size would cost
  ``sizes x requests`` simulations. LRU is a *stack algorithm* (Mattson et al., 1970): an
  object is held by an LRU cache of ``C`` bytes exactly when the bytes of the distinct objects
  requested since its previous request, plus its own size, do not exceed ``C`` (the cache holds
  a prefix of the recency stack; see :class:`StackDistances`). So one pass computing that
  *stack distance* per request, binned by the candidate sizes, yields the whole curve.
* **O(log n) per request.** Each object keeps one slot at the position (time) of its last
  request in a Fenwick tree of sizes; the distance is the sum of slots after that position.
  Positions are renumbered when the tree fills, so memory follows the distinct objects, not
  the length of the log.
* **Objects larger than the disk pass through.** The model is the same LRU as
  :func:`cache.eviction.simulate` with :class:`cache.eviction.LRU`: an object that cannot fit
  is not stored and evicts nothing. For a disk of ``C`` bytes the objects larger than ``C`` are
  therefore left out of the distance; keys larger than the smallest candidate size are kept in
  a short recency list to subtract them (a handful, for sensible sizes). The unit tests check
  the curve against ``simulate(LRU())`` on random traces, request by request.
* **Big logs: SHARDS.** With ``sample_rate < 1`` only keys whose hash falls under the rate are
  replayed (Waldspurger et al., FAST 2015, fixed-rate SHARDS); sampled distances are scaled by
  ``1 / rate``, and the SHARDS_adj correction is applied. A key is sampled for all its
  requests, so reuse is preserved. The byte curve is the weak spot: a few big objects carry
  most bytes, and whether they fall in the sample moves it. Measured at rate 0.1 on Zipf(0.8)
  traces of 200k-500k requests: within 0.015 (absolute) with lognormal sizes of sigma 1.0,
  but off by up to 0.1 at the small end of the curve with sigma 1.5 (the large end within
  0.02). So ``swarmcache advise`` samples only logs over 2 million lines, keeping about 2
  million sampled requests, and says so in its output.
* **LRU, not the default policy.** The daemon evicts with TinyLFU + LFU-DA
  (:func:`cache.eviction.default_policy`), which is not a stack algorithm. On the skewed
  traces measured in ``cache/eviction.py`` it beats LRU by 1.2-2x at the same size, so the LRU
  curve is a conservative estimate; it is *not* a proven lower bound (under heavy churn the
  default roughly ties LRU). :func:`simulate_policy` replays the sampled trace through the
  default policy (and LRU, weighted the same way) at a few sizes to show the gap.
* **Sans-IO.** :class:`LogReader` turns lines into :class:`Access` values, the engines count;
  files, plots and printing live in ``swarmcache/advise.py``.

Log lines (``swarmcache/http/accesslog.py`` writes both kinds):

* HTTP: ``<time> <client> <METHOD> "<url>" <status> <bytes-sent> <RESULT> <upstream> <ms>``.
  GET/HEAD with ``HIT``/``MISS``/``REVALIDATED`` are requests for the object at ``url``;
  everything else (``PASS``: not storable; ``REFUSED``, ``ERROR``, other methods) is counted
  as a miss at every size. An object's size is the bytes of its latest full (200) response;
  a request weighs the bytes it sent (a Range request saves only its range).
* BitTorrent: ``<time> <peer> BT <info_hash> <piece-length> <pieces> <bytes-sent>
  <bytes-fetched> <seconds>``: pieces served to one local peer since its previous line
  (``0-15,20``). Each piece range of ``chunk_bytes`` touched is one request for the object
  ``(info_hash, range)``, the unit a torrent is evicted in.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from cache.eviction import LRU, EvictionPolicy, default_policy, simulate

__all__ = [
    "Access",
    "CurvePoint",
    "LogLineError",
    "LogReader",
    "PolicyPoint",
    "StackDistances",
    "default_sizes",
    "parse_pieces",
    "simulate_policy",
]

HTTP_RESULTS = frozenset({"HIT", "MISS", "REVALIDATED", "PASS", "REFUSED", "ERROR"})
_CACHED_RESULTS = frozenset({"HIT", "MISS", "REVALIDATED"})
_HIT_RESULTS = frozenset({"HIT", "REVALIDATED"})


class LogLineError(ValueError):
    """A log line that is neither an HTTP nor a BitTorrent access line."""


@dataclass(frozen=True, slots=True)
class Access:
    """One request as the advisor sees it.

    ``size`` is what the object occupies on disk, ``requested`` what this request moved (the
    bytes a hit saves). ``cacheable=False`` requests are misses at every size. ``box_hit`` is
    what the real box answered (for comparing the curve with reality).
    """

    key: Hashable
    size: int
    requested: int
    cacheable: bool = True
    box_hit_bytes: int = 0


def parse_pieces(text: str) -> list[tuple[int, int]]:
    """``"0-15,20"`` -> ``[(0, 15), (20, 20)]`` (inclusive ranges); ``"-"`` is none."""
    if text == "-":
        return []
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise LogLineError(f"bad piece range {part!r}")
        lo = int(first)
        hi = int(last) if sep else lo
        if hi < lo:
            raise LogLineError(f"bad piece range {part!r}")
        out.append((lo, hi))
    return out


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise LogLineError(f"{what} is not a non-negative integer: {text!r}")
    return int(text)


def _time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LogLineError(f"time is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise LogLineError(f"time is not a number: {text!r}")
    return value


@dataclass(slots=True)
class LogReader:
    """Turns access-log lines into :class:`Access` values; malformed lines raise
    :class:`LogLineError` (the caller counts them and goes on)."""

    chunk_bytes: int = 4 << 20
    # Objects above this are relayed, never stored (cache.max_object_bytes).
    max_object_bytes: int = 8 << 30
    _sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")

    def feed(self, line: str) -> list[Access]:
        fields = line.split()
        if len(fields) == 9 and fields[2] == "BT":
            return self._torrent(fields)
        if len(fields) == 9:
            return [self._http(fields)]
        raise LogLineError(f"expected 9 fields, got {len(fields)}")

    def _http(self, f: list[str]) -> Access:
        _time(f[0])
        method, url = f[2], f[3]
        if len(url) < 2 or url[0] != '"' or url[-1] != '"':
            raise LogLineError(f"URL is not quoted: {url!r}")
        status = _int(f[4], "status")
        sent = _int(f[5], "bytes sent")
        result = f[6]
        if result not in HTTP_RESULTS:
            raise LogLineError(f"unknown result {result!r}")
        upstream = _int(f[7], "upstream bytes")
        _time(f[8])
        key = url[1:-1]
        hit_bytes = sent if result in _HIT_RESULTS else 0
        if method not in ("GET", "HEAD") or result not in _CACHED_RESULTS:
            return Access(key, 0, sent, cacheable=False, box_hit_bytes=hit_bytes)
        if method == "GET" and status == 200:
            # A miss's upstream bytes are the whole object even when the client left early.
            self._sizes[key] = max(sent, upstream)
        size = self._sizes.get(key, sent)
        if size > self.max_object_bytes:
            return Access(key, size, sent, cacheable=False, box_hit_bytes=hit_bytes)
        return Access(key, size, sent, box_hit_bytes=hit_bytes)

    def _torrent(self, f: list[str]) -> list[Access]:
        _time(f[0])
        info_hash = f[3].lower()
        if len(info_hash) != 40 or any(c not in "0123456789abcdef" for c in info_hash):
            raise LogLineError(f"info hash is not 40 hex digits: {f[3]!r}")
        piece_length = _int(f[4], "piece length")
        if piece_length == 0:
            raise LogLineError("piece length is 0")
        ranges = parse_pieces(f[5])
        sent = _int(f[6], "bytes sent")
        fetched = _int(f[7], "bytes fetched")
        _time(f[8])
        if fetched > sent:
            raise LogLineError(f"bytes fetched {fetched} exceed bytes sent {sent}")
        per_chunk = max(1, self.chunk_bytes // piece_length)
        touched: dict[int, int] = {}
        for lo, hi in ranges:
            for chunk in range(lo // per_chunk, hi // per_chunk + 1):
                first = max(lo, chunk * per_chunk)
                last = min(hi, (chunk + 1) * per_chunk - 1)
                touched[chunk] = touched.get(chunk, 0) + last - first + 1
        pieces = sum(touched.values())
        if not pieces:
            return []
        out: list[Access] = []
        given = 0
        hit_given = 0
        box_hit = sent - fetched
        for i, (chunk, n) in enumerate(sorted(touched.items())):
            # The line's bytes shared by piece count; the last chunk takes the rounding.
            last = i == len(touched) - 1
            requested = sent - given if last else sent * n // pieces
            hit = box_hit - hit_given if last else box_hit * n // pieces
            given += requested
            hit_given += hit
            key = (info_hash, chunk)
            out.append(Access(key, per_chunk * piece_length, requested, box_hit_bytes=hit))
        return out


@dataclass(frozen=True, slots=True)
class CurvePoint:
    size: int
    hit_ratio: float
    byte_hit_ratio: float


def _sampled(key: Hashable, threshold: int) -> bool:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 40 < threshold


class StackDistances:
    """LRU hit ratios at every size in ``sizes`` from one pass (see the module docstring).

    Why a cache of ``C`` bytes holds exactly the objects whose distance is at most ``C``: the
    cache always holds a prefix of the recency stack (hits move to the top; misses enter at
    the top; eviction takes from the bottom). It holds the *longest* prefix that fits: an
    object evicted at some moment did not fit beside the objects above it then, and the set of
    objects above it only grows until it is requested again.
    """

    def __init__(
        self, sizes: Sequence[int], *, sample_rate: float = 1.0, slots: int = 1024
    ) -> None:
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError("sizes must be positive and at least one")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.sizes = sorted(set(sizes))
        self.sample_rate = sample_rate
        self._threshold = round(sample_rate * (1 << 24))
        k = len(self.sizes)
        # Requests (and bytes) whose smallest holding size is sizes[j]; index k: none.
        self._req = [0] * (k + 1)
        self._bytes = [0] * (k + 1)
        # Requests that had over-size objects in their window, counted per size directly.
        self._direct_req = [0] * k
        self._direct_bytes = [0] * k
        # Every request of the log (sampled or not), and the part that could never be cached.
        self.requests = 0
        self.bytes = 0
        self.uncacheable_requests = 0
        self.uncacheable_bytes = 0
        self.box_hit_bytes = 0
        # Cacheable requests that were sampled, and those among them seen for the first time.
        self.sampled_requests = 0
        self.sampled_bytes = 0
        self.cold_requests = 0
        self.cold_bytes = 0
        self._slots = max(2, slots)  # initial Fenwick size; small values exercise renumbering
        self._tree = [0] * (self._slots + 1)
        self._next = 1
        self._total = 0
        self._last: dict[Hashable, int] = {}
        self._size: dict[Hashable, int] = {}
        self._big: OrderedDict[Hashable, int] = OrderedDict()  # key -> position, by position

    # --- Fenwick tree of sizes by position -------------------------------------------------
    def _add(self, pos: int, delta: int) -> None:
        tree = self._tree
        n = len(tree)
        while pos < n:
            tree[pos] += delta
            pos += pos & -pos

    def _prefix(self, pos: int) -> int:
        tree = self._tree
        total = 0
        while pos > 0:
            total += tree[pos]
            pos -= pos & -pos
        return total

    def _compact(self) -> None:
        live = sorted(self._last.items(), key=lambda kv: kv[1])
        n = max(self._slots, 2 * len(live)) + 1
        tree = [0] * n
        renumber: dict[int, int] = {}
        for new, (key, old) in enumerate(live, start=1):
            renumber[old] = new
            self._last[key] = new
            tree[new] = self._size[key]
        for i in range(1, n):  # linear-time Fenwick build
            j = i + (i & -i)
            if j < n:
                tree[j] += tree[i]
        self._tree = tree
        self._next = len(live) + 1
        for key in self._big:
            self._big[key] = renumber[self._big[key]]

    # --- counting -----------------------------------------------------------------------------
    def add(self, access: Access) -> bool:
        """Count one request; True when it was replayed through the stack (sampled in)."""
        self.requests += 1
        self.bytes += access.requested
        self.box_hit_bytes += access.box_hit_bytes
        if not access.cacheable:
            self.uncacheable_requests += 1
            self.uncacheable_bytes += access.requested
            return False
        if self._threshold < 1 << 24 and not _sampled(access.key, self._threshold):
            return False
        self.sampled_requests += 1
        self.sampled_bytes += access.requested
        self._access(access.key, access.size, access.requested)
        return True

    def _access(self, key: Hashable, size: int, requested: int) -> None:
        if self._next >= len(self._tree):
            self._compact()  # before reading positions: it renumbers them
        prev = self._last.get(key)
        distance: float
        bigs: list[int] = []
        if prev is None:
            distance = math.inf
        else:
            between = self._total - self._prefix(prev)
            for other, pos in reversed(self._big.items()):
                if pos <= prev:
                    break
                bigs.append(self._size[other])
            old = self._size[key]
            self._add(prev, -old)
            self._total -= old
            self._big.pop(key, None)
            distance = between / self.sample_rate + size
        pos = self._next
        self._next += 1
        self._last[key] = pos
        self._size[key] = size
        self._add(pos, size)
        self._total += size
        if size > self.sizes[0]:
            self._big[key] = pos
        if distance == math.inf:
            self.cold_requests += 1
            self.cold_bytes += requested
            k = len(self.sizes)
            self._req[k] += 1
            self._bytes[k] += requested
            return
        if not bigs:
            j = bisect.bisect_left(self.sizes, distance)
            self._req[j] += 1
            self._bytes[j] += requested
            return
        # Objects larger than a size are never stored at that size: leave them out of it.
        scale = 1.0 / self.sample_rate
        bigs.sort()
        above = sum(bigs)  # bytes of the over-size objects larger than the current cap
        i = 0
        for j, cap in enumerate(self.sizes):
            while i < len(bigs) and bigs[i] <= cap:
                above -= bigs[i]
                i += 1
            held = distance - scale * above
            if held <= cap:
                self._direct_req[j] += 1
                self._direct_bytes[j] += requested

    def feed(self, accesses: Iterable[Access]) -> None:
        for access in accesses:
            self.add(access)

    def _estimate(self, hit_req: float, hit_bytes: float) -> CurvePoint:
        """Sampled hit counts -> ratios over the whole log. SHARDS_adj: the sample holds more
        or fewer requests than ``rate x`` all cacheable ones, mostly because a few of the
        hottest keys fell in or out of it; the difference is counted as requests at distance 0
        (hits at every size), which removes most of that bias."""
        rate = self.sample_rate
        adj_req = rate * (self.requests - self.uncacheable_requests) - self.sampled_requests
        adj_bytes = rate * (self.bytes - self.uncacheable_bytes) - self.sampled_bytes
        req = (hit_req + adj_req) / rate
        size = (hit_bytes + adj_bytes) / rate
        return CurvePoint(
            0,
            min(1.0, max(0.0, req / self.requests)) if self.requests else 0.0,
            min(1.0, max(0.0, size / self.bytes)) if self.bytes else 0.0,
        )

    def curve(self) -> list[CurvePoint]:
        out: list[CurvePoint] = []
        req = hit_bytes = 0
        for j, size in enumerate(self.sizes):
            req += self._req[j]
            hit_bytes += self._bytes[j]
            point = self._estimate(req + self._direct_req[j], hit_bytes + self._direct_bytes[j])
            out.append(CurvePoint(size, point.hit_ratio, point.byte_hit_ratio))
        return out

    @property
    def working_set_bytes(self) -> int:
        """Bytes of every distinct cacheable object seen (scaled up when sampling)."""
        return round(sum(self._size.values()) / self.sample_rate)

    @property
    def ceiling(self) -> CurvePoint:
        """An infinite disk: every request but the first for each object is a hit."""
        return self._estimate(
            self.sampled_requests - self.cold_requests, self.sampled_bytes - self.cold_bytes
        )

    @property
    def box_byte_hit_ratio(self) -> float:
        """What the real box achieved on the same requests (from the log's results)."""
        return self.box_hit_bytes / self.bytes if self.bytes else 0.0


def default_sizes(working_set: int, points: int = 12) -> list[int]:
    """Candidate disk sizes: a doubling ladder ending at the working set (past it LRU cannot
    gain), rounded to MiB."""
    if working_set <= 0:
        return [1 << 20]
    top = max(working_set, 1 << 20)
    sizes = {max(1 << 20, (top >> i) >> 20 << 20) for i in range(1, points)}
    sizes.add(top)
    return sorted(sizes)


@dataclass(frozen=True, slots=True)
class PolicyPoint:
    size: int
    lru_byte_hit_ratio: float
    default_byte_hit_ratio: float
    lru_hit_ratio: float
    default_hit_ratio: float


def simulate_policy(
    trace: Sequence[tuple[Hashable, int]],
    sizes: Iterable[int],
    *,
    sample_rate: float = 1.0,
    policy: Callable[[int], EvictionPolicy] | None = None,
) -> list[PolicyPoint]:
    """Replay a (sampled) ``(key, size)`` trace through the daemon's default policy and LRU at
    each size (miniature simulation: a sampled trace runs against ``size x sample_rate``).
    Both weigh a request by its object's size, so the two columns compare like with like."""
    make = policy or (lambda cap: default_policy(cap))
    out: list[PolicyPoint] = []
    for size in sizes:
        cap = max(1, round(size * sample_rate))
        lru = simulate(LRU(), trace, cap)
        best = simulate(make(cap), trace, cap)
        out.append(
            PolicyPoint(
                size, lru.byte_hit_ratio, best.byte_hit_ratio, lru.hit_ratio, best.hit_ratio
            )
        )
    return out
