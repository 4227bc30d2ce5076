"""A live-stream origin for the fan-out test and benchmark: an endless, counter-stamped stream.

Every GET gets ``200`` with a body of unknown length (chunked, or close-delimited with
``--close-delimited``) made of fixed-size records sent at a fixed rate. A record is
``#<seq:010d> <unix-time:019.6f>\\n`` (32 bytes) followed by filler derived from ``seq``, so a
receiver can check that what it got is a contiguous slice of what was sent (consecutive
``seq``, intact filler) and how late each record arrived (the send time).

Every connection is logged to ``--log`` as JSON lines (``open``/``close`` with the records
sent and the first and last ``seq``), which is how a test counts upstream connections.

By default each connection numbers its records from 0. With ``--seq-from-clock`` a record's
``seq`` is its place on the origin's clock (tick * records-per-tick + i), as for a real live
source: a client reconnecting sees the numbers go on, with a jump for what it missed. After
``--max-records`` a connection ends (``--end clean``: last chunk), breaks (``break``: half a
record, then the connection closes mid-chunk) or alternates (``alternate``: odd connections
break, even ones end).
``--stall-after N`` sends nothing after N records but keeps the connection open.

Usage: live_origin.py --bind ADDR [--port N ...] --log FILE [--record-bytes 1024]
       [--records-per-tick 4] [--tick 0.0625] [--content-type audio/mpeg]
       [--seq-from-clock] [--max-records N [--end clean|break|alternate]] [--stall-after N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import IO

HEADER_BYTES = 32


def record(seq: int, size: int, sent: float) -> bytes:
    head = b"#%010d %019.6f\n" % (seq, sent)
    return head + filler(seq, size)


def filler(seq: int, size: int) -> bytes:
    return bytes([seq % 251]) * (size - HEADER_BYTES)


class Origin:
    def __init__(self, args: argparse.Namespace, log: IO[str]) -> None:
        self.args = args
        self.log = log
        self.connections = 0
        self.epoch_mono = time.monotonic()
        self.epoch_wall = time.time()

    def event(self, **fields: object) -> None:
        self.log.write(json.dumps({"t": time.time(), **fields}) + "\n")
        self.log.flush()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        args = self.args
        self.connections += 1
        number = self.connections
        peer = writer.get_extra_info("peername")
        port = writer.get_extra_info("sockname")[1]
        self.event(event="open", conn=number, peer=f"{peer[0]}:{peer[1]}", port=port)
        sent = 0
        first: int | None = None
        seq = 0
        why = "client closed"
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.event(event="request", conn=number, path=path)
            chunked = not args.close_delimited
            framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n%s\r\n"
                % (args.content_type.encode(), framing)
            )
            # Ticks are on one clock for every connection (a live source produces each piece
            # once, for everybody), and a record is stamped with its tick's time.
            tick = math.ceil((time.monotonic() - self.epoch_mono) / args.tick)
            while args.max_records == 0 or sent < args.max_records:
                if args.stall_after and sent >= args.stall_after:
                    await reader.read()  # quiet, until the peer goes away
                    why = "stalled, then client closed"
                    return
                await asyncio.sleep(max(0.0, self.epoch_mono + tick * args.tick - time.monotonic()))
                stamp = self.epoch_wall + tick * args.tick
                seq = tick * args.records_per_tick if args.seq_from_clock else sent
                first = seq if first is None else first
                body = b"".join(
                    record(seq + i, args.record_bytes, stamp) for i in range(args.records_per_tick)
                )
                if args.close_delimited:
                    writer.write(body)
                else:
                    writer.write(b"%x\r\n%s\r\n" % (len(body), body))
                await writer.drain()
                sent += args.records_per_tick
                seq += args.records_per_tick
                tick += 1
            if args.end == "break" or (args.end == "alternate" and number % 2):
                # Half of the next record (announced whole in its chunk), then the end of the
                # connection (a FIN, so nothing sent before it can be lost to a reset).
                half = record(seq, args.record_bytes, time.time())[: args.record_bytes // 2]
                if not args.close_delimited:
                    writer.write(b"%x\r\n" % args.record_bytes)
                writer.write(half)
                await writer.drain()
                why = "broke off mid-record"
                return
            if not args.close_delimited:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            why = "stream ended"
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            why = f"client closed ({type(exc).__name__})"
        finally:
            last = None if first is None else seq - 1
            self.event(
                event="close", conn=number, records=sent, first_seq=first, last_seq=last, why=why
            )
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, action="append", help="repeatable (default 80)")
    parser.add_argument("--log", required=True)
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--records-per-tick", type=int, default=4)
    parser.add_argument("--tick", type=float, default=0.0625)
    parser.add_argument("--content-type", default="audio/mpeg")
    parser.add_argument("--close-delimited", action="store_true")
    parser.add_argument("--max-records", type=int, default=0, help="end after N (0: never)")
    parser.add_argument("--end", choices=("clean", "break", "alternate"), default="clean")
    parser.add_argument("--seq-from-clock", action="store_true")
    parser.add_argument("--stall-after", type=int, default=0, help="go quiet after N records")
    args = parser.parse_args()
    with open(args.log, "a") as log:
        origin = Origin(args, log)
        servers = [
            await asyncio.start_server(origin.serve, args.bind, port, backlog=4096)
            for port in args.port or [80]
        ]
        await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
