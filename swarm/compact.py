"""Compact peer lists (BEP 23, BEP 7): 6-byte IPv4 and 18-byte IPv6 address/port entries.

Why it is built this way
------------------------
* The same byte format shows up in HTTP tracker replies (``peers``, ``peers6``), UDP tracker
  announce responses (BEP 15), DHT ``values`` and PEX. The interceptor rewrites these lists in
  flight, so this module has no imports beyond the standard library and :mod:`swarm.errors`.
* Fast: ``struct.iter_unpack`` splits the whole buffer in C and ``socket.inet_ntop`` formats
  each address in C; there is no per-byte Python loop. Encoding joins one ``bytes`` per entry.
* Faithful: decoding returns what the wire says, port 0 included. Whether a port-0 peer is
  acceptable is the caller's decision (the tracker cores reject it); a rewriter must be able
  to read and re-emit a list byte for byte.
* Encoding is strict (``inet_pton``, not the lenient ``inet_aton`` that reads ``"1"`` as
  ``0.0.0.1``): a wrong address here is a bug in our code, reported as
  :class:`~swarm.errors.LocalProtocolError`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Final

from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "PEER4_SIZE",
    "PEER6_SIZE",
    "decode_peers4",
    "decode_peers6",
    "encode_peers4",
    "encode_peers6",
]

PEER4_SIZE: Final = 6
PEER6_SIZE: Final = 18

_PEER4: Final = struct.Struct("!4sH")
_PEER6: Final = struct.Struct("!16sH")
_AF_INET: Final = socket.AF_INET
_AF_INET6: Final = socket.AF_INET6


def decode_peers4(b: bytes | bytearray | memoryview) -> list[tuple[str, int]]:
    """Decode concatenated 6-byte entries (4-byte IPv4 address, 2-byte port, network order)."""
    if len(b) % PEER4_SIZE:
        raise RemoteProtocolError(
            f"compact IPv4 peer list of {len(b)} bytes is not a multiple of {PEER4_SIZE}"
        )
    ntop = socket.inet_ntop
    return [(ntop(_AF_INET, ip), port) for ip, port in _PEER4.iter_unpack(b)]


def decode_peers6(b: bytes | bytearray | memoryview) -> list[tuple[str, int]]:
    """Decode concatenated 18-byte entries (16-byte IPv6 address, 2-byte port)."""
    if len(b) % PEER6_SIZE:
        raise RemoteProtocolError(
            f"compact IPv6 peer list of {len(b)} bytes is not a multiple of {PEER6_SIZE}"
        )
    ntop = socket.inet_ntop
    return [(ntop(_AF_INET6, ip), port) for ip, port in _PEER6.iter_unpack(b)]


def _encode(
    peers: Iterable[tuple[str, int]], family: int, packer: struct.Struct, what: str
) -> bytes:
    pton = socket.inet_pton
    pack = packer.pack
    out: list[bytes] = []
    for host, port in peers:
        try:
            packed = pton(family, host)
        except (OSError, TypeError, ValueError):
            raise LocalProtocolError(f"compact: {host!r} is not an {what} address") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(f"compact: port {port!r} of {host} is not in 0..65535")
        out.append(pack(packed, port))
    return b"".join(out)


def encode_peers4(peers: Iterable[tuple[str, int]]) -> bytes:
    """Encode ``(ipv4, port)`` pairs as a compact list; the inverse of :func:`decode_peers4`."""
    return _encode(peers, _AF_INET, _PEER4, "IPv4")


def encode_peers6(peers: Iterable[tuple[str, int]]) -> bytes:
    """Encode ``(ipv6, port)`` pairs as a compact list; the inverse of :func:`decode_peers6`."""
    return _encode(peers, _AF_INET6, _PEER6, "IPv6")
