"""Raw byte relays: CONNECT tunnels and upgraded (101) connections, never cached."""

from __future__ import annotations

import asyncio

from swarmcache.http.server import ClientConnection
from swarmcache.http.upstream import UpstreamConnection

__all__ = ["relay_both_ways"]


async def relay_both_ways(
    client: ClientConnection,
    upstream: UpstreamConnection,
    client_initial: bytes,
    upstream_initial: bytes,
) -> int:
    """Copy bytes both ways until both sides finish; return bytes moved."""
    moved = 0

    async def client_to_upstream() -> None:
        nonlocal moved
        data = client_initial
        while True:
            if data:
                moved += len(data)
                await upstream.send_body(data)
            data = await client.read_raw()
            if not data:
                if upstream.transport.can_write_eof():
                    upstream.transport.write_eof()
                return

    async def upstream_to_client() -> None:
        nonlocal moved
        data = upstream_initial
        while True:
            if data:
                moved += len(data)
                client.write(data)
                await client.drain()
            data = await upstream.read_raw()
            if not data:
                client.write_eof()
                return

    tasks = [
        asyncio.create_task(client_to_upstream(), name="tunnel-up"),
        asyncio.create_task(upstream_to_client(), name="tunnel-down"),
    ]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        upstream.close()
    return moved
