"""The sensing queue reader: BitTorrent and tracker packets classified, handed on, let through.

Why it is built this way:

* The kernel queues only what may matter (see :func:`interceptor.rules.sense_rules`: the first
  packets of TCP flows whose payload starts with a BitTorrent handshake or ``GET ``, and UDP
  datagrams that look like a tracker or DHT message or a uTP SYN), always with
  ``--queue-bypass``, so a dead reader means packets flow as if we did not exist.
* Per packet the reader does a few byte slices (:func:`interceptor.classify.classify`), then
  calls the handler the daemon wired up, and gives the verdict at once, inside the callback:
  accept unchanged, or accept with the payload the handler returned (a rewritten UDP reply).
  The interceptor knows nothing of torrents; what a packet means is the handler's business.
* A packet is never held for the handler's sake. A handler that raises is logged and its
  packet accepted untouched; packets read after the event loop was stalled are accepted
  without being looked at (the stale rule of :class:`interceptor.synqueue.QueueReader`), and
  the watchdog flushes the sensing chain, like the SYN chain, when heartbeats stop.
* Verdict latency (queue time + handling, from the kernel's timestamp when it gives one) and
  counts by kind are kept for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

from netfilterqueue import COPY_PACKET, Packet

from .classify import Classified, classify
from .synqueue import QueueReader

__all__ = ["SenseHandler", "SenseQueue"]

log = logging.getLogger(__name__)

SenseHandler = Callable[[Classified, bytes], bytes | None]
"""Gets the classification and the whole IPv4 packet; returns a replacement packet or None."""

_LATENCY_SAMPLES: Final = 4096
_SO_TIMESTAMP: Final = 29  # asm-generic/socket.h; not exported by the socket module on 3.11


class SenseQueue(QueueReader):
    name = "sensing queue"
    mode = COPY_PACKET
    copy_range = 65535
    budget = 0.02

    def __init__(
        self,
        queue_num: int,
        handler: SenseHandler,
        *,
        max_len: int = 8192,
        stale_after: float = 0.5,
    ) -> None:
        super().__init__(queue_num, max_len=max_len, stale_after=stale_after)
        self.handler = handler
        self.kinds: Counter[str] = Counter()
        self.rewritten = 0
        self.handler_errors = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._stamping: socket.socket | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # The kernel stamps forwarded packets (the queue timestamp the latency is taken from)
        # only while some socket asks for receive timestamps: this one does, and nothing else.
        self._stamping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stamping.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
        super().start(loop)

    def close(self) -> None:
        super().close()
        if self._stamping is not None:
            self._stamping.close()
            self._stamping = None

    def _verdict(self, pkt: Packet) -> None:
        raw = pkt.get_payload()
        replacement: bytes | None = None
        try:
            classified = classify(raw)
            self.kinds[classified.kind.name] += 1
            replacement = self.handler(classified, raw)
        except Exception:
            # A handler bug must cost a log line, never the subscriber's packet.
            self.handler_errors += 1
            log.exception("sensing handler failed; packet accepted untouched")
            replacement = None
        if replacement is not None and replacement != raw:
            pkt.set_payload(replacement)
            self.rewritten += 1
        pkt.accept()
        queued_at = pkt.get_timestamp()
        if queued_at:
            self.latencies.append(max(0.0, time.time() - queued_at))

    def latency_quantiles(self) -> tuple[float, float] | None:
        """(p50, p99) of recent verdict latencies in seconds, or None before any packet."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
