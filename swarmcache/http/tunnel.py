"""Raw byte relays: CONNECT tunnels, SOCKS relays and upgraded (101) connections, never cached.

Why it is built this way: a tunnel carries ssh, rsync, TLS, whatever the subscriber runs, and
should cost the box as little as plain forwarding. After the bytes both sides already sent
through asyncio are delivered, both sockets are handed to :func:`splice_both_ways`, which moves
everything else socket → pipe → socket in the kernel: no Python per chunk, no copies, and a
slow receiver pushes back on the sender through TCP instead of through our memory.
"""

from __future__ import annotations

import os

from swarmcache.http.server import ClientConnection
from swarmcache.http.splice import splice_both_ways
from swarmcache.http.upstream import UpstreamConnection

__all__ = ["relay_both_ways"]


async def relay_both_ways(
    client: ClientConnection,
    upstream: UpstreamConnection,
    client_initial: bytes,
    upstream_initial: bytes,
    *,
    idle_timeout: float | None = None,
) -> int:
    """Copy bytes both ways until both sides finish; return bytes moved.

    The client connection must be in raw mode (:meth:`ClientConnection.enter_raw_mode`).
    """
    moved = 0
    client_fd = upstream_fd = -1
    try:
        pending_up, client_fd = client.detach_raw()
        pending_down, upstream_fd = upstream.detach_body()
        to_upstream = client_initial + pending_up
        to_client = upstream_initial + pending_down
        if to_client:
            client.write(to_client)
        await client.flush()
        moved = len(to_client)
        if upstream_fd < 0:
            # The destination said its piece and closed before the relay began (a banner and
            # a refusal): the client gets every byte of it, then the end.
            client.write_eof()
            return moved
        if to_upstream:
            await upstream.send_body(to_upstream)
        await upstream.flush()
        moved += len(to_upstream)
        moved += await splice_both_ways(client_fd, upstream_fd, idle_timeout=idle_timeout)
    except (ConnectionError, OSError):
        pass
    finally:
        for fd in (client_fd, upstream_fd):
            if fd >= 0:
                os.close(fd)
        upstream.close()
    return moved
