"""HTTP benchmark: swarmcache (transparent, TPROXY) against nginx proxy_cache and against no box.

    python bench/http_bench.py --out bench/results/http.json [--quick]

Builds its own namespace testbed (deploy/testbed.sh, random prefix), starts an nginx origin in
the net namespace (10.77.2.2:80, and :8081 which is not intercepted), nginx proxy_cache as the
named peer in the gw namespace (10.77.1.1:8080) and the swarmcache daemon in the gw namespace
(intercepting subscriber TCP to port 80). All clients (wrk, curl) run in the sub namespace.
The testbed is always torn down, also on failure or SIGTERM/Ctrl-C.

Measured, each target alternating with its peer, ``--rounds`` times:

1. 1 KiB hits, requests/s (wrk -t2 -c64), swarmcache vs nginx proxy_cache;
2. big-object hits (256 MiB, 32 MiB with --quick), Gbit/s (sequential curl -o /dev/null);
3. cold misses of a fresh big object through swarmcache vs the same file fetched directly
   (port 8081, forwarded by the gateway but not intercepted);
4. peak RSS (VmHWM) and CPU seconds of the swarmcache process.

Every cache-hit measurement is preceded by a warm-up that checks the cache's own header
(``X-Cache: HIT`` / ``X-Cache-Status: HIT``); the run aborts with the command and output if it
never hits. Numbers are reported as medians and ratios; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    PROJECT,
    BenchError,
    Fetch,
    Testbed,
    curl_fetch,
    log,
    median,
    metric_deltas,
    parse_prometheus,
    parse_wrk,
    proc_cpu_seconds,
    proc_status_kib,
    process_tree,
    ratio,
    run_benchmark,
    tail,
    tree_cpu_seconds,
)

ORIGIN = "10.77.2.2"
DIRECT_PORT = 8081  # same files as port 80, not intercepted
PEER = "10.77.1.1:8080"
ADMIN = "127.0.0.1:9480"
NGINX_DIR = Path(__file__).resolve().parent / "nginx"
METRICS = ("swarmcache_http_requests_total", "swarmcache_http_upstream_bytes_total")


@dataclass(frozen=True, slots=True)
class Params:
    quick: bool
    rounds: int
    wrk_seconds: int
    wrk_threads: int
    wrk_connections: int
    big_mib: int
    big_fetches: int
    nginx_workers: str
    swarmcache: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Params:
        return cls(
            quick=args.quick,
            rounds=args.rounds or (1 if args.quick else 3),
            wrk_seconds=args.wrk_seconds or (2 if args.quick else 10),
            wrk_threads=2,
            wrk_connections=args.connections,
            big_mib=args.big_mib or (32 if args.quick else 256),
            big_fetches=args.big_fetches or (1 if args.quick else 3),
            nginx_workers=args.nginx_workers,
            swarmcache=not args.no_swarmcache,
        )


class Bench:
    """One run: owns the scratch directory layout and the processes inside the testbed."""

    def __init__(self, bed: Testbed, scratch: Path, params: Params, python: str) -> None:
        self.bed = bed
        self.scratch = scratch
        self.params = params
        self.python = python
        self.www = scratch / "www"
        self.hdr = scratch / "headers.txt"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_pid: int | None = None
        self.daemon_log = scratch / "swarmcache.log"
        self.peer_pid: int | None = None
        self.warnings: list[str] = []
        self.stuck_in_flight = False
        self.results: dict[str, Any] = {}

    # ---------------------------------------------------------------- setup

    # Extra `swarmcache run` arguments (other harnesses built on this one set them).
    daemon_extra: tuple[str, ...] = ()

    def cleanup(self) -> None:
        """Everything this harness starts runs in the testbed, which stops it."""

    def failure_details(self) -> dict[str, Any]:
        return {"daemon_log_tail": tail(self.daemon_log, 60)} if self.daemon_log.exists() else {}

    def make_files(self) -> None:
        self.www.mkdir()
        (self.scratch / "tmp").mkdir()
        (self.www / "1k.bin").write_bytes(os.urandom(1024))
        chunk = 4 << 20
        with (self.www / "big.bin").open("wb") as f:
            for _ in range(self.params.big_mib * (1 << 20) // chunk):
                f.write(os.urandom(chunk))
        # Cold objects: distinct URLs and distinct bytes (the same bytes under a new URL would
        # be a fingerprint match, served from the stored big.bin, not a miss).
        for r in range(self.params.rounds):
            with (self.www / f"cold-{r}.bin").open("wb") as f:
                for _ in range(self.params.big_mib * (1 << 20) // chunk):
                    f.write(os.urandom(chunk))

    def start_nginx(self, name: str, ns: str, **subst: str) -> int:
        """Render bench/nginx/NAME.conf into the scratch directory, check it, start it in ns."""
        text = (NGINX_DIR / f"{name}.conf").read_text()
        for key, value in {"DIR": str(self.scratch), **subst}.items():
            text = text.replace(f"@{key}@", value)
        conf = self.scratch / f"{name}.conf"
        conf.write_text(text)
        argv = ["nginx", "-c", str(conf), "-p", str(self.scratch)]
        argv += ["-e", str(self.scratch / f"{name}-error.log")]
        self.bed.run(ns, [*argv, "-t", "-q"], timeout=20)
        proc = self.bed.spawn(f"nginx-{name}", ns, argv, self.scratch / f"{name}-stdout.log")
        return proc.pid

    def wait_fetch(self, url: str, what: str, timeout: float = 15) -> Fetch:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                f = curl_fetch(self.bed, self.bed.sub, url, self.hdr, timeout=5)
                if f.status == 200:
                    return f
                last = f"HTTP {f.status}"
            except BenchError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BenchError(f"{what} did not answer {url} within {timeout:.0f}s: {last}")

    def start_origin(self) -> None:
        self.start_nginx("origin", self.bed.net, WWW=str(self.www))
        f = self.wait_fetch(f"http://{ORIGIN}:{DIRECT_PORT}/1k.bin", "origin nginx")
        if f.bytes != 1024:
            raise BenchError(f"origin served {f.bytes} bytes for /1k.bin, expected 1024")

    def start_peer(self) -> None:
        self.peer_pid = self.start_nginx("peer", self.bed.gw, WORKERS=self.params.nginx_workers)
        self.wait_fetch(f"http://{PEER}/1k.bin", "nginx proxy_cache peer")

    def start_daemon(self) -> None:
        argv = [
            self.python,
            "-m",
            "swarmcache",
            "run",
            "--cache-dir",
            str(self.scratch / "swarmcache-cache"),
            "--subscribers",
            "10.77.1.0/24",
            "--admin-listen",
            ADMIN,
            "--proxy-listen",
            "10.77.1.1:3128",
            "--access-log",
            "",
            *self.daemon_extra,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
        self.results["swarmcache_command"] = shlex.join(self.bed.cmd(self.bed.gw, argv))
        proc = self.bed.spawn(
            "swarmcache", self.bed.gw, argv, self.daemon_log, env=env, cwd=PROJECT
        )
        self.daemon, self.daemon_pid = proc, proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"swarmcache exited with rc={proc.returncode} during start-up:\n"
                    f"  {self.results['swarmcache_command']}\n{tail(self.daemon_log)}"
                )
            res = self.bed.run(
                self.bed.gw,
                ["curl", "-sf", "--max-time", "2", f"http://{ADMIN}/healthz"],
                timeout=10,
                check=False,
            )
            if res.returncode == 0:
                return
            time.sleep(0.2)
        raise BenchError(f"swarmcache /healthz did not answer within 30s:\n{tail(self.daemon_log)}")

    # ---------------------------------------------------------------- probes

    def metrics(self) -> dict[str, float]:
        if self.daemon_pid is None:
            return {}
        res = self.bed.run(
            self.bed.gw,
            ["curl", "-sS", "--max-time", "5", f"http://{ADMIN}/metrics"],
            timeout=15,
            check=False,
        )
        if res.returncode != 0:
            self.warnings.append(f"GET /metrics failed: rc={res.returncode} {res.stderr.strip()}")
            return {}
        return parse_prometheus(res.stdout, "swarmcache_")

    def settle(self) -> None:
        """Wait (briefly) until swarmcache has no fetch in flight, e.g. a store still filling.

        Gives up after 10 s the first time and 2 s afterwards, so a daemon whose in-flight
        count never drops (a leak) slows the run down only once; the warning records it.
        """
        if self.daemon_pid is None:
            return
        limit = 2.0 if self.stuck_in_flight else 10.0
        deadline = time.monotonic() + limit
        body = ""
        while time.monotonic() < deadline:
            res = self.bed.run(
                self.bed.gw,
                ["curl", "-sS", "--max-time", "2", f"http://{ADMIN}/api/stats"],
                timeout=10,
                check=False,
            )
            body = res.stdout.strip()
            try:
                if json.loads(body).get("fetches_in_flight", 0) == 0:
                    return
            except ValueError:
                return
            time.sleep(0.2)
        self.stuck_in_flight = True
        self.warnings.append(
            f"swarmcache still had fetches in flight {limit:.0f}s after a fetch completed "
            f"(GET /api/stats: {body})"
        )

    def server_cpu(self, target: str) -> float:
        if target == "swarmcache" and self.daemon_pid is not None:
            return proc_cpu_seconds(self.daemon_pid) or 0.0
        if target == "nginx" and self.peer_pid is not None:
            return tree_cpu_seconds(self.peer_pid)
        return 0.0

    def warm(self, target: str, url: str, expect_bytes: int) -> list[str]:
        """Fetch until the cache says HIT (from the second fetch on); abort if it never does."""
        header = "x-cache" if target == "swarmcache" else "x-cache-status"
        seen: list[str] = []
        for attempt in range(6):
            f = curl_fetch(self.bed, self.bed.sub, url, self.hdr)
            value = f.headers.get(header, "<absent>")
            seen.append(f"HTTP {f.status} {f.bytes}B {header}={value}")
            if f.status != 200 or f.bytes != expect_bytes:
                raise BenchError(
                    f"{target}: warming {url} got HTTP {f.status} with {f.bytes} bytes "
                    f"(expected 200, {expect_bytes}); headers: {f.headers}"
                )
            if attempt >= 1 and value.upper().startswith("HIT"):
                return seen
            if target == "swarmcache":
                self.settle()
            time.sleep(0.2)
        hint = (
            " (no X-Cache header at all: the request was probably not intercepted)"
            if all("<absent>" in s for s in seen)
            else ""
        )
        raise BenchError(
            f"{target}: {url} never became a cache hit{hint}. Command: "
            f"ip netns exec {self.bed.sub} curl -sS -o /dev/null -D - {url}\n  "
            + "\n  ".join(seen)
            + (f"\nswarmcache log tail:\n{tail(self.daemon_log)}" if target == "swarmcache" else "")
        )

    def targets(self, r: int) -> list[str]:
        order = ["swarmcache", "nginx"] if self.params.swarmcache else ["nginx"]
        return order if r % 2 == 0 else order[::-1]

    def url(self, target: str, path: str) -> str:
        if target == "swarmcache":
            return f"http://{ORIGIN}{path}"  # intercepted transparently
        if target == "nginx":
            return f"http://{PEER}{path}"
        return f"http://{ORIGIN}:{DIRECT_PORT}{path}"

    def check_hit_phase(self, target: str, deltas: dict[str, float], served: float) -> None:
        upstream = deltas.get("swarmcache_http_upstream_bytes_total", 0.0)
        if target == "swarmcache" and upstream > 0.01 * served + 65536:
            self.warnings.append(
                f"swarmcache fetched {upstream:.0f} upstream bytes during a hit measurement "
                f"that served about {served:.0f} bytes"
            )

    # ---------------------------------------------------------------- phases

    def phase_small(self) -> None:
        p = self.params
        log("1 KiB hits: warming")
        warmups = {t: self.warm(t, self.url(t, "/1k.bin"), 1024) for t in self.targets(0)}
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in self.targets(0)}
        for r in range(p.rounds):
            for target in self.targets(r):
                url = self.url(target, "/1k.bin")
                argv = [
                    "wrk",
                    f"-t{p.wrk_threads}",
                    f"-c{p.wrk_connections}",
                    f"-d{p.wrk_seconds}s",
                    "--latency",
                    url,
                ]
                before_m, cpu0 = self.metrics(), self.server_cpu(target)
                res = self.bed.run(self.bed.sub, argv, timeout=p.wrk_seconds + 60)
                cpu = self.server_cpu(target) - cpu0
                w = parse_wrk(res.stdout)
                deltas = metric_deltas(before_m, self.metrics(), METRICS)
                self.check_hit_phase(target, deltas, w.requests * 1024.0)
                if w.non_2xx_3xx or any(w.socket_errors.values()):
                    self.warnings.append(
                        f"wrk against {target}: {w.non_2xx_3xx} non-2xx/3xx, "
                        f"socket errors {w.socket_errors}"
                    )
                run = {
                    "round": r,
                    **w.summary(),
                    "server_cpu_s": round(cpu, 2),
                    "server_cpu_us_per_request": round(cpu / w.requests * 1e6, 2)
                    if w.requests
                    else None,
                }
                if target == "swarmcache":
                    run["metrics_delta"] = deltas
                runs[target].append(run)
                log(f"1 KiB hits round {r} {target}: {w.requests_per_s:.0f} req/s")
        self.results["hit_1k_requests_per_s"] = self.summarise(
            runs, "requests_per_s", "wrk " + " ".join(argv[1:-1]) + " URL", warmups
        )

    def phase_big(self) -> None:
        p = self.params
        size = p.big_mib << 20
        log(f"{p.big_mib} MiB hits: warming")
        warmups = {t: self.warm(t, self.url(t, "/big.bin"), size) for t in self.targets(0)}
        header = {"swarmcache": "x-cache", "nginx": "x-cache-status"}
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in self.targets(0)}
        for r in range(p.rounds):
            for target in self.targets(r):
                for _ in range(p.big_fetches):
                    before_m, cpu0 = self.metrics(), self.server_cpu(target)
                    f = curl_fetch(self.bed, self.bed.sub, self.url(target, "/big.bin"), self.hdr)
                    cpu = self.server_cpu(target) - cpu0
                    deltas = metric_deltas(before_m, self.metrics(), METRICS)
                    cache = f.headers.get(header[target], "<absent>")
                    if f.status != 200 or f.bytes != size or not cache.upper().startswith("HIT"):
                        self.warnings.append(
                            f"big hit via {target}: HTTP {f.status}, {f.bytes} bytes, "
                            f"{header[target]}={cache}"
                        )
                    self.check_hit_phase(target, deltas, float(f.bytes))
                    run = {
                        "round": r,
                        **f.summary(),
                        "cache": cache,
                        "server_cpu_s": round(cpu, 3),
                        "server_cpu_s_per_gb": round(cpu / (f.bytes / 1e9), 3) if f.bytes else None,
                    }
                    if target == "swarmcache":
                        run["metrics_delta"] = deltas
                    runs[target].append(run)
                    log(f"{p.big_mib} MiB hit round {r} {target}: {f.gbit_s:.2f} Gbit/s")
        self.results["hit_big_gbit_s"] = {
            "object_mib": p.big_mib,
            **self.summarise(runs, "gbit_s", "curl -o /dev/null URL (sequential)", warmups),
        }

    def phase_cold(self) -> None:
        p = self.params
        size = p.big_mib << 20
        runs: dict[str, list[dict[str, Any]]] = {"swarmcache": [], "direct": []}
        for r in range(p.rounds):
            order = ["swarmcache", "direct"] if r % 2 == 0 else ["direct", "swarmcache"]
            for target in order:
                url = self.url(target, f"/cold-{r}.bin")
                before_m, cpu0 = self.metrics(), self.server_cpu(target)
                f = curl_fetch(self.bed, self.bed.sub, url, self.hdr)
                cpu = self.server_cpu(target) - cpu0
                if target == "swarmcache":
                    # The fill (store write, hash check, counters) may finish after the client
                    # has its last byte; account for it before the next measurement starts.
                    self.settle()
                cpu_fill = self.server_cpu(target) - cpu0
                deltas = metric_deltas(before_m, self.metrics(), METRICS)
                cache = f.headers.get("x-cache", "<absent>")
                if f.status != 200 or f.bytes != size:
                    raise BenchError(f"cold fetch {url} via {target}: HTTP {f.status} {f.bytes}B")
                if target == "swarmcache" and not cache.upper().startswith("MISS"):
                    raise BenchError(
                        f"cold fetch {url} was not a miss: X-Cache={cache}, headers {f.headers}"
                    )
                if target == "direct" and cache != "<absent>":
                    self.warnings.append(f"direct fetch {url} carried X-Cache={cache}")
                run = {"round": r, **f.summary(), "cache": cache}
                if target == "swarmcache":
                    run["server_cpu_s"] = round(cpu, 3)
                    run["server_cpu_s_incl_fill"] = round(cpu_fill, 3)
                    run["metrics_delta"] = deltas
                runs[target].append(run)
                log(f"cold {p.big_mib} MiB round {r} {target}: {f.gbit_s:.2f} Gbit/s")
        sw = median([x["gbit_s"] for x in runs["swarmcache"]])
        di = median([x["gbit_s"] for x in runs["direct"]])
        self.results["cold_miss_gbit_s"] = {
            "object_mib": p.big_mib,
            "method": f"curl -o /dev/null; swarmcache: http://{ORIGIN}/cold-N.bin (intercepted), "
            f"direct: http://{ORIGIN}:{DIRECT_PORT}/cold-N.bin (forwarded, not intercepted)",
            "swarmcache": {"median": sw, "runs": runs["swarmcache"]},
            "direct": {"median": di, "runs": runs["direct"]},
            "ratio_swarmcache_over_direct": _round(ratio(sw, di)),
        }

    def summarise(
        self,
        runs: dict[str, list[dict[str, Any]]],
        key: str,
        method: str,
        warmups: dict[str, list[str]],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"method": method}
        for target, target_runs in runs.items():
            out[target] = {
                "median": median([x[key] for x in target_runs]),
                "url": self.url(target, "/..."),
                "warmup": warmups.get(target),
                "runs": target_runs,
            }
        if "swarmcache" in out:
            out["ratio_swarmcache_over_nginx"] = _round(
                ratio(out["swarmcache"]["median"], out["nginx"]["median"])
            )
        return out

    def process_facts(self) -> None:
        if self.daemon_pid is None:
            return
        pid = self.daemon_pid
        tree = process_tree(pid)
        self.results["swarmcache_process"] = {
            "pid": pid,
            "vm_hwm_kib": proc_status_kib(pid, "VmHWM"),
            "vm_rss_kib": proc_status_kib(pid, "VmRSS"),
            "cpu_s_total": proc_cpu_seconds(pid),
            "children": {
                str(c): {"vm_hwm_kib": proc_status_kib(c, "VmHWM")} for c in tree if c != pid
            },
            "final_metrics": {k: v for k, v in self.metrics().items() if k.startswith(METRICS)},
        }
        if self.daemon is not None and self.daemon.poll() is not None:
            self.warnings.append(f"swarmcache exited during the run:\n{tail(self.daemon_log)}")

    def run(self) -> None:
        log(f"making files ({self.params.big_mib} MiB object) in {self.scratch}")
        self.make_files()
        log(f"testbed up: {self.bed.prefix}")
        self.bed.up()
        self.start_origin()
        self.start_peer()
        if self.params.swarmcache:
            self.start_daemon()
            log(f"swarmcache up, pid {self.daemon_pid}")
        self.phase_small()
        self.phase_big()
        if self.params.swarmcache:
            self.phase_cold()
        self.process_facts()


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "http.json")
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 s wrk, 32 MiB)")
    ap.add_argument("--rounds", type=int, help="alternating rounds per measurement (3; quick 1)")
    ap.add_argument("--wrk-seconds", type=int, help="wrk duration per run (10; quick 2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    ap.add_argument("--big-mib", type=int, help="big object size in MiB (256; quick 32)")
    ap.add_argument("--big-fetches", type=int, help="big-object fetches per round (3; quick 1)")
    ap.add_argument("--nginx-workers", default="auto", help="peer worker_processes (auto)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the daemon")
    ap.add_argument("--no-swarmcache", action="store_true", help="measure only the peers")
    ap.add_argument("--keep-scratch", action="store_true", help="keep files and logs")
    ap.add_argument("--scratch-dir", type=Path, help="parent of the scratch directory")
    return ap.parse_args(argv)


def print_summary(doc: dict[str, Any]) -> None:
    res = doc.get("results", {})
    lines = []
    for key, unit in (("hit_1k_requests_per_s", "req/s"), ("hit_big_gbit_s", "Gbit/s")):
        if key in res:
            r = res[key]
            sw = r.get("swarmcache", {}).get("median")
            lines.append(
                f"{key}: swarmcache {sw} {unit}, nginx {r['nginx']['median']} {unit}, "
                f"ratio {r.get('ratio_swarmcache_over_nginx')}"
            )
    if "cold_miss_gbit_s" in res:
        r = res["cold_miss_gbit_s"]
        lines.append(
            f"cold_miss_gbit_s: swarmcache {r['swarmcache']['median']}, direct "
            f"{r['direct']['median']}, ratio {r['ratio_swarmcache_over_direct']}"
        )
    if "swarmcache_process" in res:
        lines.append(f"swarmcache VmHWM: {res['swarmcache_process']['vm_hwm_kib']} KiB")
    for line in lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = Params.from_args(args)
    return run_benchmark(
        name="http_bench",
        params=params,
        out=args.out,
        scratch_dir=args.scratch_dir,
        keep_scratch=args.keep_scratch,
        prefix_stem="bh",
        make=lambda bed, scratch: Bench(bed, scratch, params, args.python),
        summary=print_summary,
    )


if __name__ == "__main__":
    sys.exit(main())
