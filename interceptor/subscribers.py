"""Who is a subscriber: the one membership test every listener and sensor uses.

Why here: the interceptor's rules already select traffic by subscriber prefix, and it is the
lowest layer, so the swarm side and the HTTP side can both import this without making
dependencies point the wrong way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["is_subscriber"]


def is_subscriber(address: str, networks: Iterable[ipaddress.IPv4Network]) -> bool:
    """True if ``address`` (IPv4, or IPv4-mapped IPv6) lies in one of ``networks``; False for
    anything unparseable."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
