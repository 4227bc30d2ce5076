"""systemd readiness notification (``Type=notify``) without a libsystemd dependency.

Why: with ``Type=notify`` ``systemctl start`` returns only once the listeners are up and the
interception rules are installed, so whatever is ordered after the unit (and an operator's
``systemctl start && curl``) sees a working box. The protocol is one datagram to the socket
named in ``$NOTIFY_SOCKET`` (``@`` = abstract namespace); outside systemd it is a no-op.
"""

from __future__ import annotations

import os
import socket

__all__ = ["sd_notify"]


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``); False when not run by systemd or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
