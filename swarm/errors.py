"""The one error root of the BitTorrent side.

Why it is built this way (style brief, habit 4): callers catch by meaning. Input that came from
the network or from a file someone else wrote (a peer's message, a tracker's reply, a .torrent,
a magnet link) is a :class:`RemoteProtocolError`: the peer or file is at fault and the
connection or input is dropped with the message. A misuse by our own code (asking to encode an
unencodable value, sending a message in the wrong state) is a :class:`LocalProtocolError`: a bug
here, never to be silenced. Both subclass :class:`ValueError` so code that only cares that the
value was bad can catch the builtin.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SwarmError"]


class SwarmError(Exception):
    """Root of every error raised by ``swarm/``."""


class RemoteProtocolError(SwarmError, ValueError):
    """Bad input from outside (peer, tracker, DHT node, .torrent file, magnet link)."""


class LocalProtocolError(SwarmError, ValueError):
    """Our own code asked for something the protocol does not allow."""
