"""Which blocks to ask which peer for: the piece picker of the swarm downloader (sans-IO).

Why it is built this way
------------------------
* **No I/O, no clock.** The downloader tells the picker what peers have and what arrived; the
  picker answers with block requests. Every policy below is therefore tested by scripts of
  calls, and fuzzed, without a socket.
* **The policies libtorrent found to work** (research notes §3.2): the first few pieces are
  chosen at random (a new swarm member needs *some* complete piece to trade, and everyone
  starting with the rarest piece would herd), then rarest-first; blocks of a started piece come
  before a new piece (finished pieces can be verified, stored and served early); a strict
  end-game, where a block is asked of a second peer only once every block the peer could serve
  is already requested; pieces a local peer is waiting for come before everything.
* **Suspect pieces are refetched from one peer.** A piece that fails its hash was assembled from
  blocks of possibly several peers. Its refetch is given to the first peer that asks, whole, so
  a second failure names the bad peer beyond doubt (the downloader bans it).
* **Cheap per call.** Rarest-first order is a list sorted only when availability changed since
  the last sort; a pick walks it and stops as soon as it has enough blocks. Per-peer piece sets
  are bytearrays (one index per check), not Python sets of ints. Have-all peers (BEP 6, and
  every seed) are a counter: they add the same amount to every piece and change no order.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final

from swarm.errors import LocalProtocolError

__all__ = ["BLOCK_SIZE", "BlockRequest", "Picker"]

BLOCK_SIZE: Final = 16 * 1024
# End-game duplicates asked of one peer per pick. Every duplicate already in flight when the
# original arrives is wasted uplink, and with queues sized to seconds of data an uncapped
# end-game re-requested megabytes (15 % extra bytes in the benchmark).
END_GAME_BATCH: Final = 4

Peer = Hashable


@dataclass(frozen=True, slots=True)
class BlockRequest:
    index: int
    begin: int
    length: int


class _Partial:
    """A piece with at least one block requested and not yet verified."""

    __slots__ = (
        "exclusive",
        "free",
        "index",
        "length",
        "nblocks",
        "received",
        "received_count",
        "requested",
        "suspect",
    )

    def __init__(self, index: int, length: int, *, suspect: bool = False) -> None:
        self.index = index
        self.length = length
        self.nblocks = -(-length // BLOCK_SIZE)
        self.free: deque[int] = deque(range(self.nblocks))
        self.received = bytearray(self.nblocks)
        self.received_count = 0
        self.requested: dict[int, set[Peer]] = {}
        # A suspect piece (it failed its hash once) is fetched whole from one peer.
        self.suspect = suspect
        self.exclusive: Peer | None = None

    def block(self, b: int) -> BlockRequest:
        begin = b * BLOCK_SIZE
        return BlockRequest(self.index, begin, min(BLOCK_SIZE, self.length - begin))


class _PeerState:
    __slots__ = ("has_all", "outstanding", "pieces")

    def __init__(self, num_pieces: int) -> None:
        self.pieces = bytearray(num_pieces)
        self.has_all = False
        self.outstanding: set[tuple[int, int]] = set()

    def has(self, index: int) -> bool:
        return self.has_all or self.pieces[index] != 0


class Picker:
    """Block scheduling for one torrent. ``have`` lists the pieces already verified."""

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        *,
        have: Iterable[int] = (),
        initial_random: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        if num_pieces <= 0 or piece_length <= 0:
            raise LocalProtocolError("a torrent has at least one piece of positive length")
        if not (num_pieces - 1) * piece_length < total_length <= num_pieces * piece_length:
            raise LocalProtocolError("total length does not match the piece count and length")
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self._rng = rng or random.Random()
        self._initial_random = initial_random
        self._have = bytearray(num_pieces)
        for i in have:
            self._have[i] = 1
        self.have_count = sum(self._have)
        self._availability = [0] * num_pieces
        self._have_all_peers = 0
        self._peers: dict[Peer, _PeerState] = {}
        self._partials: dict[int, _Partial] = {}
        # The partials that still have a free block: what a pick walks first.
        self._open: dict[int, _Partial] = {}
        self._priority: dict[int, None] = {}  # insertion-ordered set
        self._order: list[int] = []
        self._order_dirty = True
        self._tiebreak = list(range(num_pieces))
        self._rng.shuffle(self._tiebreak)

    # --- facts ---------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.have_count == self.num_pieces

    def has(self, index: int) -> bool:
        return self._have[index] != 0

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def outstanding(self, peer: Peer) -> int:
        state = self._peers.get(peer)
        return 0 if state is None else len(state.outstanding)

    def interesting(self, peer: Peer) -> bool:
        """Whether ``peer`` has any piece we still lack."""
        state = self._peers.get(peer)
        if state is None:
            return False
        if state.has_all:
            return not self.complete
        return any(p and not h for p, h in zip(state.pieces, self._have, strict=True))

    # --- peers ---------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        if peer in self._peers:
            raise LocalProtocolError("peer added twice")
        self._peers[peer] = _PeerState(self.num_pieces)

    def peer_has_all(self, peer: Peer) -> None:
        state = self._peers[peer]
        if state.has_all:
            return
        for i, p in enumerate(state.pieces):
            if p:
                self._availability[i] -= 1
        state.has_all = True
        self._have_all_peers += 1
        self._order_dirty = True

    def peer_bitfield(self, peer: Peer, bits: bytes) -> None:
        """The peer's BEP 3 bitfield (MSB first; already length-checked by the reader)."""
        state = self._peers[peer]
        for i in range(self.num_pieces):
            if bits[i >> 3] & (0x80 >> (i & 7)) and not state.pieces[i]:
                state.pieces[i] = 1
                if not state.has_all:
                    self._availability[i] += 1
        self._order_dirty = True

    def peer_have(self, peer: Peer, index: int) -> None:
        state = self._peers[peer]
        if not state.pieces[index]:
            state.pieces[index] = 1
            if not state.has_all:
                self._availability[index] += 1
                self._order_dirty = True

    def remove_peer(self, peer: Peer) -> None:
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for index, b in list(state.outstanding):
            self._release(peer, index, b)
        if state.has_all:
            self._have_all_peers -= 1
        else:
            for i, p in enumerate(state.pieces):
                if p:
                    self._availability[i] -= 1
        for partial in self._partials.values():
            if partial.exclusive == peer:
                partial.exclusive = None
        self._order_dirty = True

    # --- priorities ----------------------------------------------------------------------

    def prioritize(self, index: int) -> None:
        """A local peer is waiting for this piece: fetch it before anything else."""
        if not self._have[index]:
            self._priority[index] = None

    # --- picking -------------------------------------------------------------------------

    def pick(self, peer: Peer, count: int) -> list[BlockRequest]:
        """Up to ``count`` new block requests for ``peer`` (empty: nothing it can give us)."""
        state = self._peers[peer]
        picked: list[BlockRequest] = []
        if count <= 0 or self.complete:
            return picked
        for index in list(self._priority):
            if self._have[index]:
                del self._priority[index]
            elif state.has(index):
                self._take_from(peer, state, self._partial(index), count, picked)
            if len(picked) >= count:
                return picked
        for partial in list(self._open.values()):
            if state.has(partial.index):
                self._take_from(peer, state, partial, count, picked)
                if len(picked) >= count:
                    return picked
        order = self._candidates()
        settled = 0  # leading entries that are held or started: never candidates again
        for pos, index in enumerate(order):
            if self._have[index] or index in self._partials:
                if pos == settled:
                    settled += 1
                continue
            if not state.has(index):
                continue
            self._take_from(peer, state, self._partial(index), count, picked)
            if len(picked) >= count:
                break
        if settled and order is self._order:
            del self._order[:settled]
        if len(picked) >= count:
            return picked
        if not picked and not state.outstanding:
            # Only a peer with nothing left to do helps with the tail (as libtorrent does):
            # a busy peer duplicating blocks would mostly waste the uplink.
            self._end_game(peer, state, min(count, END_GAME_BATCH), picked)
        return picked

    def _candidates(self) -> list[int]:
        if self.have_count < self._initial_random:
            wanted = [i for i in range(self.num_pieces) if not self._have[i]]
            self._rng.shuffle(wanted)
            return wanted
        if self._order_dirty:
            avail, tie = self._availability, self._tiebreak
            wanted = [i for i in range(self.num_pieces) if not self._have[i]]
            wanted.sort(key=lambda i: (avail[i], tie[i]))
            self._order = wanted
            self._order_dirty = False
        return self._order

    def _partial(self, index: int) -> _Partial:
        partial = self._partials.get(index)
        if partial is None:
            partial = self._partials[index] = _Partial(index, self.piece_size(index))
            self._open[index] = partial
        return partial

    def _take_from(
        self, peer: Peer, state: _PeerState, partial: _Partial, count: int, out: list[BlockRequest]
    ) -> None:
        if partial.suspect:
            if partial.exclusive is None and not partial.requested:
                partial.exclusive = peer
            if partial.exclusive != peer:
                return
        while partial.free and len(out) < count:
            b = partial.free.popleft()
            partial.requested[b] = {peer}
            state.outstanding.add((partial.index, b))
            out.append(partial.block(b))
        if not partial.free:
            self._open.pop(partial.index, None)

    def _end_game(self, peer: Peer, state: _PeerState, count: int, out: list[BlockRequest]) -> None:
        """Strict end-game: every block this peer could give us is already requested, so ask
        it for blocks outstanding elsewhere, each at most once more, a few at a time."""
        for partial in self._partials.values():
            if not state.has(partial.index) or (partial.suspect and partial.exclusive != peer):
                continue
            if partial.free:
                return  # a free block exists that this peer cannot serve yet: not end-game
            for b, askers in partial.requested.items():
                if peer in askers or len(askers) > 1:
                    continue
                askers.add(peer)
                state.outstanding.add((partial.index, b))
                out.append(partial.block(b))
                if len(out) >= count:
                    return

    # --- results -------------------------------------------------------------------------

    def block_received(self, peer: Peer, index: int, begin: int, length: int) -> tuple[
        bool, list[Peer]
    ]:
        """A block arrived. Returns (accepted, peers to cancel the same block at).

        ``accepted`` is False for a block nobody asked this peer for, a duplicate, or a wrong
        length: the caller drops its bytes. When every block of a piece is accepted the caller
        assembles and verifies it (see :meth:`piece_ready`).
        """
        partial = self._partials.get(index)
        state = self._peers.get(peer)
        if partial is None or state is None or begin % BLOCK_SIZE:
            return False, []
        b = begin // BLOCK_SIZE
        if b >= partial.nblocks or partial.block(b).length != length:
            return False, []
        askers = partial.requested.get(b)
        if askers is None or peer not in askers or partial.received[b]:
            return False, []
        del partial.requested[b]
        for asker in askers:
            other = self._peers.get(asker)
            if other is not None:
                other.outstanding.discard((index, b))
        partial.received[b] = 1
        partial.received_count += 1
        return True, [a for a in askers if a != peer]

    def piece_ready(self, index: int) -> bool:
        partial = self._partials.get(index)
        return partial is not None and partial.received_count == partial.nblocks

    def request_failed(self, peer: Peer, index: int, begin: int) -> None:
        """Rejected, choked away, cancelled or timed out: the block may be asked elsewhere."""
        self._release(peer, index, begin // BLOCK_SIZE)

    def _release(self, peer: Peer, index: int, b: int) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.outstanding.discard((index, b))
        partial = self._partials.get(index)
        if partial is None:
            return
        askers = partial.requested.get(b)
        if askers is None:
            return
        askers.discard(peer)
        if not askers:
            del partial.requested[b]
            if not partial.received[b]:
                partial.free.appendleft(b)
                self._open[index] = partial

    def piece_verified(self, index: int) -> None:
        self._partials.pop(index, None)
        self._open.pop(index, None)
        self._priority.pop(index, None)
        if not self._have[index]:
            self._have[index] = 1
            self.have_count += 1
            self._order_dirty = True

    def piece_failed(self, index: int) -> None:
        """The assembled piece did not match its hash: refetch it whole from one peer."""
        old = self._partials.pop(index, None)
        if old is not None:
            for b, askers in old.requested.items():
                for asker in askers:
                    st = self._peers.get(asker)
                    if st is not None:
                        st.outstanding.discard((index, b))
        self._partials[index] = self._open[index] = _Partial(
            index, self.piece_size(index), suspect=True
        )

    def outstanding_requests(self, peer: Peer) -> list[BlockRequest]:
        state = self._peers.get(peer)
        if state is None:
            return []
        return [self._partials[i].block(b) for i, b in state.outstanding if i in self._partials]
