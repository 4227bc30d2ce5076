"""Glue between the interceptor's classified packets and the swarm side's sensor.

Why here: ``interceptor/`` knows nothing of torrents and ``swarm/`` nothing of packets, so
the composition root owns the one function that turns a classified IPv4 packet into sensor
calls, and a replacement payload back into a packet (lengths and checksums fixed by
:func:`interceptor.packet.replace_udp_payload`). It also serves the HTTP announce hook, so
tracker requests that go through the HTTP proxy path feed the same sensor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from interceptor.classify import Classified, Kind
from interceptor.packet import replace_udp_payload
from interceptor.subscribers import is_subscriber
from swarm.sensor import Sensor
from swarmcache.http.handler import BodyRewrite

__all__ = ["BitTorrentSensing"]

_REQUEST_LINE_MAX: Final = 4096


class BitTorrentSensing:
    """Implements the sensing queue's handler and the HTTP handler's announce hook."""

    def __init__(self, sensor: Sensor, subscribers: Iterable[ipaddress.IPv4Network]) -> None:
        self.sensor = sensor
        self.subscribers = tuple(subscribers)

    # --- interceptor.sensequeue.SenseHandler ---------------------------------------------

    def __call__(self, c: Classified, packet: bytes) -> bytes | None:
        kind = c.kind
        payload = packet[c.payload_offset : c.payload_offset + c.payload_length]
        from_subscriber = is_subscriber(c.src[0], self.subscribers) if c.src[1] else False
        if kind is Kind.BT_HANDSHAKE and c.info_hash is not None:
            local = c.src if from_subscriber else c.dst
            self.sensor.handshake(c.info_hash, local)
        elif kind is Kind.HTTP_ANNOUNCE and from_subscriber:
            # A tracker on a port the proxy does not divert: sensed, its reply not rewritten.
            url, query = _announce_target(payload, c.dst)
            if url:
                self.sensor.http_announce(c.src[0], url, query)
        elif kind is Kind.UDP_TRACKER_ANNOUNCE and from_subscriber:
            self.sensor.udp_tracker_request(c.src, c.dst, payload)
        elif kind is Kind.UDP_TRACKER_ANNOUNCE_RESPONSE and not from_subscriber:
            return _replaced(packet, self.sensor.udp_tracker_response(c.dst, c.src, payload))
        elif kind is Kind.DHT_QUERY and from_subscriber:
            self.sensor.dht_query(c.src, c.dst, payload)
        elif kind is Kind.DHT_RESPONSE and not from_subscriber:
            return _replaced(packet, self.sensor.dht_response(c.dst, c.src, payload))
        return None

    # --- swarmcache.http.handler.AnnounceHook ----------------------------------------------

    def announce(self, client_ip: str, url: bytes, query: bytes) -> BodyRewrite | None:
        return self.sensor.http_announce(client_ip, url, query)


def _replaced(packet: bytes, payload: bytes | None) -> bytes | None:
    return None if payload is None else replace_udp_payload(packet, payload)


def _announce_target(payload: bytes, dst: tuple[str, int]) -> tuple[bytes, bytes]:
    """(absolute URL, query) of a ``GET /announce?...`` seen in a packet; (b"", b"") if the
    request line is not all there."""
    end = payload.find(b" HTTP/", 4, _REQUEST_LINE_MAX)
    if end < 0:
        return b"", b""
    target = payload[4:end]
    path, _, query = target.partition(b"?")
    host = f"{dst[0]}:{dst[1]}".encode()
    return b"http://" + host + path, query
