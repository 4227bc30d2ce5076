"""Steering rewriters: put the box's seeding address into peer lists heading to subscribers.

Why it is built this way
------------------------
* Local peers only reach the box if they learn its address. Tracker replies (HTTP and UDP)
  and DHT ``get_peers`` replies are where clients learn addresses, so the interceptor rewrites
  them in flight (research brief §2.1). The functions here take the payload bytes and return
  the bytes to emit instead, or **None, meaning "leave the packet untouched"**. There is no
  third outcome: a rewrite that cannot be done safely (garbage, truncation, an encoding we do
  not speak, a failure reply, a payload over a bound) must never drop or damage the original,
  so every bad input maps to None rather than to an exception (design brief §3a). The one
  exception is a ``box`` that is not an IPv4 address and port: that is our own bug and raises
  :class:`~swarm.errors.LocalProtocolError`, whatever the payload.
* *Which* packets to rewrite is the caller's decision, made before calling: only packets
  headed to subscribers, only for torrents the popularity table admitted and knows to be
  public (BEP 27: never private torrents), never HTTPS trackers (we cannot see them anyway).
  A DHT or UDP tracker reply does not name its torrent, so the caller remembers the query's
  info_hash in a :class:`DhtQueryTable` keyed by addresses and transaction id; the same table
  serves BEP 15 transactions (pass the 4-byte transaction id).
* The box goes **first** in the list and appears **once**: a copy already in the list is
  removed before the box is prepended, so rewriting an already rewritten reply is a no-op
  (and returns None: nothing to change). First, because clients walk peer lists in order and
  connect to the first ones while their connection budget is empty.
* Re-encoding is canonical bencode (:func:`swarm.bencode.bencode`): keys come out sorted even
  when a tracker or DHT node sent them unsorted. Nothing hashes these dictionaries, and every
  key, known or not (``ip``, ``v``, ``nodes6``, ``warning message``), is carried over.
* Counts are left alone: ``complete``/``incomplete`` in HTTP replies and ``seeders``/
  ``leechers`` in BEP 15 replies stay what the tracker said. They describe the tracker's
  swarm, which the box may not be part of, the box may still hold only part of the torrent
  (so calling it a seeder would be a lie), and clients use them for display and scheduling
  only; a changed count would also disagree with the same tracker's scrape.
* Datagrams must not grow past what fits in one packet: a UDP reply is kept within
  ``max(len(original), max_datagram)`` bytes (default 1472, the UDP payload of a 1500-byte
  IPv4 packet) by dropping peers from the *end* of the list, so the box never causes IP
  fragmentation that the original did not already have.
* IPv4 only: the box is one IPv4 address, written as a 6-byte compact entry into ``peers``,
  BEP 15's IPv4 peer array and DHT ``values``. ``peers6`` and IPv6 datagrams are not touched;
  the caller must not hand over UDP payloads from IPv6 packets (their peer entries are 18
  bytes and the payload alone does not say so).
* The readers at the bottom (:func:`peers_in_tracker_response` and friends) let the box learn
  *outside* peers for a torrent it is fetching from traffic it sees anyway, without announcing
  itself. They return empty results on bad input for the same reason the rewriters return None.

Theory of operation
-------------------
HTTP: un-gzip if ``Content-Encoding`` says gzip (bounded output: a gzip bomb is refused), decode
with unsorted keys allowed, refuse ``failure reason`` replies, validate ``peers`` (compact: a
multiple of 6 bytes; dictionary form: dicts with a string ``ip`` and an integer ``port``),
remove the box, put it first, re-encode, re-gzip (``mtime=0`` so the output is deterministic).
A successful reply without ``peers`` (an empty swarm) gets a compact ``peers`` holding the box.

UDP (BEP 15): :func:`~swarm.tracker_udp.decode_announce_response`, edit the peer tuple,
:func:`~swarm.tracker_udp.encode_announce_response` with the same transaction id and counts.

DHT (BEP 5): :func:`parse_krpc` is a strict, bounded reader for every KRPC message.
:func:`rewrite_get_peers_response` only touches responses carrying a ``token`` (a ``get_peers``
reply; ``find_node`` and ``ping`` replies have none) and edits ``r.values``. A reply with only
``nodes`` means the node knows no peer for the torrent; by default the box is added there too,
as a new ``values`` list next to the untouched ``nodes``. BEP 5 lets a reply carry both, and
clients read ``values`` for peers and ``nodes`` to keep walking the DHT, so the lookup goes on
as before while the client dials the box at once. Without this, a subscriber in a swarm the
node has no peers for would only find the box if the box were itself in the DHT near the
info_hash (``add_to_nodes_reply=False`` turns it off).
"""

from __future__ import annotations

import gzip
import ipaddress
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

from swarm.bencode import BencodeError, BValue, bdecode, bdecode_prefix, bencode
from swarm.compact import PEER4_SIZE, decode_peers4, encode_peers4
from swarm.errors import LocalProtocolError, RemoteProtocolError
from swarm.tracker_http import MAX_RESPONSE_SIZE, Peer, parse_announce_response
from swarm.tracker_udp import (
    AnnounceRequestPacket,
    decode_announce_response,
    decode_request,
    encode_announce_response,
)

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "DHT_QUERY_TTL",
    "MAX_KRPC_SIZE",
    "DhtQueryTable",
    "KrpcKind",
    "KrpcMessage",
    "parse_krpc",
    "parse_udp_announce_request",
    "peers_in_get_peers_response",
    "peers_in_tracker_response",
    "peers_in_udp_announce_response",
    "rewrite_get_peers_response",
    "rewrite_tracker_response",
    "rewrite_udp_announce_response",
]

KrpcKind: TypeAlias = Literal["q", "r", "e"]

#: UDP payload of one 1500-byte IPv4 packet (20-byte IP header, 8-byte UDP header).
DEFAULT_MAX_DATAGRAM: Final = 1472
#: KRPC datagrams are one packet in practice (~1.5 kB); 8 KiB leaves room for jumbo frames.
MAX_KRPC_SIZE: Final = 8 << 10
#: How long a DHT (or BEP 15) query waits for its reply before it is forgotten.
DHT_QUERY_TTL: Final = 30.0

_GZIP: Final = frozenset({"gzip", "x-gzip"})
_IDENTITY: Final = frozenset({"", "identity"})
_WHITESPACE: Final = b" \t\r\n"
# A KRPC message is a dict of a dict of a list of strings; anything deeper is not DHT traffic.
_KRPC_MAX_DEPTH: Final = 8
_KRPC_MAX_ITEMS: Final = 2048
_NODE_SIZE: Final = 26  # 20-byte node id + 6-byte compact address
_MAX_METHOD: Final = 64
_MAX_TID: Final = 64


# --- helpers --------------------------------------------------------------------------------


def _box_entry(box: Peer) -> tuple[bytes, Peer]:
    """The box's 6-byte compact entry and its canonical ``(ip, port)`` form.

    Checked before the payload is looked at, so a bad box is loud even on garbage input.
    """
    if not isinstance(box, tuple) or len(box) != 2:
        raise LocalProtocolError(f"steering: box must be an (ipv4, port) pair, not {box!r}")
    entry = encode_peers4([box])
    if box[1] == 0:
        raise LocalProtocolError(f"steering: box {box!r} has port 0")
    return entry, decode_peers4(entry)[0]


def _canonical_ip(raw: bytes) -> str | None:
    try:
        return str(ipaddress.ip_address(raw.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


def _decoding(content_encoding: str | None) -> Literal["identity", "gzip"] | None:
    enc = (content_encoding or "").strip().lower()
    if enc in _IDENTITY:
        return "identity"
    if enc in _GZIP:
        return "gzip"
    return None


def _gunzip(body: bytes, max_size: int) -> bytes | None:
    # One gzip member, fully present, inflating to at most max_size bytes.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_size + 1)
    except zlib.error:
        return None
    if len(out) > max_size or d.unconsumed_tail or not d.eof or d.unused_data:
        return None
    return out


def _inflate(
    body: bytes | bytearray | memoryview, content_encoding: str | None, max_size: int
) -> bytes | None:
    """The plain body: size-checked, un-gzipped if need be; None if that cannot be done."""
    if len(body) > max_size:
        return None
    mode = _decoding(content_encoding)
    if mode is None:
        return None
    raw = bytes(body)
    return _gunzip(raw, max_size) if mode == "gzip" else raw


def _tracker_dict(
    body: bytes | bytearray | memoryview, content_encoding: str | None, max_size: int
) -> dict[bytes, BValue] | None:
    """The reply's top-level dict, or None if unusable."""
    raw = _inflate(body, content_encoding, max_size)
    if raw is None:
        return None
    try:
        value, end = bdecode_prefix(raw, max_size=max_size, strict_order=False)
    except RemoteProtocolError:
        return None
    if raw[end:].strip(_WHITESPACE) or not isinstance(value, dict):
        return None
    return value


def _with_box_first(entries: list[bytes], box: bytes) -> list[bytes] | None:
    """``entries`` with every copy of ``box`` removed and one put first; None if unchanged."""
    if entries[:1] == [box] and entries.count(box) == 1:
        return None
    return [box, *(e for e in entries if e != box)]


def _split_compact(raw: bytes) -> list[bytes] | None:
    if len(raw) % PEER4_SIZE:
        return None
    return [raw[i : i + PEER4_SIZE] for i in range(0, len(raw), PEER4_SIZE)]


# --- HTTP tracker replies -------------------------------------------------------------------


def rewrite_tracker_response(
    body: bytes | bytearray | memoryview,
    box: Peer,
    *,
    content_encoding: str | None = None,
    max_size: int = MAX_RESPONSE_SIZE,
) -> bytes | None:
    """The HTTP tracker announce reply ``body`` with ``box`` first in ``peers``, or None.

    ``body`` is the whole body, already de-chunked; ``content_encoding`` is the response's
    ``Content-Encoding`` header (``gzip``/``x-gzip`` are undone and redone, anything else but
    identity means None). ``max_size`` bounds both the body and what it inflates to. None
    means "forward the original": the reply is unparseable, a ``failure reason``, not an
    announce reply, or already has the box first and only once. The caller fixes
    ``Content-Length``.
    """
    box_entry, box = _box_entry(box)
    reply = _tracker_dict(body, content_encoding, max_size)
    if reply is None:
        return None
    if b"failure reason" in reply:
        return None
    peers = reply.get(b"peers")
    if peers is None:
        # An empty swarm may leave ``peers`` out; only a successful announce (it has an
        # interval) gets one, so a scrape reply or other bencoded body is never touched.
        if not isinstance(reply.get(b"interval"), int):
            return None
        reply[b"peers"] = box_entry
    elif isinstance(peers, bytes):
        entries = _split_compact(peers)
        if entries is None:
            return None
        edited = _with_box_first(entries, box_entry)
        if edited is None:
            return None
        reply[b"peers"] = b"".join(edited)
    elif isinstance(peers, list):
        edited_list = _dict_peers_with_box(peers, box)
        if edited_list is None:
            return None
        reply[b"peers"] = edited_list
    else:
        return None
    out = bencode(reply)
    if len(out) > max_size:
        return None
    return gzip.compress(out, mtime=0) if _decoding(content_encoding) == "gzip" else out


def _dict_peers_with_box(peers: list[BValue], box: Peer) -> list[BValue] | None:
    box_ip, port = box
    keep: list[BValue] = []
    copies = 0
    first_is_box = False
    for i, item in enumerate(peers):
        if not isinstance(item, dict):
            return None
        ip, p = item.get(b"ip"), item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(p, int):
            return None
        if p == port and _canonical_ip(ip) == box_ip:
            copies += 1
            first_is_box = first_is_box or i == 0
        else:
            keep.append(item)
    if copies == 1 and first_is_box:
        return None
    return [{b"ip": box_ip.encode("ascii"), b"port": port}, *keep]


def peers_in_tracker_response(
    body: bytes | bytearray | memoryview,
    content_encoding: str | None = None,
    *,
    max_size: int = MAX_RESPONSE_SIZE,
) -> list[Peer]:
    """Outside peers named by an HTTP tracker announce reply (``peers``, ``peers6``, dictionary
    form), IP addresses only (host names are dropped: the box resolves no names a tracker
    chose). Empty for anything unparseable or a failure reply."""
    raw = _inflate(body, content_encoding, max_size)
    if raw is None:
        return []
    try:
        parsed = parse_announce_response(raw)
    except RemoteProtocolError:
        return []
    out: list[Peer] = []
    for host, port in parsed.peers:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        out.append((host, port))
    return out


# --- UDP tracker replies (BEP 15) -----------------------------------------------------------


def rewrite_udp_announce_response(
    payload: bytes | bytearray | memoryview,
    box: Peer,
    *,
    max_datagram: int = DEFAULT_MAX_DATAGRAM,
) -> bytes | None:
    """The BEP 15 announce response ``payload`` (IPv4) with ``box`` first among the peers.

    Transaction id, interval, leechers and seeders are kept as sent. None when ``payload`` is
    not an announce response (connect, error, opentracker's 8-byte refusal, a peer array that
    is not a multiple of 6) or the box is already first and only once.
    """
    _, box = _box_entry(box)
    try:
        resp = decode_announce_response(payload)
    except RemoteProtocolError:
        return None
    peers = list(resp.peers)
    if peers[:1] == [box] and peers.count(box) == 1:
        return None
    peers = [box, *(p for p in peers if p != box)]
    room = (max(len(payload), max_datagram) - 20) // PEER4_SIZE
    del peers[max(room, 1) :]
    return encode_announce_response(
        resp.transaction_id, resp.interval, resp.leechers, resp.seeders, peers, ipv6=False
    )


def peers_in_udp_announce_response(payload: bytes | bytearray | memoryview) -> list[Peer]:
    """Peers of a BEP 15 announce response (IPv4); empty if it is not one."""
    try:
        return list(decode_announce_response(payload).peers)
    except RemoteProtocolError:
        return []


def parse_udp_announce_request(
    payload: bytes | bytearray | memoryview,
) -> AnnounceRequestPacket | None:
    """A subscriber's BEP 15 announce (info_hash, port, transaction id), or None for any
    other datagram. The sensor feeds it to the popularity table and notes the transaction."""
    try:
        req = decode_request(payload)
    except RemoteProtocolError:
        return None
    return req if isinstance(req, AnnounceRequestPacket) else None


# --- DHT (BEP 5) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KrpcMessage:
    """One KRPC datagram, as far as steering and sensing care.

    ``method`` is set for queries only. ``info_hash`` is ``a.info_hash`` of ``get_peers`` and
    ``announce_peer`` queries. ``node_id`` is the sender's ``id`` (``a.id`` or ``r.id``).
    ``values`` are the decoded compact peers of a response's ``r.values``; ``nodes`` counts
    the 26-byte entries of ``r.nodes``. ``token`` is ``r.token`` of a response or ``a.token``
    of an ``announce_peer``. ``port`` is the port an ``announce_peer`` names (None when
    ``implied_port`` is set: the UDP source port is then the peer's port). ``error`` is the
    ``[code, message]`` of an error.
    """

    transaction_id: bytes
    kind: KrpcKind
    method: str | None = None
    info_hash: bytes | None = None
    node_id: bytes | None = None
    values: tuple[Peer, ...] = ()
    nodes: int = 0
    token: bytes | None = None
    port: int | None = None
    error: tuple[int, str] | None = None


class _Malformed(Exception):
    # Internal: unwinds parse_krpc to its single "return None".
    pass


def _opt_bytes(d: dict[bytes, BValue], key: bytes, size: int | None = None) -> bytes | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, bytes) or (size is not None and len(v) != size):
        raise _Malformed
    return v


def _values(raw: BValue | None) -> list[bytes]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Malformed
    for entry in raw:
        if not isinstance(entry, bytes) or len(entry) != PEER4_SIZE:
            raise _Malformed
    return cast("list[bytes]", raw)  # checked above: every entry is bytes


def _decode_krpc(payload: bytes | bytearray | memoryview) -> dict[bytes, BValue] | None:
    if len(payload) > MAX_KRPC_SIZE:
        return None
    try:
        msg = bdecode(
            payload,
            max_size=MAX_KRPC_SIZE,
            max_depth=_KRPC_MAX_DEPTH,
            max_items=_KRPC_MAX_ITEMS,
            strict_order=False,
        )
    except BencodeError:
        return None
    return msg if isinstance(msg, dict) else None


def parse_krpc(payload: bytes | bytearray | memoryview) -> KrpcMessage | None:
    """Read one KRPC datagram (BEP 5); None for anything that is not well-formed KRPC.

    Bounded: at most :data:`MAX_KRPC_SIZE` bytes, nesting depth 8, 2048 items. Dictionary keys
    may be unsorted (some DHT nodes send them so). Node ids and info hashes must be 20 bytes,
    ``values`` entries 6 bytes (IPv4 DHT); ``nodes`` only has to be a string (its count is
    informative; BEP 5's own examples use a placeholder there).
    """
    msg = _decode_krpc(payload)
    if msg is None:
        return None
    try:
        return _krpc_message(msg)
    except _Malformed:
        return None


def _krpc_message(msg: dict[bytes, BValue]) -> KrpcMessage:
    tid = msg.get(b"t")
    y = msg.get(b"y")
    if not isinstance(tid, bytes) or len(tid) > _MAX_TID:
        raise _Malformed
    if y == b"q":
        method = msg.get(b"q")
        args = msg.get(b"a")
        if not isinstance(method, bytes) or not isinstance(args, dict):
            raise _Malformed
        if not 0 < len(method) <= _MAX_METHOD or not method.isascii():
            raise _Malformed
        name = method.decode("ascii")
        info_hash = None
        port = None
        token = None
        if name in ("get_peers", "announce_peer"):
            info_hash = _opt_bytes(args, b"info_hash", 20)
            if info_hash is None:
                raise _Malformed
        if name == "announce_peer":
            token = _opt_bytes(args, b"token")
            raw_port, implied = args.get(b"port"), args.get(b"implied_port", 0)
            if not isinstance(implied, int):
                raise _Malformed
            if raw_port is not None and not (isinstance(raw_port, int) and 0 <= raw_port < 65536):
                raise _Malformed
            port = None if implied else raw_port
        return KrpcMessage(
            transaction_id=tid,
            kind="q",
            method=name,
            info_hash=info_hash,
            node_id=_opt_bytes(args, b"id", 20),
            token=token,
            port=port,
        )
    if y == b"r":
        r = msg.get(b"r")
        if not isinstance(r, dict):
            raise _Malformed
        values = _values(r.get(b"values"))
        nodes = _opt_bytes(r, b"nodes")
        return KrpcMessage(
            transaction_id=tid,
            kind="r",
            node_id=_opt_bytes(r, b"id", 20),
            values=tuple(decode_peers4(b"".join(values))),
            nodes=0 if nodes is None else len(nodes) // _NODE_SIZE,
            token=_opt_bytes(r, b"token"),
        )
    if y == b"e":
        e = msg.get(b"e")
        if not isinstance(e, list) or len(e) < 2:
            raise _Malformed
        code, text = e[0], e[1]
        if not isinstance(code, int) or not isinstance(text, bytes):
            raise _Malformed
        return KrpcMessage(
            transaction_id=tid, kind="e", error=(code, text.decode("utf-8", "replace"))
        )
    raise _Malformed


def rewrite_get_peers_response(
    payload: bytes | bytearray | memoryview,
    box: Peer,
    *,
    add_to_nodes_reply: bool = True,
    max_datagram: int = DEFAULT_MAX_DATAGRAM,
) -> bytes | None:
    """The ``get_peers`` reply ``payload`` with ``box`` first in ``r.values``, or None.

    Only a well-formed KRPC response with a ``token`` is touched (see the module docstring for
    why a ``nodes``-only reply gets a ``values`` list by default). Every other key, known or
    unknown, is kept; the output is canonical bencode no longer than
    ``max(len(payload), max_datagram)`` (entries are dropped from the end of ``values`` to fit).
    """
    box_entry, _ = _box_entry(box)
    msg = _decode_krpc(payload)
    if msg is None:
        return None
    try:
        parsed = _krpc_message(msg)
    except _Malformed:
        return None
    if parsed.kind != "r" or parsed.token is None:
        return None
    r = msg[b"r"]
    assert isinstance(r, dict)  # _krpc_message checked it
    if b"values" not in r and not add_to_nodes_reply:
        return None
    entries = _values(r.get(b"values"))
    edited = _with_box_first(entries, box_entry)
    if edited is None:
        return None
    budget = max(len(payload), max_datagram)
    values: list[BValue] = list(edited)
    r[b"values"] = values
    out = bencode(msg)
    excess = len(out) - budget
    if excess > 0:
        # Each dropped entry saves its 8 encoded bytes ("6:" + 6); the box itself stays.
        drop = -(-excess // (PEER4_SIZE + 2))
        if drop >= len(edited):
            return None
        del values[len(values) - drop :]
        out = bencode(msg)
    return out


def peers_in_get_peers_response(payload: bytes | bytearray | memoryview) -> list[Peer]:
    """The compact peers in a DHT reply's ``values``; empty for anything else."""
    parsed = parse_krpc(payload)
    return [] if parsed is None or parsed.kind != "r" else list(parsed.values)


class DhtQueryTable:
    """Pending queries, to tell which torrent a DHT (or BEP 15) reply belongs to.

    A reply does not carry the info_hash; it is matched to its query by the subscriber's
    address (``local``), the remote node's or tracker's address (``remote``) and the
    transaction id. Entries expire after ``ttl`` seconds; at most ``max_entries`` are kept
    (the oldest go first), so a flood of queries costs bounded memory. Sans-IO: every call
    takes the current monotonic time ``now``.
    """

    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, *, max_entries: int = 65536, ttl: float = DHT_QUERY_TTL) -> None:
        if max_entries < 1 or ttl <= 0:
            raise LocalProtocolError(
                f"DhtQueryTable: max_entries {max_entries} and ttl {ttl} must be positive"
            )
        self.max_entries = max_entries
        self.ttl = ttl
        # Insertion order is time order (``now`` is monotonic), so expiry pops from the front.
        self._entries: OrderedDict[tuple[Peer, Peer, bytes], tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def expire(self, now: float) -> None:
        """Forget queries older than ``ttl``."""
        entries = self._entries
        limit = now - self.ttl
        while entries:
            key, (_, at) = next(iter(entries.items()))
            if at > limit:
                break
            del entries[key]

    def note_query(
        self, local: Peer, remote: Peer, tid: bytes, info_hash: bytes, now: float
    ) -> None:
        """Remember that ``local`` asked ``remote`` about ``info_hash`` under ``tid``."""
        self.expire(now)
        key = (local, remote, bytes(tid))
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[key] = (bytes(info_hash), now)

    def match_reply(self, local: Peer, remote: Peer, tid: bytes, now: float) -> bytes | None:
        """The info_hash of the query this reply answers (forgotten once matched), or None."""
        hit = self._entries.pop((local, remote, bytes(tid)), None)
        if hit is None:
            return None
        info_hash, at = hit
        return info_hash if now - at < self.ttl else None
