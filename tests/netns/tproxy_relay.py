"""Test relay: the interceptor modules wired exactly as the daemon wires them, minus the cache.

Runs inside the gateway namespace (``ip netns exec GW python tproxy_relay.py ...``):

1. a TPROXY listener (:func:`interceptor.tproxy.transparent_listener`) served by asyncio;
2. the SYN queue reader (:class:`interceptor.synqueue.SynQueue`) on the same event loop;
3. :func:`interceptor.rules.install`, then optionally :class:`interceptor.watchdog.Watchdog`
   with a heartbeat task;
4. for each accepted connection: append ``CLIENT_IP:PORT -> ORIG_IP:PORT`` (from
   :func:`interceptor.tproxy.original_destination`) to ``--log``, connect to the original
   destination from the gateway's own address and relay bytes both ways.

When everything is up it writes ``--ready`` (JSON: pid, watchdog_pid). SIGTERM/SIGINT is the
clean stop: watchdog stopped, rules removed, queue unbound, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from interceptor import rules
from interceptor.synqueue import SynQueue
from interceptor.tproxy import original_destination, transparent_listener
from interceptor.watchdog import Watchdog

log = logging.getLogger("tproxy_relay")


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass


class Relay:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.tasks: set[asyncio.Task[None]] = set()

    def _record(self, line: str) -> None:
        with self.log_path.open("a") as f:
            f.write(line + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        peer = writer.get_extra_info("peername")
        dst = original_destination(writer.get_extra_info("socket"))
        self._record(f"{peer[0]}:{peer[1]} -> {dst[0]}:{dst[1]}")
        try:
            up_reader, up_writer = await asyncio.open_connection(*dst)
        except OSError as exc:
            log.warning("upstream %s: %s", dst, exc)
            writer.close()
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(reader, up_writer), name=f"up {dst}")
                tg.create_task(_pump(up_reader, writer), name=f"down {dst}")
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            if task is not None:
                self.tasks.discard(task)


async def amain(args: argparse.Namespace) -> int:
    spec = rules.InterceptSpec(
        subscribers=tuple(ipaddress.IPv4Network(s) for s in args.subscriber),
        ports=tuple(args.port),
        listen_port=args.listen_port,
        queue_num=args.queue_num,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    relay = Relay(Path(args.log))
    listener = transparent_listener("0.0.0.0", spec.listen_port)
    server = await asyncio.start_server(relay.handle, sock=listener)
    synq = SynQueue(spec.queue_num)
    synq.start(loop)
    rules.install(spec)
    watchdog = Watchdog.start(spec, timeout=args.watchdog_timeout) if args.watchdog else None
    beat = (
        asyncio.create_task(watchdog.run(), name="watchdog heartbeat")
        if watchdog is not None
        else None
    )
    Path(args.ready).write_text(
        json.dumps({"pid": os.getpid(), "watchdog_pid": watchdog.pid if watchdog else None})
    )
    log.info("relay ready on :%d", spec.listen_port)
    try:
        await stop.wait()
    finally:
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if watchdog is not None:
            watchdog.stop()
        rules.remove(spec)
        synq.close()
        server.close()
        for t in list(relay.tasks):
            t.cancel()
        await server.wait_closed()
    log.info("relay stopped cleanly after %d SYNs", synq.packets)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--listen-port", type=int, default=3129)
    p.add_argument("--subscriber", action="append", required=True)
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--queue-num", type=int, default=7)
    p.add_argument("--log", required=True, help="file receiving one line per connection")
    p.add_argument("--ready", required=True, help="file written once everything is up")
    p.add_argument("--watchdog", action="store_true")
    p.add_argument("--watchdog-timeout", type=float, default=2.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="relay[%(process)d]: %(levelname)s %(message)s")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
