"""What the box learns from its subscribers' BitTorrent traffic, and how it answers (sans-IO).

Why it is built this way: the interceptor hands over packets and tracker requests with no
idea what they mean; this class turns them into *sightings* (which torrents local peers
fetch, feeding :class:`swarm.popularity.PopularityTable`), *admissions* (a torrent popular
enough to cache: the callback starts its download), *outside peers* for admitted torrents
(learnt from the replies the subscribers get, so the box needs no DHT node or tracker
announce of its own), and *steering* (the box added to peer lists on their way to
subscribers, only for steerable torrents: admitted and known to be public).

Every method takes the parts of a packet it needs and returns the replacement payload or
None ("leave it untouched"). Replies do not name their torrent (UDP tracker and DHT): they
are matched to the request a subscriber sent through a bounded, expiring query table.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from swarm.errors import RemoteProtocolError
from swarm.local_tracker import parse_announce_query
from swarm.popularity import Admission, PopularityTable
from swarm.steering import (
    DhtQueryTable,
    parse_krpc,
    parse_udp_announce_request,
    peers_in_get_peers_response,
    peers_in_tracker_response,
    peers_in_udp_announce_response,
    rewrite_get_peers_response,
    rewrite_tracker_response,
    rewrite_udp_announce_response,
)

__all__ = ["Sensor"]

Address = tuple[str, int]
# A 4-byte BEP 15 transaction id is kept apart from DHT ids by this prefix in the table.
_UDP_TRACKER_TAG: Final = b"bep15:"


class Sensor:
    def __init__(
        self,
        *,
        box: Address,
        popularity: PopularityTable,
        admit: Callable[[Admission], None],
        learn_peers: Callable[[bytes, list[Address]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.box = box
        self.popularity = popularity
        self._admit = admit
        self._learn = learn_peers
        self._clock = clock
        self._queries = DhtQueryTable()
        self.sightings: Counter[str] = Counter()
        self.steered: Counter[str] = Counter()

    # --- sightings -----------------------------------------------------------------------

    def _sighting(
        self, info_hash: bytes, local: Address | str, kind: str, tracker: str | None = None
    ) -> None:
        self.sightings[kind] += 1
        admission = self.popularity.sighting(
            info_hash, local_peer=local, kind=kind, now=self._clock(), tracker=tracker
        )
        if admission is not None:
            self._admit(admission)

    def handshake(self, info_hash: bytes, local: Address) -> None:
        """A plaintext BitTorrent handshake to or from a subscriber."""
        self._sighting(info_hash, local[0], "handshake")

    # --- HTTP trackers (seen in the proxy path) --------------------------------------------

    def http_announce(
        self, client_ip: str, url: bytes, query: bytes
    ) -> Callable[[bytes, str | None], bytes | None] | None:
        """A subscriber's HTTP announce. Returns the rewrite for the tracker's reply."""
        try:
            announce = parse_announce_query(query.decode("latin-1"))
        except RemoteProtocolError:
            return None
        text = url.decode("latin-1")
        parts = urlsplit(text)
        tracker = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._sighting(announce.info_hash, client_ip, "http_announce", tracker)
        info_hash = announce.info_hash

        def rewrite(body: bytes, encoding: str | None) -> bytes | None:
            if self.popularity.admitted(info_hash):
                peers = peers_in_tracker_response(body, encoding)
                if peers:
                    self._learn(info_hash, peers)
            if not self.popularity.steerable(info_hash):
                return None
            new = rewrite_tracker_response(body, self.box, content_encoding=encoding)
            if new is not None:
                self.steered["http_tracker"] += 1
            return new

        return rewrite

    # --- UDP trackers (BEP 15) -----------------------------------------------------------

    def udp_tracker_request(self, local: Address, remote: Address, payload: bytes) -> None:
        request = parse_udp_announce_request(payload)
        if request is None:
            return
        tracker = f"udp://{remote[0]}:{remote[1]}/announce"
        self._sighting(request.info_hash, local[0], "udp_announce", tracker)
        tid = _UDP_TRACKER_TAG + request.transaction_id.to_bytes(4, "big")
        self._queries.note_query(local, remote, tid, request.info_hash, self._clock())

    def udp_tracker_response(self, local: Address, remote: Address, payload: bytes) -> bytes | None:
        if len(payload) < 8:
            return None
        tid = _UDP_TRACKER_TAG + payload[4:8]
        info_hash = self._queries.match_reply(local, remote, tid, self._clock())
        if info_hash is None or not self.popularity.admitted(info_hash):
            return None
        peers = peers_in_udp_announce_response(payload)
        if peers:
            self._learn(info_hash, peers)
        if not self.popularity.steerable(info_hash):
            return None
        new = rewrite_udp_announce_response(payload, self.box)
        if new is not None:
            self.steered["udp_tracker"] += 1
        return new

    # --- DHT (BEP 5) ---------------------------------------------------------------------

    def dht_query(self, local: Address, remote: Address, payload: bytes) -> None:
        message = parse_krpc(payload)
        if message is None or message.kind != "q" or message.info_hash is None:
            return
        if message.method not in ("get_peers", "announce_peer"):
            return
        self._sighting(message.info_hash, local[0], "dht")
        if message.method == "get_peers":
            self._queries.note_query(
                local, remote, message.transaction_id, message.info_hash, self._clock()
            )

    def dht_response(self, local: Address, remote: Address, payload: bytes) -> bytes | None:
        message = parse_krpc(payload)
        if message is None or message.kind != "r":
            return None
        info_hash = self._queries.match_reply(
            local, remote, message.transaction_id, self._clock()
        )
        if info_hash is None or not self.popularity.admitted(info_hash):
            return None
        peers = peers_in_get_peers_response(payload)
        if peers:
            self._learn(info_hash, peers)
        if not self.popularity.steerable(info_hash):
            return None
        new = rewrite_get_peers_response(payload, self.box)
        if new is not None:
            self.steered["dht"] += 1
        return new
