"""Many clients of one live stream in one asyncio process (fan-out test and benchmark).

Each client sends a GET, parses the response with the project's sans-IO reader, and checks
every record of :mod:`tests.netns.live_origin` as it arrives: consecutive ``seq`` (a jump
forward is counted, anything else is an error), intact filler, and the delivery lag (now
minus the send time stamped in the record). ``--slow N`` clients read for a second, stop
reading for ``--slow-pause`` seconds (their socket buffers fill, the box has to cope), then
read again. Clients connect during ``--ramp`` seconds; ``--duration`` seconds later they all
close (lags count from two seconds after the ramp); a JSON summary goes to stdout.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import socket
import statistics
import sys
import time
import typing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from swarmcache.http.parser import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Response,
    ResponseReader,
)
from tests.netns.live_origin import HEADER_BYTES, filler


class Client:
    def __init__(self, index: int, record_bytes: int, keep_lags: bool) -> None:
        self.index = index
        self.size = record_bytes
        self.status = 0
        self.headers: dict[str, str] = {}
        self.bytes = 0
        self.records = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.jumps = 0
        self.jumped: list[tuple[int, int]] = []  # (seq before, seq after) of the first jumps
        self.errors: list[str] = []
        self.ended = False  # the response ended (last chunk / close) before we left
        self.why = "deadline"  # why the client stopped reading
        self.raw_bytes = 0
        self.measure_from = 0.0  # lags count from here (after the ramp)
        self.started = 0.0
        self.first_byte = 0.0
        self.last_byte = 0.0
        self.lags = array.array("d") if keep_lags else None
        self._pending = bytearray()
        self._fillers: dict[int, bytes] = {}

    def feed(self, data: bytes | memoryview) -> None:
        now = time.time()
        if not self.bytes:
            self.first_byte = time.monotonic()
        self.last_byte = time.monotonic()
        self.bytes += len(data)
        self._pending += data
        size = self.size
        done = 0
        while len(self._pending) - done >= size:
            self._check(bytes(self._pending[done : done + size]), now)
            done += size
        del self._pending[:done]

    def _check(self, rec: bytes, now: float) -> None:
        if len(self.errors) > 5:
            return
        if rec[:1] != b"#" or rec[HEADER_BYTES - 1 : HEADER_BYTES] != b"\n":
            self.errors.append(f"record {self.records} is not aligned: {rec[:40]!r}")
            return
        seq = int(rec[1:11])
        sent = float(rec[12:31])
        fill = self._fillers.get(seq % 251)
        if fill is None:
            fill = self._fillers[seq % 251] = filler(seq, self.size)
        if rec[HEADER_BYTES:] != fill:
            self.errors.append(f"record {seq} has a damaged body")
        if self.last_seq is not None:
            if seq <= self.last_seq:
                self.errors.append(f"record {seq} after {self.last_seq}: not contiguous")
            elif seq != self.last_seq + 1:
                self.jumps += 1
                if len(self.jumped) < 20:
                    self.jumped.append((self.last_seq, seq))
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.records += 1
        if self.lags is not None and now >= self.measure_from:
            self.lags.append(now - sent)

    def summary(self) -> dict[str, Any]:
        window = self.last_byte - self.first_byte
        return {
            "index": self.index,
            "status": self.status,
            "bytes": self.bytes,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "jumps": self.jumps,
            "jumped": self.jumped,
            "errors": self.errors,
            "ended": self.ended,
            "why": self.why,
            "raw_bytes": self.raw_bytes,
            "connected_s": round(time.monotonic() - self.started, 3),
            "receiving_s": round(window, 3),
        }


class _Protocol(asyncio.Protocol):
    """One client connection: every received byte goes straight through the sans-IO reader
    (a raw protocol: a thousand StreamReaders cost this process more than the daemon)."""

    def __init__(self, client: Client, request: bytes, done: asyncio.Future[None]) -> None:
        self.client = client
        self.request = request
        self.done = done
        self.parser = ResponseReader(max_head_bytes=65536, max_headers=100)
        self.parser.expect(b"GET")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.client.raw_bytes += len(data)
        self.parser.feed(data)
        self._events()

    def eof_received(self) -> bool:
        self.client.why = "eof"
        self.parser.feed(b"")
        self._events()
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.client.why == "deadline":
            self.client.why = f"lost: {exc!r}"
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _events(self) -> None:
        client = self.client
        try:
            while True:
                event = self.parser.next_event()
                if event is NEED_DATA:
                    return
                if isinstance(event, Data):
                    client.feed(event.data)
                elif isinstance(event, Response):
                    client.status = event.status
                    client.headers = {
                        n.decode("latin-1"): v.decode("latin-1") for n, v in event.headers
                    }
                elif isinstance(event, EndOfMessage):
                    client.ended = True
                    self._finish()
                    return
        except Exception as exc:  # reported in the summary; the caller judges it
            client.errors.append(f"{type(exc).__name__}: {exc}")
            self._finish()


async def run_client(
    client: Client,
    host: str,
    port: int,
    path: str,
    deadline: float,
    slow_pause: float,
    rcvbuf: int,
) -> None:
    client.started = time.monotonic()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    done: asyncio.Future[None] = loop.create_future()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: live-client\r\n\r\n"
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 30)
        transport, _ = await loop.create_connection(
            lambda: _Protocol(client, request.encode(), done), sock=sock
        )
    except (OSError, TimeoutError) as exc:
        sock.close()
        client.errors.append(f"connect: {exc!r}")
        return
    if slow_pause:
        # Read for a second, then stop reading (the socket buffers fill), then read again.
        loop.call_later(1.0, transport.pause_reading)
        loop.call_later(1.0 + slow_pause, transport.resume_reading)
    try:
        await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        pass
    finally:
        transport.abort()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--path", default="/live.mp3")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slow", type=int, default=0, help="clients that stop reading")
    parser.add_argument("--slow-pause", type=float, default=8.0)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds after the ramp")
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to spread connects")
    parser.add_argument("--lags", action="store_true", help="report delivery lag percentiles")
    parser.add_argument("--per-client", action="store_true", help="list every client")
    args = parser.parse_args()

    start = time.monotonic()
    # Clients connect during the ramp; all of them leave together at the end.
    deadline = start + args.ramp + args.duration
    fast = [Client(i, args.record_bytes, args.lags) for i in range(args.clients)]
    slow = [Client(args.clients + i, args.record_bytes, False) for i in range(args.slow)]
    measure_from = time.time() + args.ramp + min(2.0, args.duration / 4)
    for client in fast:
        client.measure_from = measure_from
    tasks = []
    batches = max(1, int(args.ramp / 0.05))
    for b in range(batches):
        for client in fast[b::batches]:
            tasks.append(
                asyncio.create_task(
                    run_client(client, args.host, args.port, args.path, deadline, 0.0, 0)
                )
            )
        if args.ramp:
            await asyncio.sleep(max(0.0, start + (b + 1) * args.ramp / batches - time.monotonic()))
    for client in slow:
        tasks.append(
            asyncio.create_task(
                run_client(client, args.host, args.port, args.path, deadline, args.slow_pause, 4096)
            )
        )
    await asyncio.gather(*tasks)
    lags = [x for c in fast if c.lags is not None for x in c.lags]
    out: dict[str, Any] = {
        "duration_s": round(time.monotonic() - start, 3),
        "headers": (fast or slow)[0].headers if fast or slow else {},
        "fast": [c.summary() for c in fast] if args.per_client else [],
        "slow": [c.summary() for c in slow],
        "fast_summary": {
            "clients": len(fast),
            "with_errors": sum(1 for c in fast if c.errors),
            "without_data": sum(1 for c in fast if not c.records),
            "first_errors": [e for c in fast for e in c.errors][:10],
            "with_jumps": sum(1 for c in fast if c.jumps),
            "status": sorted({c.status for c in fast}),
            "min_records": min((c.records for c in fast), default=0),
            "median_records": statistics.median([c.records for c in fast]) if fast else 0,
            "max_last_seq": max((c.last_seq or 0 for c in fast), default=0),
            "min_last_seq": min((c.last_seq or 0 for c in fast), default=0),
        },
    }
    if args.lags:
        out["lag_s"] = {
            "records": len(lags),
            "p50": percentile(lags, 0.50),
            "p90": percentile(lags, 0.90),
            "p99": percentile(lags, 0.99),
            "max": max(lags) if lags else None,
        }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
