"""Popularity table: which torrents local peers use, and which ones the box should cache.

Why it is built this way
------------------------
* Every sensed BitTorrent packet (a handshake, an HTTP or UDP announce, a DHT query, an LSD
  announce) is a *sighting*: some local peer uses some info_hash. A torrent is **admitted**
  (the box fetches and seeds it, and steering starts) once enough distinct local peers were
  seen recently (``min_local_peers``, default 2, and optionally ``min_bytes`` of traffic), or
  when the operator pins it. A torrent used by one subscriber only is not worth caching: the
  box saves upstream only when a second local peer fetches it (research brief §4.1: popularity
  is concentrated, 20% of torrents carry over 95% of activity).
* :meth:`PopularityTable.sighting` returns an :class:`Admission` **exactly once** per admission,
  at the sighting that crosses the threshold, so the caller starts one download, not one per
  packet. Later sightings return None.
* A local peer is counted by **IP address**, not address and port: a client's outgoing
  connections come from ephemeral ports, so one subscriber dialling fifty remote peers would
  otherwise count as fifty local peers and admit a torrent by itself.
* Private torrents (BEP 27) are never admitted, even when pinned. The flag is only known once
  the info dict is (after admission, usually), so :meth:`mark_private` also revokes an
  admission; :meth:`steerable` (admitted *and* known to be public) is the check for the
  per-packet steering path, which must not touch a torrent whose flag is still unknown.
* Sans-IO: every call that changes or reads time-dependent state takes ``now`` (monotonic
  seconds), so tests replay workloads without sleeping. :meth:`admitted` and
  :meth:`steerable` are O(1) set lookups, called per packet.
* Bounded memory whatever the traffic: at most ``max_entries`` torrents (the least recently
  seen *non-admitted* entry is evicted for a new one; admitted ones are what the box holds and
  leave only through :meth:`unadmit`), at most ``max_peers_per_entry`` local peers per torrent
  (the least recently seen goes), peers not seen for ``peer_ttl`` forgotten, at most
  ``max_trackers`` announce URLs of bounded length per torrent. An evicted entry forgets its
  private flag; a re-sighted private torrent may then be admitted again until its metadata
  says private once more (costs one metadata fetch, never a steering mistake, because
  :meth:`steerable` needs a known-public flag).

Theory of operation
-------------------
``_entries`` maps info_hash to a mutable ``_Entry``. ``_lru`` holds the info_hashes of entries
that may be evicted (not admitted), oldest sighting first; ``_admitted`` and ``_steerable`` are
the sets the per-packet checks read. An entry's ``peers`` dict maps IP to last sighting and is
kept in sighting order (re-inserted on every sighting), so the stale and the least recently
seen peers are at its front.

::

    entry state     on                                        next
    watching        sighting reaching the threshold           admitted   (returns Admission)
    watching        pin()                                     admitted   (returns Admission)
    any             mark_private()                            private    (revokes admission)
    admitted        unadmit()  (the store dropped it)         watching   (peers, bytes reset)
    private         anything                                  private    (never admitted)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

from swarm.errors import LocalProtocolError, SwarmError

__all__ = [
    "KINDS",
    "Admission",
    "PopularityTable",
    "TorrentSighting",
]

LocalPeer: TypeAlias = tuple[str, int] | str

#: Where a sighting came from.
KINDS: Final = frozenset({"handshake", "http_announce", "udp_announce", "dht", "lsd"})

# An announce URL longer than this is not kept (passkeys are short; this is a log-filler).
_MAX_TRACKER_URL: Final = 512


@dataclass(frozen=True, slots=True)
class Admission:
    """Start caching ``info_hash``: ``trackers`` are the announce URLs seen for it so far."""

    info_hash: bytes
    trackers: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class TorrentSighting:
    """A snapshot of one torrent's entry. ``private`` is None until the info dict is known."""

    info_hash: bytes
    local_peers: int
    bytes_seen: int
    first_seen: float
    last_seen: float
    admitted: bool
    pinned: bool
    private: bool | None
    trackers: tuple[str, ...]
    sources: MappingProxyType[str, int]


class _Entry:
    __slots__ = (
        "admitted",
        "bytes_seen",
        "first_seen",
        "last_seen",
        "peers",
        "pinned",
        "private",
        "sources",
        "trackers",
    )

    def __init__(self, now: float) -> None:
        self.peers: dict[str, float] = {}
        self.bytes_seen = 0
        self.first_seen = now
        self.last_seen = now
        self.admitted = False
        self.pinned = False
        self.private: bool | None = None
        self.trackers: dict[str, None] = {}
        self.sources: dict[str, int] = {}


class PopularityTable:
    """info_hash → local popularity, admission decisions, bounded (see the module docstring)."""

    def __init__(
        self,
        *,
        min_local_peers: int = 2,
        min_bytes: int = 0,
        max_entries: int = 100_000,
        max_peers_per_entry: int = 64,
        max_trackers: int = 16,
        peer_ttl: float = 6 * 3600.0,
    ) -> None:
        if min_local_peers < 1:
            raise LocalProtocolError(f"popularity: min_local_peers {min_local_peers} < 1")
        if max_peers_per_entry < min_local_peers:
            raise LocalProtocolError(
                f"popularity: max_peers_per_entry {max_peers_per_entry} is below "
                f"min_local_peers {min_local_peers}: nothing could ever be admitted"
            )
        if min_bytes < 0 or max_entries < 1 or max_trackers < 0 or peer_ttl <= 0:
            raise LocalProtocolError(
                "popularity: min_bytes and max_trackers must be >= 0, max_entries and peer_ttl > 0"
            )
        self.min_local_peers = min_local_peers
        self.min_bytes = min_bytes
        self.max_entries = max_entries
        self.max_peers_per_entry = max_peers_per_entry
        self.max_trackers = max_trackers
        self.peer_ttl = peer_ttl
        self._entries: dict[bytes, _Entry] = {}
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        self._admitted: set[bytes] = set()
        self._steerable: set[bytes] = set()

    # --- per-packet checks ------------------------------------------------------------------

    def admitted(self, info_hash: bytes) -> bool:
        """Is the box caching ``info_hash`` (threshold crossed or pinned, not private)?"""
        return info_hash in self._admitted

    def steerable(self, info_hash: bytes) -> bool:
        """Admitted and known to be public: peer lists for it may be rewritten."""
        return info_hash in self._steerable

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, info_hash: object) -> bool:
        return info_hash in self._entries

    # --- updates ----------------------------------------------------------------------------

    def sighting(
        self,
        info_hash: bytes,
        *,
        local_peer: LocalPeer,
        kind: str,
        now: float,
        bytes_seen: int = 0,
        tracker: str | None = None,
    ) -> Admission | None:
        """Record that ``local_peer`` uses ``info_hash``; an :class:`Admission` the one time
        this sighting makes the torrent cross the threshold, else None.

        ``kind`` is one of :data:`KINDS`; ``bytes_seen`` is traffic for this torrent since the
        last sighting; ``tracker`` an announce URL the peer used. When the table is full of
        admitted torrents a new info_hash is not recorded.
        """
        _check_hash(info_hash)
        if kind not in KINDS:
            raise LocalProtocolError(f"popularity: unknown sighting kind {kind!r}")
        if isinstance(bytes_seen, bool) or not isinstance(bytes_seen, int) or bytes_seen < 0:
            raise LocalProtocolError(f"popularity: bytes_seen {bytes_seen!r} is not a count")
        ip = local_peer if isinstance(local_peer, str) else local_peer[0]
        entry = self._entry(info_hash, now)
        if entry is None:
            return None
        entry.last_seen = max(entry.last_seen, now)
        entry.bytes_seen += bytes_seen
        entry.sources[kind] = entry.sources.get(kind, 0) + 1
        if tracker is not None:
            self._add_tracker(entry, tracker)
        peers = entry.peers
        peers.pop(ip, None)
        peers[ip] = now
        self._prune(entry, now)
        while len(peers) > self.max_peers_per_entry:
            del peers[next(iter(peers))]
        if not entry.admitted:
            self._lru.move_to_end(info_hash)
            if (
                entry.private is not True
                and len(peers) >= self.min_local_peers
                and entry.bytes_seen >= self.min_bytes
            ):
                return self._admit(
                    info_hash, entry, f"{len(peers)} local peers, {entry.bytes_seen} bytes seen"
                )
        return None

    def pin(self, info_hash: bytes, *, now: float) -> Admission | None:
        """Operator pin: admit regardless of popularity (never a private torrent). An
        :class:`Admission` if this made it admitted, else None."""
        _check_hash(info_hash)
        entry = self._entry(info_hash, now)
        if entry is None:
            raise SwarmError(f"popularity: cannot pin, all {self.max_entries} entries are admitted")
        entry.pinned = True
        if entry.admitted or entry.private is True:
            return None
        return self._admit(info_hash, entry, "pinned")

    def unpin(self, info_hash: bytes) -> None:
        """Drop the operator pin; an admission stays until :meth:`unadmit`."""
        entry = self._entries.get(info_hash)
        if entry is not None:
            entry.pinned = False

    def mark_private(self, info_hash: bytes, *, now: float, private: bool = True) -> None:
        """Record the info dict's ``private`` flag. True revokes any admission for good."""
        _check_hash(info_hash)
        entry = self._entry(info_hash, now)
        if entry is None:
            return
        entry.private = private
        if private:
            if entry.admitted:
                self._revoke(info_hash, entry)
        elif entry.admitted:
            self._steerable.add(info_hash)

    def unadmit(self, info_hash: bytes) -> None:
        """The box no longer holds ``info_hash`` (store eviction, operator): stop steering
        and start counting afresh, so it is admitted again only on new popularity."""
        entry = self._entries.get(info_hash)
        if entry is None or not entry.admitted:
            return
        entry.pinned = False
        entry.peers.clear()
        entry.bytes_seen = 0
        self._revoke(info_hash, entry)

    # --- reading ----------------------------------------------------------------------------

    def get(self, info_hash: bytes, *, now: float) -> TorrentSighting | None:
        """A snapshot of one entry (stale peers forgotten first), or None if not tracked."""
        entry = self._entries.get(info_hash)
        if entry is None:
            return None
        self._prune(entry, now)
        return _snapshot(info_hash, entry)

    def snapshot(self, *, now: float) -> list[TorrentSighting]:
        """Every entry, most local peers first (then most bytes)."""
        out = []
        for info_hash, entry in self._entries.items():
            self._prune(entry, now)
            out.append(_snapshot(info_hash, entry))
        out.sort(key=lambda s: (-s.local_peers, -s.bytes_seen, s.info_hash))
        return out

    # --- internals --------------------------------------------------------------------------

    def _entry(self, info_hash: bytes, now: float) -> _Entry | None:
        entry = self._entries.get(info_hash)
        if entry is not None:
            return entry
        if len(self._entries) >= self.max_entries:
            if not self._lru:
                return None
            victim, _ = self._lru.popitem(last=False)
            del self._entries[victim]
        entry = _Entry(now)
        self._entries[info_hash] = entry
        self._lru[info_hash] = None
        return entry

    def _admit(self, info_hash: bytes, entry: _Entry, reason: str) -> Admission:
        entry.admitted = True
        self._lru.pop(info_hash, None)
        self._admitted.add(info_hash)
        if entry.private is False:
            self._steerable.add(info_hash)
        return Admission(info_hash, tuple(entry.trackers), reason)

    def _revoke(self, info_hash: bytes, entry: _Entry) -> None:
        entry.admitted = False
        self._admitted.discard(info_hash)
        self._steerable.discard(info_hash)
        self._lru[info_hash] = None
        self._lru.move_to_end(info_hash)

    def _prune(self, entry: _Entry, now: float) -> None:
        peers = entry.peers
        limit = now - self.peer_ttl
        while peers:
            ip = next(iter(peers))
            if peers[ip] > limit:
                break
            del peers[ip]

    def _add_tracker(self, entry: _Entry, url: str) -> None:
        if (
            url in entry.trackers
            or len(entry.trackers) >= self.max_trackers
            or not 0 < len(url) <= _MAX_TRACKER_URL
            or not url.isprintable()
        ):
            return
        entry.trackers[url] = None


def _check_hash(info_hash: bytes) -> None:
    if not isinstance(info_hash, bytes) or len(info_hash) != 20:
        raise LocalProtocolError(f"popularity: info_hash must be 20 bytes, not {info_hash!r}")


def _snapshot(info_hash: bytes, entry: _Entry) -> TorrentSighting:
    return TorrentSighting(
        info_hash=info_hash,
        local_peers=len(entry.peers),
        bytes_seen=entry.bytes_seen,
        first_seen=entry.first_seen,
        last_seen=entry.last_seen,
        admitted=entry.admitted,
        pinned=entry.pinned,
        private=entry.private,
        trackers=tuple(entry.trackers),
        sources=MappingProxyType(dict(entry.sources)),
    )
