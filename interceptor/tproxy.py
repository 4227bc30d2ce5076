"""TPROXY listener sockets and the original destination of an intercepted connection.

Why it is built this way: TPROXY (see :mod:`interceptor.rules`) does no NAT. The kernel hands
the subscriber's SYN, still addressed to the origin, to a listener that has ``IP_TRANSPARENT``
(without that option the SYNs are silently dropped: testbed notes §3a, §9.2), and the accepted
socket is bound to the address the client actually connected to. So the original destination
is simply ``getsockname()`` of the accepted socket: no ``SO_ORIGINAL_DST`` and no conntrack
lookup, and it cannot go stale.
"""

from __future__ import annotations

import socket

__all__ = ["IP_TRANSPARENT", "original_destination", "transparent_listener"]

IP_TRANSPARENT: int = getattr(socket, "IP_TRANSPARENT", 19)  # linux/in.h


def transparent_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A non-blocking IPv4 TCP listener with ``SO_REUSEADDR`` and ``IP_TRANSPARENT``.

    Bind it to ``0.0.0.0`` (the rules use ``--on-ip 0.0.0.0``). Needs CAP_NET_ADMIN.
    Pass it to ``asyncio.start_server(sock=...)`` or ``loop.create_server(sock=...)``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        except PermissionError as exc:
            raise PermissionError(
                exc.errno, f"IP_TRANSPARENT needs CAP_NET_ADMIN: {exc.strerror}"
            ) from exc
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """``(ip, port)`` the client connected to, for a socket accepted from a TPROXY listener.

    Under TPROXY the accepted socket's *local* address is the packet's destination, which was
    never rewritten, so ``getsockname()`` is the original destination. (For a connection that
    reached the listener directly, this is just the listener's own address.)
    """
    addr = sock.getsockname()
    return str(addr[0]), int(addr[1])
