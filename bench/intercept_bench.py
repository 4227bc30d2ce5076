"""Interception benchmark: what BitTorrent sensing costs traffic that the gateway forwards.

    python bench/intercept_bench.py --out bench/results/intercept.json [--quick]

Builds its own namespace testbed (deploy/testbed.sh, random prefix) and always tears it down,
also on failure, Ctrl-C or SIGTERM. Everything stays inside the three namespaces. Two states of
the gateway are compared in one run, alternating:

- **off**: no swarmcache process in ``gw`` and no rule of its own (checked with
  ``iptables-save`` and ``ip rule`` after every stop): plain kernel forwarding;
- **on**: ``python -m swarmcache run`` in ``gw`` with interception (the default) and sensing
  (``[bittorrent] steering = true``, ``admit_min_local_peers = 64``, the most the popularity
  table accepts: local peers count by IP and the testbed has one subscriber, so it senses and
  never admits a torrent, never joins a swarm, never rewrites a reply here).

Fixed processes: nginx in ``net`` (bench/nginx/origin.conf; port 8081 is not intercepted), a
libtorrent seed in ``net`` (10.77.2.2:6881, trackerless torrent, uTP off: the payload moves over
TCP, the path the sensing rules look at) and a small handshake server in ``net``. Counting-only
iptables rules in ``net`` (never in ``gw``, so both states carry them equally) count the TCP
SYNs that reach ``net`` (= flows) and the packets whose payload starts with the BitTorrent
handshake (the u32 test the sensing rule applies).

Measured:

1. **Bulk forwarding**, ``--rounds`` rounds, order flipped per round: (a) ``curl -o /dev/null``
   from ``sub`` of a big file on 10.77.2.2:8081 (only its ``GET`` packet is sensed), (b) a
   libtorrent leecher in ``sub`` told only the seed (``--peer``). On/off medians, ranges and
   the ratio on/off.
2. **Packets queued per flow**: the sensed-packet delta of the daemon (every kind plus the
   stale ones) over the SYN count in ``net``, for (a) and (b) and for many short flows: a client
   in ``sub`` opens ``--flows`` connections to the handshake server, each exchanging the
   68-byte handshake after which the server sends ``--extra`` more handshake-shaped segments,
   each of which the u32 test alone would queue; only the connbytes 0:8 bound stops them.
3. **Verdict latency**: the daemon's own p50/p99 (``GET /api/bittorrent/seen``, from the
   kernel's queue timestamp) after each phase, and two outside measures of the delay added:
   the handshake round-trip in (2), on vs off, and the one-way delay of DHT-looking datagrams
   (each carries its send time) sent from ``sub`` to a UDP sink in ``net`` at a ladder of rates,
   on vs off: delivered/sent, the rate the sink saw, drops by where they happened (the queue,
   ``/proc/net/netfilter/nfnetlink_queue``; the sink's buffer, ``/proc/net/snmp``). The
   daemon's figure needs the kernel's packet timestamp, which forwarded packets carry only while
   some socket on the host has RX timestamping on, so the flows and the lowest-rate UDP step are
   repeated with a socket holding ``SO_TIMESTAMPNS`` open (``rx_timestamping_check``).

The same file is its own helper: ``hs-server``, ``hs-client``, ``udp-sink``, ``udp-send`` and
``rx-timestamps`` run inside the namespaces and print JSON. Nothing here passes or fails on
speed; a broken step raises and the run still writes its JSON with ``error`` set and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from benchlib import (
    PROJECT,
    BenchError,
    Testbed,
    curl_fetch,
    log,
    median,
    proc_cpu_seconds,
    proc_status_kib,
    ratio,
    run_benchmark,
    stop_process,
    tail,
)
from bt_bench import Bench as BtBench
from bt_bench import Params as BtParams
from bt_bench import busy_fraction, spread, system_cpu
from http_bench import Bench as HttpBench
from http_bench import Params as HttpParams
from http_bench import _round

from interceptor.rules import _U32_BT_HANDSHAKE
from tests.netns.bt import LtNode, make_payload, make_torrent

NET = "10.77.2.2"
SUB = "10.77.1.2"
BOX = "10.77.1.1"
ADMIN = "127.0.0.1:9480"
SEED = f"{NET}:6881"
HS_SERVER = (NET, 6990)
UDP_BASE_PORT = 7100
SENSE_QUEUE = 8  # bittorrent.sense_queue's default
MiB = 1 << 20
THIS = Path(__file__).resolve()
CONFIG = f"""[bittorrent]
listen = "{BOX}:6881"
steering = true
admit_min_local_peers = 64   # sense only: the testbed has one subscriber IP, never 64
"""
HS_LEN = 68
HS_INFO_HASH = hashlib.sha1(b"swarmcache intercept bench").digest()
# A KRPC ping query; the transaction id carries the sender's CLOCK_MONOTONIC time (a double),
# so the sink can compute the one-way delay (same host, same clock, any namespace).
_DHT_HEAD = b"d1:ad2:id20:" + hashlib.sha1(b"bench node").digest() + b"e1:q4:ping1:t8:"
_DHT_TAIL = b"1:y1:qe"
_DHT_TIME_AT = len(_DHT_HEAD)
# Not exported by every Python build; the Linux values.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def handshake(peer_id: bytes) -> bytes:
    return b"\x13BitTorrent protocol" + bytes(8) + HS_INFO_HASH + peer_id.ljust(20, b"0")


def dht_ping(sent_at: float) -> bytes:
    return _DHT_HEAD + struct.pack(">d", sent_at) + _DHT_TAIL


def quantiles(values: Sequence[float], scale: float = 1.0, nd: int = 3) -> dict[str, Any]:
    """p50/p99/max of ``values`` times ``scale`` (nearest rank), and how many there were."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(len(s) * q))] * scale, nd)

    return {"n": len(s), "p50": pick(0.5), "p99": pick(0.99), "max": round(s[-1] * scale, nd)}


# --------------------------------------------------------------------------------------------
# Helpers run inside the namespaces (python bench/intercept_bench.py hs-server ...)


async def _hs_server(host: str, port: int, extra: int, gap: float) -> None:
    reply = handshake(b"-IBSRV0-")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await reader.readexactly(HS_LEN)
            writer.write(reply)
            await writer.drain()
            # Separate segments, each starting like a handshake: the u32 test alone would queue
            # every one of them.
            for _ in range(extra):
                await asyncio.sleep(gap)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _hs_client(
    host: str, port: int, flows: int, concurrency: int, extra: int, timeout: float
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    hello = handshake(b"-IBCLI0-")
    connect_s: list[float] = []
    rtt_s: list[float] = []
    failures: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            try:
                t0 = time.perf_counter()
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
                t1 = time.perf_counter()
                writer.write(hello)
                reply = await asyncio.wait_for(reader.readexactly(HS_LEN), timeout)
                t2 = time.perf_counter()
                rest = await asyncio.wait_for(reader.read(), timeout)
                writer.close()
                if not reply.startswith(b"\x13BitTorrent protocol") or len(rest) != extra * HS_LEN:
                    failures.append(f"flow {i}: reply {reply[:20]!r}, {len(rest)} bytes after it")
                    return
                connect_s.append(t1 - t0)
                rtt_s.append(t2 - t1)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failures.append(f"flow {i}: {type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(flows)))
    return {
        "flows": flows,
        "ok": len(rtt_s),
        "failures": failures[:10],
        "failed": len(failures),
        "seconds": round(time.perf_counter() - t0, 3),
        "connect_ms": quantiles(connect_s, 1e3),
        "handshake_rtt_ms": quantiles(rtt_s, 1e3),
    }


def _udp_sink(host: str, port: int, expect: int, idle: float, first_timeout: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Force a buffer far above the burst (needs CAP_NET_ADMIN): the sink must never be the
    # place where datagrams are lost; /proc/net/snmp's RcvbufErrors would show it if it were.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * MiB)
    sock.bind((host, port))
    sock.settimeout(first_timeout)
    print("ready", flush=True)
    buf = bytearray(2048)
    delays: list[float] = []
    first = last = 0.0
    n = 0
    while n < expect:
        try:
            size = sock.recv_into(buf)
        except TimeoutError:
            break
        now = time.monotonic()
        if n == 0:
            first = now
            sock.settimeout(idle)
        last = now
        n += 1
        if size >= _DHT_TIME_AT + 8:
            delays.append(now - struct.unpack_from(">d", buf, _DHT_TIME_AT)[0])
    print(
        json.dumps(
            {
                "received": n,
                "first_at": first,
                "last_at": last,
                "one_way_delay_ms": quantiles(delays, 1e3),
            }
        ),
        flush=True,
    )


def _udp_send(host: str, port: int, count: int, rate: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    errors = 0
    t0 = time.monotonic()
    for i in range(count):
        if rate > 0:
            # Paced: datagram i leaves no earlier than t0 + i/rate (bursts of a few after a
            # late wake-up, which is what a real sender does too).
            wait = t0 + i / rate - time.monotonic()
            if wait > 0.0005:
                time.sleep(wait)
        try:
            sock.send(dht_ping(time.monotonic()))
        except OSError:
            errors += 1
    t1 = time.monotonic()
    print(
        json.dumps(
            {
                "sent": count - errors,
                "send_errors": errors,
                "started_at": t0,
                "ended_at": t1,
                "seconds": round(t1 - t0, 4),
                "rate_pps": round((count - errors) / (t1 - t0)) if t1 > t0 else None,
            }
        ),
        flush=True,
    )


def _rx_timestamps() -> None:
    """Hold one socket with SO_TIMESTAMPNS: the kernel then stamps every received packet
    (a host-wide switch), which is what NFQUEUE's packet timestamp depends on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def helper_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="intercept_bench.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    hs = sub.add_parser("hs-server")
    hs.add_argument("--extra", type=int, required=True)
    hs.add_argument("--gap", type=float, default=0.002)
    hc = sub.add_parser("hs-client")
    hc.add_argument("--flows", type=int, required=True)
    hc.add_argument("--concurrency", type=int, default=10)
    hc.add_argument("--extra", type=int, required=True)
    hc.add_argument("--timeout", type=float, default=20.0)
    us = sub.add_parser("udp-sink")
    us.add_argument("--port", type=int, required=True)
    us.add_argument("--expect", type=int, required=True)
    us.add_argument("--idle", type=float, default=3.0)
    se = sub.add_parser("udp-send")
    se.add_argument("--port", type=int, required=True)
    se.add_argument("--count", type=int, required=True)
    se.add_argument("--rate", type=float, default=0.0, help="datagrams/s, 0 = as fast as possible")
    sub.add_parser("rx-timestamps")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.cmd == "rx-timestamps":
        _rx_timestamps()
    elif args.cmd == "hs-server":
        asyncio.run(_hs_server(*HS_SERVER, args.extra, args.gap))
    elif args.cmd == "hs-client":
        result = asyncio.run(
            _hs_client(*HS_SERVER, args.flows, args.concurrency, args.extra, args.timeout)
        )
        print(json.dumps(result))
    elif args.cmd == "udp-sink":
        _udp_sink(NET, args.port, args.expect, args.idle, 30.0)
    else:
        _udp_send(NET, args.port, args.count, args.rate)
    return 0


HELPERS = ("hs-server", "hs-client", "udp-sink", "udp-send", "rx-timestamps")


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True, slots=True)
class Params:
    quick: bool
    rounds: int
    http_mib: int
    http_fetches: int
    bt_mib: int
    piece_kib: int
    flows: int
    extra_segments: int
    udp_count: int
    udp_rates: tuple[int, ...]
    timeout_s: float
    profile: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Params:
        q = args.quick
        return cls(
            quick=q,
            rounds=args.rounds or (1 if q else 3),
            http_mib=args.http_mib or (128 if q else 512),
            http_fetches=args.http_fetches or (2 if q else 3),
            bt_mib=args.bt_mib or (64 if q else 256),
            piece_kib=1024,
            flows=args.flows or (100 if q else 200),
            extra_segments=args.extra,
            udp_count=args.udp_count or (5000 if q else 20000),
            udp_rates=tuple(
                args.udp_rates or ((10000, 0) if q else (5000, 10000, 20000, 40000, 0))
            ),
            timeout_s=args.timeout,
            profile=args.profile,
        )


def parse_counters(listing: str) -> dict[str, int]:
    """Packet counts of our comment-tagged rules in ``iptables -nvxL CHAIN`` output."""
    out: dict[str, int] = {}
    for line in listing.splitlines():
        m = re.search(r"/\* (ib-[a-z-]+) \*/", line)
        if m:
            out[m.group(1)] = int(line.split()[0])
    return out


def parse_nfqueue(text: str) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue: per queue, packets waiting and dropped (kernel
    side: queue full; user side: the reader's netlink socket buffer full)."""
    out: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].isdigit():
            out[int(f[0])] = {
                "waiting": int(f[2]),
                "queue_dropped": int(f[5]),
                "user_dropped": int(f[6]),
                "id_sequence": int(f[7]),
            }
    return out


def parse_udp_snmp(text: str) -> dict[str, int]:
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class Bench:
    """One run. The HTTP and BitTorrent benchmarks' own helpers do the origin, the libtorrent
    nodes and the admin API calls; this class adds the on/off switching and the counters."""

    def __init__(self, bed: Testbed, scratch: Path, params: Params, python: str) -> None:
        self.bed = bed
        self.scratch = scratch
        self.params = params
        self.python = python
        self.http = HttpBench(
            bed, scratch,
            HttpParams(
                quick=params.quick, rounds=0, wrk_seconds=0, wrk_threads=0, wrk_connections=0,
                big_mib=params.http_mib, big_fetches=params.http_fetches, nginx_workers="1",
                swarmcache=False,
            ),
            python,
        )  # fmt: skip
        self.bt = BtBench(
            bed, scratch,
            BtParams(
                quick=params.quick, profile=params.profile, size_mib=params.bt_mib,
                small_mib=params.bt_mib, piece_kib=params.piece_kib, seeds=1,
                rounds=params.rounds, local_rounds=0, leechers=(), delay_ms=0.0, rate=None,
                timeout_s=params.timeout_s, stall_s=params.timeout_s,
            ),
            python,
        )  # fmt: skip
        self.torrent = scratch / "work" / "payload.torrent"
        self.payload: Path | None = None
        self.state = "off"
        self.daemon_starts = 0
        self.own_warnings: list[str] = []
        self.results: dict[str, Any] = {}

    @property
    def warnings(self) -> list[str]:
        return self.own_warnings + self.bt.warnings + self.http.warnings

    def cleanup(self) -> None:
        self.bt.stop_nodes()

    def failure_details(self) -> dict[str, Any]:
        return {"daemon_log_tail": tail(self.bt.daemon_log, 60)}

    # ---------------------------------------------------------------- gateway state

    def start_daemon(self) -> None:
        config = self.scratch / "intercept.toml"
        config.write_text(CONFIG)
        argv = [
            self.python, "-m", "swarmcache", "run", "--config", str(config),
            "--cache-dir", str(self.scratch / "swarmcache-cache"),
            "--subscribers", "10.77.1.0/24", "--admin-listen", ADMIN,
            "--proxy-listen", "0.0.0.0:3128", "--access-log", "",
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
        self.results["swarmcache_command"] = shlex.join(self.bed.cmd(self.bed.gw, argv))
        self.results["swarmcache_config"] = CONFIG
        proc = self.bed.spawn(
            "swarmcache", self.bed.gw, argv, self.bt.daemon_log, env=env, cwd=PROJECT
        )
        self.bt.daemon, self.bt.daemon_pid = proc, proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.bt.check_daemon()
            if self.bt.admin("GET", "/healthz", check=False)[0] == 200:
                break
            time.sleep(0.2)
        else:
            raise BenchError(f"swarmcache /healthz silent for 30s:\n{tail(self.bt.daemon_log)}")
        status, body = self.bt.admin("GET", "/api/bittorrent/seen", check=False)
        if status != 200:
            raise BenchError(f"sensing is not on: GET /api/bittorrent/seen: {status} {body}")
        rules = self.gw_rules()
        if not any(r.startswith("-A FORWARD") for r in rules):
            raise BenchError(
                "swarmcache runs but installed no FORWARD (sensing) jump:\n" + "\n".join(rules)
            )
        if SENSE_QUEUE not in self.nfqueue():
            raise BenchError(f"no reader bound to NFQUEUE {SENSE_QUEUE}: {self.nfqueue()}")
        self.results.setdefault("gw_rules_on", rules)
        self.daemon_starts += 1

    def stop_daemon(self) -> None:
        pid = self.bt.daemon_pid
        assert pid is not None
        seen = self.seen()
        self.results.setdefault("swarmcache_instances", []).append(
            {
                "vm_hwm_kib": proc_status_kib(pid, "VmHWM"),
                "cpu_s_total": proc_cpu_seconds(pid),
                "sensing_at_stop": seen,
            }
        )
        sp = next(s for s in self.bed.spawned if s.proc is self.bt.daemon)
        problem = stop_process(sp)
        self.bed.spawned.remove(sp)
        if problem:
            self.own_warnings.append(problem)
        if sp.proc.returncode != 0:
            self.own_warnings.append(f"swarmcache exited with {sp.proc.returncode} on SIGTERM")
        self.bt.daemon = self.bt.daemon_pid = None
        deadline = time.monotonic() + 5
        while self.gw_rules() or self.gw_policy_rules():
            if time.monotonic() > deadline:
                raise BenchError(
                    "rules left in gw after swarmcache stopped (the off state would not be "
                    f"plain forwarding): {self.gw_rules()} {self.gw_policy_rules()}"
                )
            time.sleep(0.2)

    def set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state == "on":
            self.start_daemon()
        else:
            self.stop_daemon()
        self.state = state
        log(f"gateway: interceptor {state}")

    def gw_rules(self) -> list[str]:
        res = self.bed.run(self.bed.gw, ["iptables-save"], timeout=20)
        return [ln for ln in res.stdout.splitlines() if ln.startswith("-A")]

    def gw_policy_rules(self) -> list[str]:
        res = self.bed.run(self.bed.gw, ["ip", "rule"], timeout=20)
        return [ln for ln in res.stdout.splitlines() if "fwmark" in ln]

    # ---------------------------------------------------------------- probes

    def seen(self) -> dict[str, Any]:
        """The daemon's sensing figures ({} when it is off)."""
        if self.state != "on":
            return {}
        _, body = self.bt.admin("GET", "/api/bittorrent/seen")
        data: dict[str, Any] = json.loads(body)
        data["torrents"] = len(data.get("torrents", []))
        return data

    @staticmethod
    def queued(fig: dict[str, Any]) -> int:
        return int(sum(fig.get("packets", {}).values()) + fig.get("stale", 0))

    def nfqueue(self) -> dict[int, dict[str, int]]:
        res = self.bed.run(
            self.bed.gw, ["cat", "/proc/net/netfilter/nfnetlink_queue"], timeout=10, check=False
        )
        return parse_nfqueue(res.stdout)

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for chain in ("INPUT", "OUTPUT"):
            res = self.bed.run(self.bed.net, ["iptables", "-w", "-nvxL", chain], timeout=20)
            out.update(parse_counters(res.stdout))
        return out

    def udp_snmp(self) -> dict[str, int]:
        res = self.bed.run(self.bed.net, ["cat", "/proc/net/snmp"], timeout=10)
        return parse_udp_snmp(res.stdout)

    def daemon_cpu(self) -> float:
        pid = self.bt.daemon_pid
        return (proc_cpu_seconds(pid) or 0.0) if pid else 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "seen": self.seen(),
            "counters": self.counters(),
            "nfqueue": self.nfqueue().get(SENSE_QUEUE, {}),
            "cpu": self.daemon_cpu(),
            "sys": system_cpu(),
        }

    def delta(self, before: dict[str, Any]) -> dict[str, Any]:
        """What happened since ``before``: flows, sensed packets, drops, CPU, machine load."""
        after = self.snapshot()
        flows = diff(after["counters"], before["counters"])
        out: dict[str, Any] = {
            "flows": flows.get("ib-syn-in", 0) + flows.get("ib-syn-out", 0),
            "net_counters": flows,
            "machine_busy_fraction": busy_fraction(before["sys"], after["sys"]),
        }
        if self.state == "on":
            s0, s1 = before["seen"], after["seen"]
            out["queued"] = self.queued(s1) - self.queued(s0)
            out["queued_by_kind"] = diff(s1.get("packets", {}), s0.get("packets", {}))
            for key in ("stale", "handler_errors", "rewritten"):
                out[key] = s1.get(key, 0) - s0.get(key, 0)
            out["queued_per_flow"] = _round(ratio(out["queued"], out["flows"] or None), 2)
            out["verdict_latency_s_after"] = s1.get("verdict_latency_s")
            out["nfqueue_drops"] = diff(
                {k: v for k, v in after["nfqueue"].items() if k.endswith("dropped")},
                before["nfqueue"],
            )
            out["daemon_cpu_s"] = round(after["cpu"] - before["cpu"], 3)
        return out

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        p = self.params
        (self.scratch / "work").mkdir()
        t0 = time.monotonic()
        self.http.make_files()
        self.payload = make_payload(self.scratch / "seed", "payload.bin", p.bt_mib * MiB, seed=4)
        _, info_hash = make_torrent(
            self.payload, piece_size=p.piece_kib * 1024, trackers=(), out=self.torrent
        )
        self.results["bt_info_hash"] = info_hash
        log(f"files ready ({time.monotonic() - t0:.1f}s); testbed up: {self.bed.prefix}")
        self.bed.up()
        for chain, rule in (
            ("INPUT", ["-p", "tcp", "--syn"]),
            ("OUTPUT", ["-p", "tcp", "--syn"]),
            ("INPUT", ["-p", "tcp", "-m", "u32", "--u32", _U32_BT_HANDSHAKE]),
            ("OUTPUT", ["-p", "tcp", "-m", "u32", "--u32", _U32_BT_HANDSHAKE]),
        ):
            name = f"ib-{'syn' if '--syn' in rule else 'hs'}-{'in' if chain == 'INPUT' else 'out'}"
            self.bed.run(
                self.bed.net,
                ["iptables", "-w", "-A", chain, *rule, "-m", "comment", "--comment", name],
                timeout=20,
            )
        self.http.start_origin()
        seed = self.bt.lt_node("net", SEED, self.torrent, self.payload.parent, seed=True)
        seed.wait_seeding(timeout=300, announced=False)
        argv = [self.python, str(THIS), "hs-server", "--extra", str(p.extra_segments)]
        self.bed.spawn("hs-server", self.bed.net, argv, self.scratch / "hs-server.log")
        self.wait_line(self.scratch / "hs-server.log", "ready", "handshake server")
        if self.gw_rules():
            raise BenchError(f"gw has rules before swarmcache ever ran: {self.gw_rules()}")

    def wait_line(self, path: Path, text: str, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise BenchError(f"{what} not ready in {timeout:.0f}s:\n{tail(path)}")

    # ---------------------------------------------------------------- phase 1 + 2: bulk

    def http_bulk(self, r: int) -> dict[str, Any]:
        p = self.params
        url = f"http://{NET}:8081/big.bin"
        before = self.snapshot()
        fetches = []
        for _ in range(p.http_fetches):
            f = curl_fetch(self.bed, self.bed.sub, url, self.scratch / "headers.txt")
            if f.status != 200 or f.bytes != p.http_mib * MiB:
                raise BenchError(f"{url}: HTTP {f.status}, {f.bytes} bytes")
            fetches.append(f.summary())
        return {"round": r, "fetches": fetches, **self.delta(before)}

    def bt_transfer(self, r: int) -> dict[str, Any]:
        p = self.params
        dest = self.scratch / "dl" / f"{self.state}-r{r}"
        before = self.snapshot()
        t0 = time.monotonic()
        node: LtNode = self.bt.lt_node(
            "sub", f"{SUB}:{7000 + 2 * r + (self.state == 'on')}", self.torrent, dest,
            peers=(SEED,), name=f"leech-{self.state}-r{r}",
        )  # fmt: skip
        assert node.proc is not None
        first_byte: float | None = None
        while node.proc.poll() is None:
            now = time.monotonic()
            if first_byte is None and int(node.status().get("total_done", 0) or 0) > 0:
                first_byte = now - t0
            if now - t0 > p.timeout_s + 30:
                raise BenchError(f"leecher still running after {now - t0:.0f}s: {node.status()}")
            time.sleep(0.05)
        wall = time.monotonic() - t0
        st = node.wait_complete(timeout=5)
        shutil.rmtree(dest, ignore_errors=True)
        seconds = float(st["elapsed"])
        return {
            "round": r,
            "seconds": round(seconds, 3),
            "mb_s": round(p.bt_mib * MiB / seconds / 1e6, 1),
            "wall_s_incl_process_start": round(wall, 2),
            "first_byte_s_approx": None if first_byte is None else round(first_byte, 2),
            "payload_bytes": st["total_payload_download"],
            "peers_at_end": st.get("peer_addresses"),
            **self.delta(before),
        }

    def phase_bulk(self) -> None:
        p = self.params
        http: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        bt: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for r in range(p.rounds):
            for state in ("off", "on") if r % 2 == 0 else ("on", "off"):
                self.set_state(state)
                h = self.http_bulk(r)
                http[state].append(h)
                b = self.bt_transfer(r)
                bt[state].append(b)
                gbit = [f["gbit_s"] for f in h["fetches"]]
                log(
                    f"round {r} {state}: HTTP {gbit} Gbit/s, BitTorrent {b['mb_s']} MB/s"
                    + (f", queued/flow {b.get('queued_per_flow')}" if state == "on" else "")
                )
        http_vals = {s: [f["gbit_s"] for run in http[s] for f in run["fetches"]] for s in http}
        bt_vals = {s: [run["mb_s"] for run in bt[s]] for s in bt}
        self.results["bulk_http"] = {
            "method": (
                f"curl -o /dev/null http://{NET}:8081/big.bin ({p.http_mib} MiB, nginx sendfile) "
                f"from sub, {p.http_fetches} fetches per round and state; Gbit/s per fetch"
            ),
            "object_mib": p.http_mib,
            "off_gbit_s": spread(http_vals["off"]),
            "on_gbit_s": spread(http_vals["on"]),
            "ratio_on_over_off": _round(ratio(median(http_vals["on"]), median(http_vals["off"]))),
            "runs": http,
        }
        self.results["bulk_bittorrent"] = {
            "method": (
                f"lt_node.py leecher in sub (TCP only, uTP off, plaintext), trackerless torrent, "
                f"--peer {SEED} (lt_node.py seed in net); MB/s = payload / the leecher's own "
                "'elapsed' (session start to complete)"
            ),
            "payload_mib": p.bt_mib,
            "utp": False,
            "off_mb_s": spread(bt_vals["off"]),
            "on_mb_s": spread(bt_vals["on"]),
            "ratio_on_over_off": _round(ratio(median(bt_vals["on"]), median(bt_vals["off"]))),
            "queued_per_flow_on": [run.get("queued_per_flow") for run in bt["on"]],
            "runs": bt,
        }

    # ---------------------------------------------------------------- phase 2: many flows

    def phase_flows(self) -> dict[str, Any]:
        p = self.params
        before = self.snapshot()
        argv = [self.python, str(THIS), "hs-client", "--flows", str(p.flows)]
        argv += ["--extra", str(p.extra_segments)]
        res = self.bed.run(self.bed.sub, argv, timeout=p.timeout_s + 60)
        client: dict[str, Any] = json.loads(res.stdout)
        if client["failed"]:
            raise BenchError(f"handshake client: {client['failed']} flows failed: {client}")
        out = {"state": self.state, "client": client, **self.delta(before)}
        c = out["net_counters"]
        out["handshake_segments_per_flow"] = _round(
            ratio(c.get("ib-hs-in", 0) + c.get("ib-hs-out", 0), out["flows"] or None), 2
        )
        log(
            f"{p.flows} handshake flows {self.state}: rtt {client['handshake_rtt_ms']} ms"
            + (f", queued/flow {out.get('queued_per_flow')}" if self.state == "on" else "")
        )
        return out

    # ---------------------------------------------------------------- phase 3: UDP

    def udp_step(self, rate: int, port: int) -> dict[str, Any]:
        p = self.params
        sink_log = self.scratch / f"udp-sink-{port}.log"
        argv = [self.python, str(THIS), "udp-sink", "--port", str(port)]
        argv += ["--expect", str(p.udp_count)]
        sink = self.bed.spawn("udp-sink", self.bed.net, argv, sink_log)
        self.wait_line(sink_log, "ready", "UDP sink")
        before, snmp0 = self.snapshot(), self.udp_snmp()
        profiler = self.bt.start_profile(f"udp-{port}") if self.state == "on" and not rate else None
        argv = [self.python, str(THIS), "udp-send", "--port", str(port)]
        argv += ["--count", str(p.udp_count), "--rate", str(rate)]
        sent: dict[str, Any] = json.loads(self.bed.run(self.bed.sub, argv, timeout=300).stdout)
        try:
            sink.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"UDP sink did not finish:\n{tail(sink_log)}") from None
        profile = self.bt.stop_profile(profiler)
        got: dict[str, Any] = json.loads(sink_log.read_text().splitlines()[-1])
        delta = self.delta(before)
        span = got["last_at"] - sent["started_at"]
        step: dict[str, Any] = {
            "state": self.state,
            "target_rate_pps": rate or "max",
            "sent": sent["sent"],
            "send_errors": sent["send_errors"],
            "send_rate_pps": sent["rate_pps"],
            "delivered": got["received"],
            "delivered_fraction": _round(ratio(got["received"], sent["sent"]), 5),
            "lost": sent["sent"] - got["received"],
            "delivered_rate_pps": round(got["received"] / span) if span > 0 else None,
            "one_way_delay_ms": got["one_way_delay_ms"],
            "sink_udp_errors": diff(self.udp_snmp(), snmp0),
            **delta,
            **profile,
        }
        if self.state == "on" and span > 0:
            step["queued_rate_pps"] = round(step["queued"] / span)
        if self.state == "on" and step["queued"]:
            step["daemon_cpu_us_per_packet"] = round(
                delta["daemon_cpu_s"] / step["queued"] * 1e6, 1
            )
        log(
            f"UDP {self.state} {rate or 'max'} pkt/s: sent {sent['sent']} at {sent['rate_pps']}/s, "
            f"delivered {got['received']}, delay {got['one_way_delay_ms']} ms"
            + (f", queue drops {delta.get('nfqueue_drops')}" if self.state == "on" else "")
        )
        return step

    def rx_timestamp_check(self, port: int) -> dict[str, Any]:
        """The on-state flows and the lowest-rate UDP step again, with one socket in net holding
        SO_TIMESTAMPNS: the daemon's own latency figure needs the kernel's packet timestamp."""
        log_file = self.scratch / "rx-timestamps.log"
        argv = [self.python, str(THIS), "rx-timestamps"]
        proc = self.bed.spawn("rx-timestamps", self.bed.net, argv, log_file)
        self.wait_line(log_file, "ready", "SO_TIMESTAMPNS holder")
        try:
            flows = self.phase_flows()
            udp = self.udp_step(min(self.params.udp_rates, key=lambda r: r or 1 << 30), port)
        finally:
            sp = next(s for s in self.bed.spawned if s.proc is proc)
            stop_process(sp)
            self.bed.spawned.remove(sp)
        return {
            "method": (
                "a process in net holds a UDP socket with SO_TIMESTAMPNS (host-wide RX "
                "timestamping) while the flows and one UDP step run again"
            ),
            "many_flows_verdict_latency_s": flows.get("verdict_latency_s_after"),
            "many_flows_handshake_rtt_ms": flows["client"]["handshake_rtt_ms"],
            "udp_verdict_latency_s": udp.get("verdict_latency_s_after"),
            "udp_one_way_delay_ms": udp["one_way_delay_ms"],
            "udp_step": udp,
        }

    def phase_latency(self) -> None:
        p = self.params
        flows: dict[str, Any] = {}
        udp: list[dict[str, Any]] = []
        port = UDP_BASE_PORT
        for state in (self.state, "off" if self.state == "on" else "on"):
            self.set_state(state)
            flows[state] = self.phase_flows()
            for rate in p.udp_rates:
                udp.append(self.udp_step(rate, port))
                port += 1
            if state == "on":
                self.results["rx_timestamping_check"] = self.rx_timestamp_check(port)
                port += 1
        on, off = flows["on"], flows["off"]
        self.results["many_flows"] = {
            "method": (
                f"{p.flows} TCP flows from sub to a handshake server in net ({HS_SERVER[0]}:"
                f"{HS_SERVER[1]}), 10 at a time: client handshake (68 B), server handshake, then "
                f"{p.extra_segments} more 68-byte handshake-shaped segments 2 ms apart "
                "(TCP_NODELAY), then close. queued = the daemon's sensed packets (all kinds + "
                "stale); flows = SYNs counted in net; handshake segments = packets in net "
                "matching the sensing rule's u32 test"
            ),
            "flows": p.flows,
            "extra_segments": p.extra_segments,
            "queued_per_flow": on.get("queued_per_flow"),
            "handshake_segments_per_flow": on.get("handshake_segments_per_flow"),
            "handshake_rtt_ms": {
                "off": off["client"]["handshake_rtt_ms"],
                "on": on["client"]["handshake_rtt_ms"],
            },
            "runs": flows,
        }
        first_loss = next(
            (s["target_rate_pps"] for s in udp if s["state"] == "on" and s["lost"] > 0), None
        )
        self.results["udp"] = {
            "method": (
                f"{p.udp_count} DHT ping queries (62 B, 'd1:ad2:id20:...e1:q4:ping1:t8:<send "
                "time>1:y1:qe') per step from one Python socket in sub to a sink in net (64 MiB "
                "SO_RCVBUFFORCE), paced at each target rate (max = a tight send loop); "
                "delivered_rate = delivered / (last arrival - first send); one-way delay = "
                "arrival - send time (same CLOCK_MONOTONIC)"
            ),
            "count_per_step": p.udp_count,
            "first_on_rate_with_loss": first_loss,
            "steps": udp,
        }

    # ---------------------------------------------------------------- run

    def run(self) -> None:
        t0 = time.monotonic()
        self.setup()
        self.results["setup_s"] = round(time.monotonic() - t0, 1)
        self.phase_bulk()
        self.phase_latency()
        self.results["daemon_starts"] = self.daemon_starts
        if self.state == "on":  # normally not: phase_latency ends with the state it began in
            self.set_state("off")
        self.results["swarmcache_daemon_log_tail"] = tail(self.bt.daemon_log, 15)
        # Watchdog interventions (heartbeat gaps) and anything else the daemon complained of.
        lines = self.bt.daemon_log.read_text(errors="replace").splitlines()
        self.results["swarmcache_log_warnings"] = [
            ln for ln in lines if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln
        ][:30]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "intercept.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, small payloads")
    ap.add_argument("--rounds", type=int, help="alternating on/off bulk rounds (3; quick 1)")
    ap.add_argument("--http-mib", type=int, help="HTTP object size (512; quick 128)")
    ap.add_argument("--http-fetches", type=int, help="HTTP fetches per round and state (3)")
    ap.add_argument("--bt-mib", type=int, help="BitTorrent payload (256; quick 64)")
    ap.add_argument("--flows", type=int, help="short handshake flows (200; quick 100)")
    ap.add_argument("--extra", type=int, default=12, help="extra handshake segments/flow (12)")
    ap.add_argument("--udp-count", type=int, help="datagrams per UDP step (20000; quick 5000)")
    ap.add_argument(
        "--udp-rates", type=int, nargs="+", help="pkt/s per step, 0 = max (5k 10k 20k 40k 0)"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="per transfer (120 s)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample swarmcache with py-spy during the on/max UDP steps (diagnosis only)",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter for the daemon")
    ap.add_argument("--keep-scratch", action="store_true", help="keep files and logs")
    ap.add_argument("--scratch-dir", type=Path, help="parent of the scratch directory")
    return ap.parse_args(argv)


def print_summary(doc: dict[str, Any]) -> None:
    res = doc.get("results", {})
    if "bulk_http" in res:
        h = res["bulk_http"]
        print(
            f"HTTP {h['object_mib']} MiB: off {h['off_gbit_s']['median']} on "
            f"{h['on_gbit_s']['median']} Gbit/s, ratio on/off {h['ratio_on_over_off']}"
        )
    if "bulk_bittorrent" in res:
        b = res["bulk_bittorrent"]
        print(
            f"BitTorrent {b['payload_mib']} MiB: off {b['off_mb_s']['median']} on "
            f"{b['on_mb_s']['median']} MB/s, ratio on/off {b['ratio_on_over_off']}, "
            f"queued/flow {b['queued_per_flow_on']}"
        )
    if "many_flows" in res:
        m = res["many_flows"]
        print(
            f"{m['flows']} flows: queued/flow {m['queued_per_flow']} (handshake segments/flow "
            f"{m['handshake_segments_per_flow']}), rtt ms {m['handshake_rtt_ms']}"
        )
    for s in res.get("udp", {}).get("steps", []):
        print(
            f"UDP {s['state']} {s['target_rate_pps']}: {s['delivered']}/{s['sent']} at "
            f"{s['delivered_rate_pps']}/s, delay {s['one_way_delay_ms']}, "
            f"latency {s.get('verdict_latency_s_after')}, drops {s.get('nfqueue_drops')}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HELPERS:
        return helper_main(argv)
    args = parse_args(argv)
    params = Params.from_args(args)
    return run_benchmark(
        name="intercept_bench",
        params=params,
        out=args.out,
        scratch_dir=args.scratch_dir,
        keep_scratch=args.keep_scratch,
        prefix_stem="ib",
        make=lambda bed, scratch: Bench(bed, scratch, params, args.python),
        summary=print_summary,
        # tests/netns/bt.py's helpers report failures as AssertionError / CalledProcessError.
        failures=(BenchError, AssertionError, subprocess.CalledProcessError),
    )


if __name__ == "__main__":
    sys.exit(main())
