"""Magnet links (BEP 9, BEP 53 for ``x.pe``, BEP 52 for ``urn:btmh``): parse and format.

Why it is built this way
------------------------
* A magnet link is a URI someone else wrote, so it is parsed strictly into a frozen
  :class:`Magnet`: the info hash must be exactly 40 hex or 32 base32 characters (v1) or a
  SHA-256 multihash (``1220`` + 64 hex, v2), percent escapes must decode to valid UTF-8, peer
  addresses must have a port in range, and two different hashes of the same version are an
  error rather than a guess. Parameters we do not use (``ws``, ``as``, ``kt``, ``so`` and other
  extensions) are ignored, as BEP 9 expects of clients.
* ``urllib.parse.parse_qsl`` is not used: it silently turns ``+`` into a space everywhere and
  leaves bad percent escapes as they are. Here only ``dn`` (a display name, where some
  producers write ``+`` for a space) gets ``+`` decoded, and a bad escape is an error.
* ``format_magnet`` writes the canonical form (lowercase hex, ``xt`` first) so that
  ``parse_magnet(format_magnet(m)) == m`` for every valid ``Magnet``; the tests check this.
* A size limit on the whole link and on the number of trackers and peers keeps a hostile link
  from costing more than a few list appends.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from swarm.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_LINK_LENGTH",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_MAX_TRACKERS",
    "Magnet",
    "MagnetError",
    "format_magnet",
    "parse_magnet",
]

DEFAULT_MAX_LINK_LENGTH: Final = 64 * 1024
DEFAULT_MAX_TRACKERS: Final = 200
DEFAULT_MAX_PEERS: Final = 200

_BTIH: Final = "urn:btih:"
_BTMH: Final = "urn:btmh:"
# Multihash prefix of a SHA2-256 digest: function code 0x12, length 0x20.
_SHA256_MULTIHASH: Final = "1220"
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]+")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9a-fA-F]{2})")
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# `xt.1`, `tr.2`: the numbered forms some producers write for repeated parameters.
_NUMBERED_RE: Final = re.compile(r"(xt|tr)\.\d{1,4}")


class MagnetError(RemoteProtocolError):
    """A magnet link that cannot be used."""

    def __init__(self, msg: str) -> None:
        super().__init__(f"magnet: {msg}")


@dataclass(frozen=True, slots=True)
class Magnet:
    """A parsed magnet link. At least one of the two hashes is set.

    ``peers`` are ``(host, port)`` pairs with IPv6 hosts written without brackets.
    ``length`` is ``xl``, the total size in bytes, when the link gives it.
    """

    info_hash: bytes | None = None
    info_hash_v2: bytes | None = None
    display_name: str | None = None
    trackers: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    length: int | None = None

    def __post_init__(self) -> None:
        # Our own code building a Magnet wrongly is a bug; format_magnet relies on these.
        if self.info_hash is None and self.info_hash_v2 is None:
            raise LocalProtocolError("Magnet needs info_hash or info_hash_v2")
        if self.info_hash is not None and len(self.info_hash) != 20:
            raise LocalProtocolError(f"info_hash must be 20 bytes, not {len(self.info_hash)}")
        if self.info_hash_v2 is not None and len(self.info_hash_v2) != 32:
            raise LocalProtocolError(f"info_hash_v2 must be 32 bytes, not {len(self.info_hash_v2)}")
        if any(not t for t in self.trackers):
            raise LocalProtocolError("empty tracker URL")
        for host, port in self.peers:
            if not host or not 0 < port < 65536:
                raise LocalProtocolError(f"bad peer address {host!r}:{port}")
        if self.length is not None and self.length < 0:
            raise LocalProtocolError(f"negative length {self.length}")

    @property
    def handshake_hash(self) -> bytes:
        """The 20 bytes to put in a peer handshake: v1 hash, else the truncated v2 hash."""
        if self.info_hash is not None:
            return self.info_hash
        assert self.info_hash_v2 is not None
        return self.info_hash_v2[:20]


def parse_magnet(
    link: str,
    *,
    max_length: int = DEFAULT_MAX_LINK_LENGTH,
    max_trackers: int = DEFAULT_MAX_TRACKERS,
    max_peers: int = DEFAULT_MAX_PEERS,
) -> Magnet:
    """Parse ``magnet:?xt=urn:btih:...&dn=...&tr=...``; raise :class:`MagnetError` if unusable."""
    if len(link) > max_length:
        raise MagnetError(f"link of {len(link)} characters longer than {max_length}")
    if link[:8].lower() != "magnet:?":
        raise MagnetError("link does not start with 'magnet:?'")
    v1: bytes | None = None
    v2: bytes | None = None
    name: str | None = None
    length: int | None = None
    trackers: list[str] = []
    peers: list[tuple[str, int]] = []
    # A fragment is not part of the query.
    query = link[8:].split("#", 1)[0]
    for param in query.split("&"):
        if not param:
            continue
        key, sep, raw = param.partition("=")
        if not sep:
            raise MagnetError(f"parameter {key[:40]!r} has no '='")
        key = key.lower()
        if _NUMBERED_RE.fullmatch(key):
            key = key.split(".", 1)[0]
        if key == "xt":
            value = _unescape(raw, key)
            lowered = value.lower()
            if lowered.startswith(_BTIH):
                v1 = _same(v1, _parse_btih(value[len(_BTIH) :]), "urn:btih")
            elif lowered.startswith(_BTMH):
                v2 = _same(v2, _parse_btmh(value[len(_BTMH) :]), "urn:btmh")
            # Other URNs (ed2k, sha1, ...) name the same content for other networks: ignored.
        elif key == "dn":
            if name is not None:
                raise MagnetError("more than one 'dn'")
            name = _unescape(raw.replace("+", " "), key)
        elif key == "tr":
            url = _unescape(raw, key).strip()
            if url and url not in trackers:
                if len(trackers) >= max_trackers:
                    raise MagnetError(f"more than {max_trackers} trackers")
                trackers.append(url)
        elif key == "x.pe":
            peer = _parse_peer(_unescape(raw, key))
            if peer not in peers:
                if len(peers) >= max_peers:
                    raise MagnetError(f"more than {max_peers} peers")
                peers.append(peer)
        elif key == "xl":
            if length is not None:
                raise MagnetError("more than one 'xl'")
            if not raw.isdigit() or not raw.isascii() or len(raw) > 20:
                raise MagnetError(f"'xl' is not a byte count: {raw[:40]!r}")
            length = int(raw)
    if v1 is None and v2 is None:
        raise MagnetError("no 'xt=urn:btih:' or 'xt=urn:btmh:' info hash")
    return Magnet(
        info_hash=v1,
        info_hash_v2=v2,
        display_name=name,
        trackers=tuple(trackers),
        peers=tuple(peers),
        length=length,
    )


def format_magnet(magnet: Magnet) -> str:
    """The canonical magnet link for ``magnet`` (hashes first, hex in lowercase)."""
    parts: list[str] = []
    if magnet.info_hash is not None:
        parts.append(f"xt={_BTIH}{magnet.info_hash.hex()}")
    if magnet.info_hash_v2 is not None:
        parts.append(f"xt={_BTMH}{_SHA256_MULTIHASH}{magnet.info_hash_v2.hex()}")
    if magnet.display_name is not None:
        parts.append(f"dn={_escape(magnet.display_name)}")
    if magnet.length is not None:
        parts.append(f"xl={magnet.length}")
    parts.extend(f"tr={_escape(url)}" for url in magnet.trackers)
    for host, port in magnet.peers:
        shown = f"[{host}]" if ":" in host else host
        parts.append(f"x.pe={_escape(shown, safe='[]:')}:{port}")
    return "magnet:?" + "&".join(parts)


# --- pieces ---------------------------------------------------------------------------------


def _escape(text: str, safe: str = "") -> str:
    try:
        return quote(text, safe=safe)
    except UnicodeEncodeError:
        raise LocalProtocolError(f"cannot put {text[:40]!r} in a magnet link") from None


def _unescape(raw: str, key: str) -> str:
    # Strict: every '%' starts two hex digits, and the bytes are UTF-8.
    bad = _BAD_ESCAPE_RE.search(raw)
    if bad:
        raise MagnetError(f"bad percent escape {raw[bad.start() : bad.start() + 3]!r} in {key!r}")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise MagnetError(f"{key!r} is not UTF-8 after percent decoding") from None


def _same(old: bytes | None, new: bytes, what: str) -> bytes:
    if old is not None and old != new:
        raise MagnetError(f"two different {what} hashes")
    return new


def _parse_btih(text: str) -> bytes:
    if len(text) == 40 and _HEX_RE.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) == 32:
        try:
            return base64.b32decode(text.upper())
        except binascii.Error:
            raise MagnetError(f"urn:btih {text!r} is not valid base32") from None
    raise MagnetError(f"urn:btih must be 40 hex or 32 base32 characters, got {text[:80]!r}")


def _parse_btmh(text: str) -> bytes:
    if not text.startswith(_SHA256_MULTIHASH):
        raise MagnetError(f"urn:btmh {text[:80]!r} is not a SHA-256 multihash (1220...)")
    digest = text[len(_SHA256_MULTIHASH) :]
    if len(digest) != 64 or not _HEX_RE.fullmatch(digest):
        raise MagnetError(f"urn:btmh digest must be 64 hex characters, got {digest[:80]!r}")
    return bytes.fromhex(digest)


def _parse_peer(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise MagnetError(f"x.pe {text[:80]!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise MagnetError(f"x.pe {text[:80]!r} has port out of range")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError:
            raise MagnetError(f"x.pe {text[:80]!r} has a bad IPv6 address") from None
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(host) or host.replace(".", "").isdigit():
        raise MagnetError(f"x.pe {text[:80]!r} has a bad host")
    return host.lower(), port
