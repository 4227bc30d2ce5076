"""A user-space delay line: hold every packet of an NFQUEUE queue for a fixed time, then accept it.

    python bench/delayline.py --queue 7 --delay-ms 40 [--stats-file F]

Run it inside the namespace whose iptables rules send packets to ``--queue`` (the BitTorrent
benchmark hooks the ``net`` namespace's INPUT and/or OUTPUT chains on its one interface, so
traffic to the outside seeds is delayed the same whether swarmcache in ``gw`` or a libtorrent
leecher in ``sub`` is downloading).

Why it is built this way:

- This kernel has no netem (testbed-notes §7); NFQUEUE plus a late verdict is the one way to
  add latency. The kernel keeps the packet while userspace holds its id, so only the id and a
  deadline are stored here (``COPY_META``: no payload is copied to userspace).
- The delay is constant, so packets leave in arrival order: a FIFO and one timer for its head
  replace a timer per packet (cheaper, and no reordering, which TCP would punish with
  retransmits).
- Verdicts are issued in batches: everything whose deadline is within ``SLACK`` of now goes
  out in one timer callback, which bounds the callbacks per second at high packet rates.
- NetfilterQueue's non-blocking ``run(False)`` driven by ``loop.add_reader`` lets the same
  event loop read packets and fire verdicts, in one thread. SIGTERM unbinds the queue; the
  rules use ``--queue-bypass``, so once we are gone packets pass undelayed instead of dropping.
- It costs CPU per packet (several µs in Python) and shares the machine's cores with what is
  being measured: the stats file records packets and CPU seconds so a report can say how
  much.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from netfilterqueue import COPY_META, NetfilterQueue

__all__ = ["DelayLine", "main"]

SLACK = 0.0005  # seconds: release a packet up to this early rather than arm another timer
STATS_INTERVAL = 1.0


class DelayLine:
    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.fifo: collections.deque[tuple[float, Any]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.packets = 0
        self.max_held = 0

    def on_packet(self, pkt: Any) -> None:
        self.packets += 1
        self.fifo.append((self.loop.time() + self.delay, pkt))
        if len(self.fifo) > self.max_held:
            self.max_held = len(self.fifo)
        if self.timer is None:
            self.timer = self.loop.call_at(self.fifo[0][0], self.release)

    def release(self) -> None:
        self.timer = None
        limit = self.loop.time() + SLACK
        fifo = self.fifo
        while fifo and fifo[0][0] <= limit:
            fifo.popleft()[1].accept()
        if fifo:
            self.timer = self.loop.call_at(fifo[0][0], self.release)

    def flush(self) -> None:
        while self.fifo:
            self.fifo.popleft()[1].accept()


def _write_stats(path: Path | None, line: DelayLine, started: float) -> None:
    if path is None:
        return
    cpu = os.times()
    doc = {
        "packets": line.packets,
        "held_now": len(line.fifo),
        "max_held": line.max_held,
        "cpu_s": round(cpu.user + cpu.system, 3),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # a reader never sees half a file


async def _run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    line = DelayLine(loop, args.delay_ms / 1000.0)
    queue = NetfilterQueue()
    queue.bind(args.queue, line.on_packet, max_len=args.max_len, mode=COPY_META)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(queue.get_fd(), queue.run, False)
    started = time.monotonic()
    print(f"delayline: queue {args.queue}, {args.delay_ms} ms", flush=True)
    try:
        while not stop.is_set():
            _write_stats(args.stats_file, line, started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_INTERVAL)
    finally:
        loop.remove_reader(queue.get_fd())
        line.flush()  # nothing stays held in the kernel once we stop
        queue.unbind()
        _write_stats(args.stats_file, line, started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    ap.add_argument("--delay-ms", type=float, required=True, help="added delay per packet")
    ap.add_argument("--max-len", type=int, default=65536, help="kernel queue length")
    ap.add_argument("--stats-file", type=Path, help="JSON counters, rewritten every second")
    args = ap.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
