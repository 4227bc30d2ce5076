"""The SYN queue reader: elects every queued SYN for interception, from the asyncio event loop.

Why it is built this way:

* The kernel queues only SYNs of candidate flows (see :mod:`interceptor.rules`), and a SYN
  carries nothing worth parsing, so the callback does no parsing at all: it ORs
  :data:`~interceptor.rules.MARK_INTERCEPT` into the packet mark and answers *repeat*. The
  repeated SYN re-enters PREROUTING and meets the TPROXY rule. The verdict is given inside the
  callback, so the only latency a SYN sees is the time until the event loop reads the socket.
* Metadata-only copy mode (``COPY_META``): the verdict needs the packet id and the mark, not
  the bytes, so the kernel copies no payload to user space.
* Driven by ``loop.add_reader(fd, q.run, False)``: ``run(False)`` drains the netlink socket
  with ``MSG_DONTWAIT`` and returns on ``EAGAIN``, so the loop never blocks and there is no
  thread to keep in step (the testbed notes measured this style as fast as a blocking thread).
* Being bound to the queue is what makes the daemon "alive" for the kernel: while a reader is
  bound, ``--queue-bypass`` does not apply. A reader that is bound but not reading (SIGSTOP,
  a blocked event loop) stalls new flows; :mod:`interceptor.watchdog` covers that case.
* Stale SYNs are let through, not intercepted. While the loop is stalled, SYNs pile up in the
  queue; the client retransmits after 1 s, and once the watchdog has disabled the queue the
  retransmission reaches the origin directly and the connection is established *without* us.
  If the reader later repeated the old SYN into TPROXY, the listener would answer a connection
  the client already has with the origin, and the RST that follows resets the client's direct
  connection (reproduced in the namespace testbed: SIGSTOP, connect, SIGCONT, request ->
  ECONNRESET). So the reader keeps a cheap loop-liveness timestamp, refreshed by a timer every
  ``stale_after / 4``, and *accepts unmarked* every SYN it reads after the loop has not run for
  ``stale_after`` (default 1 s, the initial SYN retransmission timeout: a younger SYN cannot have
  a retransmission that bypassed us). Both orders of the first loop iteration after a stall are
  covered: if the I/O callback runs first it sees the old timestamp; if the timer runs first
  (after SIGSTOP/SIGCONT, ``epoll_wait`` fails with EINTR and Python's retry returns no events
  once its deadline has passed, so the due timers run before the fd is read) the timer sees the
  gap and drains the queue in stale mode before refreshing the timestamp. Accepted SYNs go on to
  the origin as if the daemon did not exist: at worst a duplicate SYN, which TCP handles.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings

from netfilterqueue import COPY_META, NetfilterQueue, Packet

from .rules import MARK_INTERCEPT

__all__ = ["QueueReader", "SynQueue"]

log = logging.getLogger(__name__)

# Netlink receive buffer. NetfilterQueue's default is sized for 1024 full packets (~2 MiB);
# with COPY_META a queued SYN costs a few hundred bytes, so 1 MiB holds far more than max_len.
_SOCK_LEN = 1 << 20


class QueueReader:
    """An NFQUEUE bound from the asyncio loop, with the stale-packet rule above.

    Subclasses give :meth:`_verdict` for fresh packets; a packet read after the loop was
    stalled for ``stale_after`` seconds is accepted untouched instead (counted in ``stale``).
    ``packets`` counts every verdict. Use :meth:`start` from inside the event loop's thread and
    :meth:`close` on shutdown (closing hands the queue back to the kernel, after which
    ``--queue-bypass`` forwards packets directly).
    """

    name = "NFQUEUE"
    mode = COPY_META
    copy_range = 65535
    # Seconds one read of the queue may spend on verdicts with work in them. ``run(False)``
    # reads until the queue is empty, so under a steady flood it would never hand the event
    # loop back (the proxy, the admin API, the watchdog heartbeat would starve); past the
    # budget the rest of the batch is accepted unseen (``overflow``). None: no budget.
    budget: float | None = None

    def __init__(self, queue_num: int, *, max_len: int = 4096, stale_after: float = 1.0) -> None:
        self.queue_num = queue_num
        self.max_len = max_len
        self.stale_after = stale_after
        self.packets = 0
        self.stale = 0
        self.overflow = 0
        self._batch_started = 0.0
        self._nfq: NetfilterQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._alive_at = 0.0
        self._draining_stale = False
        self._tick_handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._nfq is not None

    def _verdict(self, pkt: Packet) -> None:
        raise NotImplementedError

    def _on_packet(self, pkt: Packet) -> None:
        self.packets += 1
        now = time.monotonic()
        if self._draining_stale or now - self._alive_at >= self.stale_after:
            self.stale += 1
            pkt.accept()  # queued while the loop was stalled: let it through untouched
            return
        if self.budget is not None and now - self._batch_started > self.budget:
            self.overflow += 1
            pkt.accept()  # this read has used its time: let the event loop run
            return
        self._verdict(pkt)

    def _read_batch(self) -> None:
        assert self._nfq is not None
        self._batch_started = time.monotonic()
        self._nfq.run(False)

    def _tick(self) -> None:
        if self._nfq is None or self._loop is None:
            return
        if time.monotonic() - self._alive_at >= self.stale_after:
            # The loop was stalled: whatever sits in the queue now is old.
            self._draining_stale = True
            try:
                self._nfq.run(False)
            finally:
                self._draining_stale = False
        self._alive_at = time.monotonic()
        self._tick_handle = self._loop.call_later(self.stale_after / 4, self._tick)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the queue and register its fd with ``loop`` (default: the running loop)."""
        if self._nfq is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        loop = loop or asyncio.get_running_loop()
        nfq = NetfilterQueue()
        # NetfilterQueue warns (RuntimeWarning) when the kernel caps the receive buffer below
        # the request; with warnings-as-errors it would unbind and raise. A smaller buffer only
        # means an earlier ENOBUFS (a lost packet, which the sender retransmits): log it.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nfq.bind(
                self.queue_num,
                self._on_packet,
                max_len=self.max_len,
                mode=self.mode,
                range=self.copy_range,
                sock_len=_SOCK_LEN,
            )
        for w in caught:
            log.warning("NFQUEUE %d: %s", self.queue_num, w.message)
        self._fd = nfq.get_fd()
        self._nfq = nfq
        self._loop = loop
        self._alive_at = time.monotonic()
        self._tick()
        loop.add_reader(self._fd, self._read_batch)
        log.info("%s %d bound (max_len %d)", self.name, self.queue_num, self.max_len)

    def close(self) -> None:
        """Unregister and unbind. Idempotent. Packets still queued are dropped by the kernel
        (senders retransmit them, by then bypassing or reaching a new reader)."""
        nfq, self._nfq = self._nfq, None
        if nfq is None:
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        self._fd = -1
        nfq.unbind()
        log.info(
            "%s %d unbound after %d packets (%d stale, let through)",
            self.name,
            self.queue_num,
            self.packets,
            self.stale,
        )


class SynQueue(QueueReader):
    """Bind NFQUEUE ``queue_num`` and answer every SYN with ``mark |= 0x2`` + repeat."""

    name = "SYN queue"

    def __init__(
        self, queue_num: int = 7, *, max_len: int = 4096, stale_after: float = 1.0
    ) -> None:
        super().__init__(queue_num, max_len=max_len, stale_after=stale_after)

    def _verdict(self, pkt: Packet) -> None:
        pkt.set_mark(pkt.get_mark() | MARK_INTERCEPT)
        pkt.repeat()
