"""One access-log line per request (and per batch served to a local BitTorrent peer),
buffered and flushed once a second.

Why not the logging module: at tens of thousands of hits per second a logging call per request
costs more than serving the hit. Lines are appended to a list and written in one ``write`` by a
timer; the fields are space separated with the URL quoted, so ``awk`` and the size advisor can
read them back:

``<unix-time> <client-ip> <METHOD> "<url>" <status> <bytes-sent> <RESULT> <upstream-bytes> <ms>``

BitTorrent: the seeder reports each local peer every 4 MiB it sends and when it leaves (not
per block: that is the hot path), as

``<unix-time> <peer-ip> BT <info-hash> <piece-length> <pieces> <bytes-sent> <bytes-fetched> <s>``

``<pieces>`` are the pieces served in that batch as ranges (``0-15,20``; ``-`` for none),
``<bytes-fetched>`` the part that had to be fetched from outside first (the rest came from the
cache), ``<s>`` the seconds the batch covers. Both kinds have nine fields; the third tells them
apart. ``swarmcache advise`` replays them (``cache/advisor.py``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

__all__ = ["AccessLog", "piece_ranges"]


def piece_ranges(pieces: list[int]) -> str:
    """Sorted piece indices -> ``0-15,20`` (``-`` when empty)."""
    if not pieces:
        return "-"
    parts: list[str] = []
    start = prev = pieces[0]
    for index in pieces[1:]:
        if index != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = index
        prev = index
    parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


class AccessLog:
    def __init__(self, destination: str) -> None:
        self._lines: list[str] = []
        self._file: TextIO | None
        self._owned = False
        if destination == "-":
            self._file = sys.stdout
        elif destination:
            self._file = open(destination, "a", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._file = None
        self._timer: asyncio.TimerHandle | None = None

    def record(
        self,
        *,
        client: str,
        method: bytes,
        url: bytes,
        status: int,
        sent: int,
        result: str,
        upstream: int,
        started: float,
    ) -> None:
        if self._file is None:
            return
        now = time.time()
        quoted = url.decode("latin-1").replace('"', "%22").replace(" ", "%20")
        self._lines.append(
            f'{now:.3f} {client} {method.decode("latin-1")} "{quoted}" {status} {sent} '
            f"{result.upper()} {upstream} {(time.monotonic() - started) * 1000:.1f}\n"
        )
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def record_torrent(
        self,
        *,
        peer: str,
        info_hash: bytes,
        piece_length: int,
        pieces: list[int],
        sent: int,
        fetched: int,
        seconds: float,
    ) -> None:
        if self._file is None:
            return
        self._lines.append(
            f"{time.time():.3f} {peer} BT {info_hash.hex()} {piece_length} "
            f"{piece_ranges(pieces)} {sent} {fetched} {seconds:.1f}\n"
        )
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._file is not None and self._lines:
            self._file.write("".join(self._lines))
            self._file.flush()
            self._lines.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._owned and self._file is not None:
            self._file.close()
        self._file = None
