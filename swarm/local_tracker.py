"""A tracker for local peers that always names the box (BEP 22's "local tracker", sans-IO core).

Why it exists: BEP 22 was written for ISP caches, and an operator can point subscribers (or a
DNS SRV record) at it; tests use it to point real clients such as aria2, which cannot be given a
peer address directly, at the box. It answers announces from subscriber addresses only, with the
box's seeding address first (only for torrents the box holds) and the other local peers that
announced the same torrent, so local peers also find each other.

This module parses and answers; the daemon's asyncio layer serves it over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from swarm.bencode import bencode
from swarm.compact import encode_peers4
from swarm.errors import RemoteProtocolError

__all__ = ["LocalTracker", "parse_announce_query"]

_PEER_TTL: Final = 3600.0
_MAX_PEERS_PER_TORRENT: Final = 1000


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    port: int
    event: str
    numwant: int


def parse_announce_query(query: str) -> Announce:
    """The raw query string of ``GET /announce?...`` (binary info_hash percent-encoded)."""
    fields: dict[str, bytes] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
        fields[key] = value.encode("latin-1")
    try:
        info_hash = fields["info_hash"]
        peer_id = fields["peer_id"]
        port = int(fields["port"])
    except KeyError as exc:
        raise RemoteProtocolError(f"announce without {exc.args[0]}") from None
    except ValueError:
        raise RemoteProtocolError("announce port is not a number") from None
    if len(info_hash) != 20:
        raise RemoteProtocolError(f"info_hash of {len(info_hash)} bytes, expected 20")
    if not 1 <= port <= 65535:
        raise RemoteProtocolError(f"port {port} out of range")
    try:
        numwant = int(fields.get("numwant", b"50"))
    except ValueError:
        raise RemoteProtocolError("numwant is not a number") from None
    event = fields.get("event", b"").decode("latin-1")
    return Announce(info_hash, peer_id, port, event, max(0, min(numwant, 200)))


class LocalTracker:
    """Local peers per torrent, and the box in front of them for torrents it holds."""

    def __init__(self, box: tuple[str, int], holds: Callable[[bytes], bool]) -> None:
        self.box = box
        self.holds = holds
        self._peers: dict[bytes, dict[tuple[str, int], float]] = {}

    def answer(self, client_ip: str, query: str, now: float | None = None) -> bytes:
        """The bencoded reply to one announce (a ``failure reason`` for a bad one)."""
        try:
            ann = parse_announce_query(query)
        except RemoteProtocolError as exc:
            return bencode({b"failure reason": str(exc).encode()})
        now = time.monotonic() if now is None else now
        swarm = self._peers.setdefault(ann.info_hash, {})
        for peer, seen in list(swarm.items()):
            if now - seen > _PEER_TTL:
                del swarm[peer]
        me = (client_ip, ann.port)
        if ann.event == "stopped":
            swarm.pop(me, None)
        elif len(swarm) < _MAX_PEERS_PER_TORRENT or me in swarm:
            swarm[me] = now
        peers: list[tuple[str, int]] = []
        if self.holds(ann.info_hash):
            peers.append(self.box)
        peers.extend(p for p in swarm if p != me and p != self.box)
        return bencode(
            {
                b"interval": 300,
                b"min interval": 30,
                b"complete": 1 if self.holds(ann.info_hash) else 0,
                b"incomplete": len(swarm),
                b"peers": encode_peers4(peers[: max(ann.numwant, 1)]),
            }
        )
