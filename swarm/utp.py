"""Just enough uTP (BEP 29) to say "no": answer a uTP SYN with ST_RESET (sans-IO).

Why: clients try uTP first (libtorrent does, by default). The box seeds over TCP only; a uTP
SYN to it that gets no answer costs the client its uTP connect timeout and retries before it
falls back to TCP, and in the testbed libtorrent never fell back at all while it kept
re-dialling. A reset is an immediate, explicit refusal, after which clients use TCP.
"""

from __future__ import annotations

import struct
import time
from typing import Final

__all__ = ["reset_for_syn"]

_HEADER: Final = struct.Struct(">BBHIIIHH")
_ST_SYN_V1: Final = 0x41
_ST_RESET_V1: Final = 0x31


def reset_for_syn(datagram: bytes, *, now_us: int | None = None) -> bytes | None:
    """The ST_RESET answering a uTP SYN, or None if ``datagram`` is not one.

    The reply carries the SYN's connection id (the initiator receives on that id) and
    acknowledges its sequence number.
    """
    if len(datagram) < _HEADER.size or datagram[0] != _ST_SYN_V1:
        return None
    _, _, conn_id, sent_us, _, _, seq_nr, _ = _HEADER.unpack_from(datagram)
    now = int(time.monotonic() * 1e6) if now_us is None else now_us
    return _HEADER.pack(
        _ST_RESET_V1, 0, conn_id, now & 0xFFFFFFFF, (now - sent_us) & 0xFFFFFFFF, 0, 0, seq_nr
    )
