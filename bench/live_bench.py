"""Live fan-out: N clients on one stream at a fixed bitrate, swarmcache against nginx and no box.

Issue 5: "clients per upstream stream held at a fixed bitrate with p99 delivery lag and RSS
(goal: 1,000 clients on one stream, RSS growth under 64 MiB)".

The origin (tests/netns/live_origin.py, in ``net``) sends an endless chunked stream of 1 KiB
records, each stamped with its send time, to every connection (:80, intercepted, and :8081,
not intercepted). One client process in ``sub`` (tests/netns/live_clients.py) opens N
connections, checks every record (contiguous, intact) and records its delivery lag (receive
time minus send time; one clock, all namespaces share the machine). Phases, one after the
other in one run:

- ``swarmcache``: through the box's interception; one upstream connection, fanned out;
- ``nginx``: nginx ``proxy_buffering off`` in ``gw`` as a plain relay (the named peer): one
  upstream connection per client, the usual way a proxy passes a live stream;
- ``direct``: the same clients reading the origin's :8081 through the gateway's forwarding
  (the lag floor of this machine).

Per phase: lag p50/p99, server RSS growth (peak during the phase minus before it), server
CPU seconds, upstream connections the origin saw. Ratios are swarmcache over nginx.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    PROJECT,
    BenchError,
    Testbed,
    log,
    proc_status_kib,
    process_tree,
    ratio,
    run_benchmark,
    tail,
    tree_cpu_seconds,
)
from http_bench import ORIGIN
from http_bench import Bench as HttpBench
from http_bench import Params as HttpParams

GW_SUB = "10.77.1.1"
RELAY_PORT = 8080
DIRECT_PORT = 8081
PATH = "/live/radio.mp3"
RECORD = 1024
LIVE = PROJECT / "tests" / "netns"


@dataclass(frozen=True, slots=True)
class Params:
    clients: int
    kbit_s: int
    duration_s: float
    ramp_s: float
    phases: tuple[str, ...]


class Bench(HttpBench):
    def __init__(self, bed: Testbed, scratch: Path, params: Params, python: str) -> None:
        http = HttpParams(
            quick=False, rounds=0, wrk_seconds=0, wrk_threads=0, wrk_connections=0,
            big_mib=0, big_fetches=0, nginx_workers="1", swarmcache=True,
        )  # fmt: skip
        super().__init__(bed, scratch, http, python)
        self.live = params
        config = scratch / "live.toml"
        config.write_text(
            f"[http]\nmax_connections_per_client = {4 * params.clients + 64}\n\n"
            f'[live]\nurl_patterns = ["http://{ORIGIN}/live/*"]\nlinger = 1.0\n'
        )
        self.daemon_extra = ("--config", str(config))
        self.origin_log = scratch / "live-origin.log"
        # Records per second at the bitrate, sent 8 times a second.
        self.records_per_tick = max(1, round(params.kbit_s * 1000 / 8 / RECORD / 8))

    def start_live_origin(self) -> None:
        argv = [
            self.python, str(LIVE / "live_origin.py"), "--bind", ORIGIN, "--port", "80",
            "--port", str(DIRECT_PORT), "--log", str(self.origin_log),
            "--record-bytes", str(RECORD), "--records-per-tick", str(self.records_per_tick),
            "--tick", "0.125",
        ]  # fmt: skip
        self.bed.spawn("live-origin", self.bed.net, argv, self.scratch / "live-origin.out")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            res = self.bed.run(self.bed.net, ["ss", "-Hltn"], timeout=10, check=False)
            if f"{ORIGIN}:{DIRECT_PORT}" in res.stdout and f"{ORIGIN}:80" in res.stdout:
                return
            time.sleep(0.2)
        raise BenchError(f"live origin did not listen:\n{tail(self.scratch / 'live-origin.out')}")

    def origin_opens(self) -> int:
        if not self.origin_log.exists():
            return 0
        events = [json.loads(line) for line in self.origin_log.read_text().splitlines()]
        return sum(1 for e in events if e["event"] == "open")

    def phase(self, name: str, host: str, port: int, server_pid: int | None) -> dict[str, Any]:
        p = self.live
        opens_before = self.origin_opens()
        rss_before = _tree_rss_kib(server_pid) if server_pid else None
        cpu_before = tree_cpu_seconds(server_pid) if server_pid else None
        peak = [rss_before or 0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                if server_pid:
                    peak[0] = max(peak[0], _tree_rss_kib(server_pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        argv = [
            self.python, str(LIVE / "live_clients.py"), "--host", host, "--port", str(port),
            "--path", PATH, "--clients", str(p.clients), "--duration", str(p.duration_s),
            "--ramp", str(p.ramp_s), "--record-bytes", str(RECORD), "--lags", "--per-client",
        ]  # fmt: skip
        log(f"{name}: {p.clients} clients at {p.kbit_s} kbit/s for {p.duration_s:.0f}s")
        metrics_before = self.metrics() if name == "swarmcache" else {}
        started = time.monotonic()
        res = self.bed.run(self.bed.sub, argv, timeout=p.ramp_s + p.duration_s + 120, check=False)
        elapsed = time.monotonic() - started
        metrics_during = self.metrics() if name == "swarmcache" else {}
        done.set()
        sampler.join()
        if res.returncode != 0:
            raise BenchError(f"{name}: clients failed rc={res.returncode}\n{res.stderr[-3000:]}")
        (self.scratch / f"clients-{name}.json").write_text(res.stdout)
        out = json.loads(res.stdout)
        fast = out["fast_summary"]
        if fast["with_errors"]:
            raise BenchError(f"{name}: {fast['with_errors']} clients got bad bytes: {fast}")
        result: dict[str, Any] = {
            "clients": p.clients,
            "seconds": round(elapsed, 1),
            "upstream_connections": self.origin_opens() - opens_before,
            "lag_s": {k: _r(v, 4) for k, v in out["lag_s"].items()},
            "clients_with_skips": fast["with_jumps"],
            "clients_without_data": fast["without_data"],
            "min_records": fast["min_records"],
            "median_records": fast["median_records"],
            "status": fast["status"],
        }
        if server_pid:
            result["rss_before_mib"] = _r((rss_before or 0) / 1024, 1)
            result["rss_peak_mib"] = _r(peak[0] / 1024, 1)
            result["rss_growth_mib"] = _r((peak[0] - (rss_before or 0)) / 1024, 1)
            result["cpu_s"] = _r(tree_cpu_seconds(server_pid) - (cpu_before or 0.0), 2)
        if name == "swarmcache":
            result["cache_status"] = out["headers"].get("cache-status")
            result["metrics"] = {
                k: metrics_during.get(k, 0.0) - metrics_before.get(k, 0.0)
                for k in (
                    "swarmcache_live_upstream_bytes_total",
                    "swarmcache_live_served_bytes_total",
                    'swarmcache_live_clients_dropped_total{action="skipped"}',
                    'swarmcache_live_clients_dropped_total{action="disconnected"}',
                )
            }
        log(
            f"{name}: lag p50 {result['lag_s']['p50']} s, p99 {result['lag_s']['p99']} s, "
            f"upstream connections {result['upstream_connections']}, "
            f"RSS growth {result.get('rss_growth_mib')} MiB"
        )
        return result

    def run(self) -> None:
        (self.scratch / "tmp").mkdir()
        self.bed.up()
        self.start_live_origin()
        p = self.live
        self.results["method"] = __doc__.split("\n\n")[2].strip() if __doc__ else ""
        self.results["bitrate_kbit_s"] = self.records_per_tick * 8 * RECORD * 8 / 1000
        phases: dict[str, dict[str, Any]] = {}
        for name in p.phases:
            if name == "swarmcache":
                self.start_daemon()
                time.sleep(1)
                phases[name] = self.phase(name, ORIGIN, 80, self.daemon_pid)
                self._stop("swarmcache")
            elif name == "nginx":
                pid = self.start_nginx("live-relay", self.bed.gw)
                time.sleep(1)
                phases[name] = self.phase(name, GW_SUB, RELAY_PORT, pid)
                self._stop("nginx-live-relay")
            elif name == "direct":
                phases[name] = self.phase(name, ORIGIN, DIRECT_PORT, None)
            else:
                raise BenchError(f"unknown phase {name!r}")
            time.sleep(2)  # let the origin see the connections close before the next phase
        self.results["phases"] = phases
        sw, ng = phases.get("swarmcache"), phases.get("nginx")
        if sw and ng:
            self.results["ratio_swarmcache_over_nginx"] = {
                "lag_p50": _r(ratio(sw["lag_s"]["p50"], ng["lag_s"]["p50"]), 3),
                "lag_p99": _r(ratio(sw["lag_s"]["p99"], ng["lag_s"]["p99"]), 3),
                "rss_growth": _r(ratio(sw["rss_growth_mib"], ng["rss_growth_mib"]), 3),
                "cpu": _r(ratio(sw["cpu_s"], ng["cpu_s"]), 3),
                "upstream_connections": _r(
                    ratio(sw["upstream_connections"], ng["upstream_connections"]), 4
                ),
            }

    def _stop(self, name: str) -> None:
        for sp in list(self.bed.spawned):
            if sp.name == name and sp.proc.poll() is None:
                sp.proc.terminate()
                try:
                    sp.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    sp.proc.kill()
                    sp.proc.wait(timeout=5)
        if name == "swarmcache":
            self.daemon_pid = None


def _tree_rss_kib(pid: int) -> int:
    return sum(proc_status_kib(p, "VmRSS") or 0 for p in process_tree(pid))


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def print_summary(doc: dict[str, Any]) -> None:
    results = doc.get("results", {})
    for name, r in results.get("phases", {}).items():
        print(
            f"{name:10s} lag p50 {r['lag_s']['p50']} s p99 {r['lag_s']['p99']} s  "
            f"upstream {r['upstream_connections']}  RSS growth {r.get('rss_growth_mib')} MiB  "
            f"CPU {r.get('cpu_s')} s"
        )
    if "ratio_swarmcache_over_nginx" in results:
        print(f"swarmcache / nginx: {results['ratio_swarmcache_over_nginx']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--kbit", type=int, default=256, help="stream bitrate (kbit/s)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--ramp", type=float, default=5.0, help="seconds to connect every client")
    ap.add_argument("--phases", default="swarmcache,nginx,direct")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "live.json")
    ap.add_argument("--scratch-dir")
    ap.add_argument("--keep-scratch", action="store_true")
    args = ap.parse_args(argv)
    params = Params(
        clients=args.clients,
        kbit_s=args.kbit,
        duration_s=args.duration,
        ramp_s=args.ramp,
        phases=tuple(p.strip() for p in args.phases.split(",") if p.strip()),
    )
    return run_benchmark(
        name="live_bench",
        params=params,
        out=args.out,
        scratch_dir=args.scratch_dir,
        keep_scratch=args.keep_scratch,
        prefix_stem="bl",
        make=lambda bed, scratch: Bench(bed, scratch, params, args.python),
        summary=print_summary,
    )


if __name__ == "__main__":
    sys.exit(main())
