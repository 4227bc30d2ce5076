"""BitTorrent benchmark: swarmcache against libtorrent, downloading over an emulated WAN and seeding
to local leechers.

    python bench/bt_bench.py --out bench/results/bt.json [--quick]

Builds its own namespace testbed (deploy/testbed.sh, random prefix) and always tears it down,
also on failure, Ctrl-C or SIGTERM. Everything stays inside the three namespaces:

- ``net`` 10.77.2.2: opentracker (:6969) and 4 libtorrent seeds (:6881-6884, lt_node.py);
- ``gw``: the swarmcache daemon (``--no-intercept``, BitTorrent seeder on 10.77.1.1:6881,
  admin API on 127.0.0.1:9480) and, for the seeding comparison, one libtorrent seed on
  10.77.1.1:6889/6890;
- ``sub`` 10.77.1.2: every libtorrent leecher.

WAN emulation (there is no netem in this kernel, testbed-notes §7): a user-space NFQUEUE delay
line (bench/delayline.py) in the ``net`` namespace holds every packet *arriving* at ``net``
(iptables INPUT on its only interface) for ``--delay-ms``. Requests, ACKs and SYNs from either
downloader pass that one point, so swarmcache in ``gw`` (its own sockets) and a libtorrent
leecher in ``sub`` (forwarded by ``gw``) see the same round-trip time; the harness measures the
TCP connect time from both namespaces to check it. The data direction is not queued: holding
locally sent packets stalls TCP (TCP small queues count them as still in the host), measured
at 1-2 Mbit/s, while holding the reverse direction costs little CPU because ACKs are few.
``--rate`` adds a tbf qdisc on ``net``'s egress (the data direction), off by default.

Measured:

1. **Download over the WAN**, alternating per round (order flips each round): (a) swarmcache
   pins the torrent (POST /api/torrents) and the time until GET /api/torrents/<hash> says
   complete; (b) a libtorrent leecher in ``sub`` fetches it through plain forwarding (its own
   time to complete). swarmcache's copy is purged before each of its rounds. Ratio
   libtorrent_time / swarmcache_time (> 1: swarmcache faster). Bytes on the gateway uplink and
   CPU seconds of each downloader are recorded.
2. **Local seeding** to N = 5 and N = 20 simultaneous libtorrent leechers in ``sub`` that know
   only one peer (trackerless copy of the torrent + ``--peer``): swarmcache, then a libtorrent
   seed in ``gw`` (order flips per round). Aggregate MB/s (payload bytes / wall time until the
   last leecher is done) and the seeder's CPU seconds per GB served.
3. Peak RSS (VmHWM) and total CPU of the swarmcache process.

Numbers are medians with every run kept; nothing here passes or fails on speed. A failed run
still writes its JSON with ``error`` set (and what the daemon said) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from benchlib import (
    CLK_TCK,
    PROJECT,
    BenchError,
    Testbed,
    log,
    median,
    metric_deltas,
    parse_prometheus,
    proc_cpu_seconds,
    proc_status_kib,
    ratio,
    run_benchmark,
    tail,
)
from http_bench import _round

from swarm.bencode import bdecode, bencode
from tests.netns import testbed as netns_testbed
from tests.netns.bt import (
    LtNode,
    Opentracker,
    gw_uplink,
    make_payload,
    make_torrent,
    tbf,
    veth_bytes,
)

NET = "10.77.2.2"
SUB = "10.77.1.2"
BOX = "10.77.1.1"
ADMIN = "127.0.0.1:9480"
BOX_PEER = f"{BOX}:6881"
LT_SEED_PORTS = (6889, 6890)  # the libtorrent seed in gw, one per payload
OUTSIDE_SEED_PORTS = (6881, 6882, 6883, 6884, 6885, 6886, 6887, 6888)
DELAY_QUEUE = 7
MiB = 1 << 20
BT_METRICS = ("swarmcache_bt_",)
POLL = 0.1
SAMPLE = 1.0  # seconds between timeline samples
_TRACKER_KEYS = (b"announce", b"announce-list")


@dataclass(frozen=True, slots=True)
class Params:
    quick: bool
    profile: bool
    size_mib: int
    small_mib: int
    piece_kib: int
    seeds: int
    rounds: int
    local_rounds: int
    leechers: tuple[int, ...]
    delay_ms: float
    rate: str | None
    timeout_s: float
    stall_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Params:
        size = args.size_mib or (128 if args.quick else 1024)
        return cls(
            quick=args.quick,
            profile=args.profile,
            size_mib=size,
            small_mib=args.small_mib or (size if args.quick else 256),
            piece_kib=args.piece_kib,
            seeds=args.seeds,
            rounds=args.rounds or (1 if args.quick else 5),
            local_rounds=args.local_rounds or (1 if args.quick else 2),
            leechers=tuple(args.leechers),
            delay_ms=args.delay_ms,
            rate=args.rate,
            timeout_s=args.timeout,
            stall_s=args.stall,
        )

    def payload_for(self, n_leechers: int) -> int:
        """MiB each of ``n_leechers`` fetches: the small payload above 5 (disk and time)."""
        return self.size_mib if n_leechers <= 5 else self.small_mib


@dataclass
class Payload:
    mib: int
    file: Path
    torrent: Path  # announces to the outside opentracker
    local_torrent: Path  # same info dict, no trackers: leechers find only the peer they are told
    info_hash: str

    @property
    def size(self) -> int:
        return self.mib * MiB


def strip_trackers(torrent: Path, out: Path) -> None:
    """Write ``torrent`` without announce/announce-list; the info dict (and hash) is untouched."""
    meta = bdecode(torrent.read_bytes())
    if not isinstance(meta, dict):
        raise BenchError(f"{torrent} is not a bencoded dictionary")
    out.write_bytes(bencode({k: v for k, v in meta.items() if k not in _TRACKER_KEYS}))


def thread_cpu(pid: int) -> dict[str, float]:
    """utime+stime of the main thread (the event loop) and of all other threads of ``pid``.

    Read from /proc/PID/task/TID/stat: /proc/PID/stat (benchlib.proc_cpu_seconds) sums every
    thread of the process, which is what the totals use, but cannot tell the threads apart.
    """
    main = other = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended between listing and reading
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
    return {"main_thread": main, "other_threads": other}


def summarise_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks) -> where the event-loop thread spent its time.

    Only stacks of the main thread (they start in ``_run_module_as_main``) count, and waiting in
    ``select`` is left out, so the percentages are of the loop's *busy* samples; "self" is the
    innermost frame, "inclusive" any frame of the project's code on the stack.
    """
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    busy = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("_run_module_as_main") or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if "select (selectors.py" in frames[-1]:
            idle += n
            continue
        busy += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        # Inclusive per function (line numbers dropped), each function once per stack.
        for func in {f.rpartition(":")[0] + ")" for f in frames}:
            if func.split("(", 1)[-1].startswith(("swarm/", "cache/", "swarmcache/")):
                incl[func] = incl.get(func, 0) + n

    def top_of(counts: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [[round(100 * v / busy, 1), k] for k, v in ranked] if busy else []

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self_pct": top_of(own),
        "inclusive_pct": top_of(incl),
    }


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "median": _round(median(values)),
        "min": _round(min(values)) if values else None,
        "max": _round(max(values)) if values else None,
    }


class Bench:
    """One run: owns the scratch directory layout and the processes inside the testbed."""

    def __init__(self, bed: Testbed, scratch: Path, params: Params, python: str) -> None:
        self.bed = bed
        # tests/netns/bt.py's helpers speak to the testbed through this handle (same prefix):
        # ``bed`` owns the namespaces' lifetime, ``tb`` only runs things inside them.
        self.tb = netns_testbed.Testbed(bed.prefix)
        self.scratch = scratch
        self.params = params
        self.python = python
        self.work = scratch / "work"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_pid: int | None = None
        self.daemon_log = scratch / "swarmcache.log"
        self.delay_stats = scratch / "delayline.json"
        self.tracker: Opentracker | None = None
        self.nodes: list[LtNode] = []  # every LtNode started, stopped at the end
        self.outside_seeds: list[LtNode] = []
        self.delayline: subprocess.Popen[bytes] | None = None
        self.payloads: dict[int, Payload] = {}
        self.warnings: list[str] = []
        self.results: dict[str, Any] = {}

    def cleanup(self) -> None:
        self.stop_nodes()

    def failure_details(self) -> dict[str, Any]:
        return {"daemon_log_tail": tail(self.daemon_log, 60)}

    # ---------------------------------------------------------------- setup

    def make_payloads(self) -> None:
        self.work.mkdir(parents=True)
        trackers = [f"http://{NET}:6969/announce"]
        for seed, mib in enumerate(sorted({self.params.size_mib, self.params.small_mib})):
            t0 = time.monotonic()
            file = make_payload(self.scratch / "seed", f"payload-{mib}m.bin", mib * MiB, seed=seed)
            torrent = self.work / f"payload-{mib}m.torrent"
            _, info_hash = make_torrent(
                file, piece_size=self.params.piece_kib * 1024, trackers=trackers, out=torrent
            )
            local = self.work / f"payload-{mib}m-local.torrent"
            strip_trackers(torrent, local)
            self.payloads[mib] = Payload(mib, file, torrent, local, info_hash)
            log(f"payload {mib} MiB: {info_hash} ({time.monotonic() - t0:.1f}s)")

    def start_daemon(self) -> None:
        config = self.scratch / "bt.toml"
        config.write_text(f'[bittorrent]\nlisten = "{BOX_PEER}"\ntracker_listen = "{BOX}:6969"\n')
        argv = [
            self.python, "-m", "swarmcache", "run", "--no-intercept", "--config", str(config),
            "--cache-dir", str(self.scratch / "swarmcache-cache"),
            "--subscribers", "10.77.1.0/24", "--admin-listen", ADMIN,
            "--proxy-listen", f"{BOX}:3128", "--access-log", "",
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
        self.results["swarmcache_command"] = shlex.join(self.bed.cmd(self.bed.gw, argv))
        self.results["swarmcache_config"] = config.read_text()
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
            if self.admin("GET", "/healthz", check=False)[0] == 200:
                return
            time.sleep(0.2)
        raise BenchError(f"swarmcache /healthz did not answer within 30s:\n{tail(self.daemon_log)}")

    def start_outside(self) -> None:
        """opentracker and the outside seeds in net, each seed with every payload's data."""
        hashes = [p.info_hash for p in self.payloads.values()]
        self.tracker = Opentracker(self.tb, "net", NET, info_hashes=hashes).start()
        big = self.payloads[self.params.size_mib]
        ports = OUTSIDE_SEED_PORTS[: self.params.seeds]
        seeds = [self.lt_node("net", f"{NET}:{port}", big.torrent, big.file.parent, seed=True)
                 for port in ports]  # fmt: skip
        t0 = time.monotonic()
        for s in seeds:
            s.wait_seeding(timeout=300)
        self.outside_seeds = seeds
        log(f"{len(seeds)} outside seeds ready ({time.monotonic() - t0:.1f}s)")

    def lt_node(
        self,
        role: str,
        listen: str,
        torrent: Path,
        save: Path,
        *,
        seed: bool = False,
        peers: tuple[str, ...] = (),
        name: str | None = None,
    ) -> LtNode:
        node = LtNode(
            self.tb, role, listen, torrent, save, self.work, seed=seed, peers=peers,
            timeout=self.params.timeout_s, name=name,
        )  # fmt: skip
        self.nodes.append(node)
        return node.start()

    def start_wan(self) -> None:
        p = self.params
        iface = f"{self.bed.prefix}n"
        wan: dict[str, Any] = {"delay_ms": p.delay_ms, "rate": p.rate}
        if p.delay_ms > 0:
            rule = ["-A", "INPUT", "-i", iface, "-j", "NFQUEUE"]
            rule += ["--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
            argv = [self.python, str(Path(__file__).with_name("delayline.py"))]
            argv += ["--queue", str(DELAY_QUEUE), "--delay-ms", f"{p.delay_ms:g}"]
            argv += ["--stats-file", str(self.delay_stats)]
            self.delayline = self.bed.spawn(
                "delayline", self.bed.net, argv, self.scratch / "delayline.log"
            )
            time.sleep(0.5)  # bound before the rule exists, so nothing passes undelayed
            self.bed.run(self.bed.net, ["iptables", *rule], timeout=20)
            wan["delay_rule"] = f"ip netns exec {self.bed.net} iptables " + shlex.join(rule)
            wan["delay_where"] = (
                "net namespace, INPUT chain of its only interface: every packet towards the "
                "outside seeds and tracker, from gw (swarmcache) and from sub (forwarded)"
            )
        if p.rate:
            burst = "1mb"  # tbf needs >= rate x a few ms of burst at hundreds of Mbit/s
            tbf(self.tb, "net", iface, p.rate, burst=burst, latency="50ms")
            wan["tbf"] = f"tc qdisc replace dev {iface} root tbf rate {p.rate} burst {burst}"
        wan["connect_ms_from_sub"] = self.connect_ms(self.bed.sub)
        wan["connect_ms_from_gw"] = self.connect_ms(self.bed.gw)
        self.results["wan"] = wan
        log(f"WAN: {wan['connect_ms_from_sub']} ms (sub), {wan['connect_ms_from_gw']} ms (gw)")

    def stop_wan(self) -> None:
        iface = f"{self.bed.prefix}n"
        if self.params.delay_ms > 0:
            self.bed.run(self.bed.net, ["iptables", "-F", "INPUT"], timeout=20)
            self.results["wan"]["delayline_totals"] = self.delayline_stats()
        if self.params.rate:
            tbf(self.tb, "net", iface, None)

    def connect_ms(self, ns: str) -> list[float]:
        """TCP connect times to the tracker: the round-trip time each downloader sees."""
        out = []
        for _ in range(3):
            res = self.bed.run(
                ns,
                ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{time_connect}",
                 f"http://{NET}:6969/stats"],
                timeout=15, check=False,
            )  # fmt: skip
            try:
                out.append(round(float(res.stdout) * 1000, 1))
            except ValueError:
                out.append(-1.0)
        return out

    def delayline_stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.delay_stats.read_text())
        except (OSError, ValueError):
            return {}
        return data

    # ---------------------------------------------------------------- the daemon's API

    def admin(
        self, method: str, path: str, *, data_file: Path | None = None, check: bool = True
    ) -> tuple[int, str]:
        argv = ["curl", "-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]
        if data_file is not None:
            argv += ["--data-binary", f"@{data_file}"]
        res = self.bed.run(self.bed.gw, [*argv, f"http://{ADMIN}{path}"], timeout=20, check=False)
        body, _, code = res.stdout.rpartition("\n")
        status = int(code) if code.isdigit() else 0
        if check and not 200 <= status < 300:
            raise BenchError(
                f"{method} http://{ADMIN}{path}: HTTP {status} {body.strip()} {res.stderr.strip()}"
            )
        return status, body

    def torrent_status(self, info_hash: str) -> dict[str, Any] | None:
        status, body = self.admin("GET", f"/api/torrents/{info_hash}", check=False)
        if status == 404:
            return None
        if status != 200:
            raise BenchError(f"GET /api/torrents/{info_hash}: HTTP {status} {body}")
        data: dict[str, Any] = json.loads(body)
        return data

    def metrics(self) -> dict[str, float]:
        res = self.bed.run(
            self.bed.gw, ["curl", "-sS", "--max-time", "5", f"http://{ADMIN}/metrics"],
            timeout=15, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            self.warnings.append(f"GET /metrics failed: rc={res.returncode} {res.stderr.strip()}")
            return {}
        return parse_prometheus(res.stdout, "swarmcache_")

    def daemon_cpu(self) -> float:
        return proc_cpu_seconds(self.daemon_pid) or 0.0 if self.daemon_pid else 0.0

    def check_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise BenchError(
                f"swarmcache exited (rc={self.daemon.returncode}):\n{tail(self.daemon_log, 60)}"
            )

    def purge(self, info_hash: str) -> None:
        if self.torrent_status(info_hash) is None:
            return
        self.admin("DELETE", f"/api/torrents/{info_hash}")
        left = self.torrent_status(info_hash)
        if left is not None:
            raise BenchError(f"torrent {info_hash} still listed after DELETE: {left}")

    # ---------------------------------------------------------------- profiling (opt-in)

    def start_profile(self, name: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        """py-spy sampling the daemon (from the root namespace, by PID) until stop_profile."""
        if not self.params.profile or self.daemon_pid is None:
            return None
        if shutil.which("py-spy") is None:
            raise BenchError("--profile needs py-spy on PATH (pip install py-spy)")
        out = self.scratch / f"profile-{name}.txt"
        argv = ["py-spy", "record", "-p", str(self.daemon_pid), "-r", "100", "--nonblocking"]
        argv += ["--format", "raw", "-o", str(out)]
        log_file = (self.scratch / "py-spy.log").open("ab")
        with log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        time.sleep(0.3)  # attached before the measured work starts
        return proc, out

    def stop_profile(self, profiler: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any]:
        if profiler is None:
            return {}
        proc, out = profiler
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        try:
            text = out.read_text()
        except OSError as exc:
            self.warnings.append(f"py-spy wrote no profile {out.name}: {exc}")
            return {}
        return {"profile_event_loop_thread": summarise_profile(text)}

    # ---------------------------------------------------------------- phase 1

    def uplink_rx(self) -> int:
        return veth_bytes(self.tb, "gw", gw_uplink(self.tb))[0]

    def download_swarmcache(self, r: int, payload: Payload) -> dict[str, Any]:
        p = self.params
        self.purge(payload.info_hash)
        before_m, rx0 = self.metrics(), self.uplink_rx()
        cpu0, threads0, sys0 = self.daemon_cpu(), thread_cpu(self.daemon_pid or 0), system_cpu()
        dl0 = self.delayline_stats()
        profiler = self.start_profile(f"download-r{r}")
        t0 = time.monotonic()
        self.admin("POST", "/api/torrents", data_file=payload.torrent)
        timeline: list[list[float]] = []
        last_sample = last_change = t0
        last_have = -1
        st: dict[str, Any] | None = None
        while True:
            self.check_daemon()
            st = self.torrent_status(payload.info_hash)
            now = time.monotonic()
            if st is not None and st.get("complete"):
                break
            have = int(st.get("have", 0)) if st else 0
            if have != last_have:
                last_have, last_change = have, now
            if now - last_sample >= SAMPLE and st is not None:
                last_sample = now
                timeline.append([
                    round(now - t0, 1), round(float(st.get("progress", 0.0)), 4),
                    round(float(st.get("download_rate", 0.0)) / 1e6, 2),
                    int(st.get("outside_peers", 0)), round(self.daemon_cpu() - cpu0, 2),
                ])  # fmt: skip
            if now - last_change > p.stall_s or now - t0 > p.timeout_s:
                what = "stalled" if now - last_change > p.stall_s else "timed out"
                raise BenchError(
                    f"swarmcache download {what} in round {r} after {now - t0:.0f}s "
                    f"(no new piece for {now - last_change:.0f}s).\nGET /api/torrents/"
                    f"{payload.info_hash}: {json.dumps(st)}\nmetrics: "
                    f"{metric_deltas(before_m, self.metrics(), BT_METRICS)}\n"
                    f"timeline [t, progress, MB/s, peers, cpu_s]: {timeline[-10:]}\n"
                    f"daemon log tail:\n{tail(self.daemon_log, 40)}"
                )
            time.sleep(POLL)
        seconds = time.monotonic() - t0
        profile = self.stop_profile(profiler)
        cpu, threads1 = self.daemon_cpu() - cpu0, thread_cpu(self.daemon_pid or 0)
        busy = busy_fraction(sys0, system_cpu())
        rx = self.uplink_rx() - rx0
        deltas = metric_deltas(before_m, self.metrics(), BT_METRICS)
        return {
            "round": r,
            "seconds": round(seconds, 2),
            "mb_s": round(payload.size / seconds / 1e6, 1),
            "uplink_rx_bytes": rx,
            "uplink_overhead": round(rx / payload.size - 1, 4),
            "cpu_s": round(cpu, 2),
            "cpu_threads_s": {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()},
            "machine_busy_fraction": busy,
            "delayline": self._delay_delta(dl0),
            "final_status": st,
            "metrics_delta": deltas,
            "timeline": timeline,
            **profile,
        }

    def download_libtorrent(self, r: int, payload: Payload) -> dict[str, Any]:
        dest = self.scratch / "dl" / f"lt-r{r}"
        dest.mkdir(parents=True)
        rx0, sys0, dl0 = self.uplink_rx(), system_cpu(), self.delayline_stats()
        t0 = time.monotonic()
        node = self.lt_node("sub", f"{SUB}:6881", payload.torrent, dest, name=f"lt-leech-r{r}")
        assert node.proc is not None
        timeline: list[list[float]] = []
        cpu = 0.0
        last_sample = t0
        while node.proc.poll() is None:
            cpu = proc_cpu_seconds(node.proc.pid) or cpu  # last sample before it exits
            now = time.monotonic()
            if now - last_sample >= SAMPLE:
                last_sample = now
                st = node.status()
                timeline.append([
                    round(now - t0, 1), round(float(st.get("progress", 0.0)), 4),
                    round(float(st.get("download_rate", 0.0)) / 1e6, 2), int(st.get("peers", 0)),
                    round(cpu, 2),
                ])  # fmt: skip
            time.sleep(POLL)
        wall = time.monotonic() - t0
        busy = busy_fraction(sys0, system_cpu())
        st = node.wait_complete(timeout=5)
        rx = self.uplink_rx() - rx0
        seconds = float(st["elapsed"])
        shutil.rmtree(dest, ignore_errors=True)
        return {
            "round": r,
            "seconds": round(seconds, 2),
            "wall_s_incl_process_start": round(wall, 2),
            "mb_s": round(payload.size / seconds / 1e6, 1),
            "uplink_rx_bytes": rx,
            "uplink_overhead": round(rx / payload.size - 1, 4),
            "cpu_s_approx": round(cpu, 2),
            "machine_busy_fraction": busy,
            "delayline": self._delay_delta(dl0),
            "peers_at_end": st.get("peer_addresses"),
            "timeline": timeline,
        }

    def _delay_delta(self, before: dict[str, Any]) -> dict[str, Any]:
        after = self.delayline_stats()
        if not after or not before:
            return {}
        return {
            "packets": after["packets"] - before["packets"],
            "cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
            "max_held_so_far": after["max_held"],
        }

    def phase_download(self) -> None:
        p = self.params
        payload = self.payloads[p.size_mib]
        runs: dict[str, list[dict[str, Any]]] = {"swarmcache": [], "libtorrent": []}
        self.results["download"] = {
            "method": (
                f"{p.size_mib} MiB single-file v1 torrent, {p.piece_kib} KiB pieces, "
                f"{p.seeds} libtorrent seeds in net + opentracker; swarmcache: POST "
                "/api/torrents, time until GET /api/torrents/<hash> says complete (polled every "
                f"{POLL}s); libtorrent: lt_node.py leecher in sub (forwarded by gw), its own "
                "'elapsed' at completion (session start to complete; excludes interpreter start)"
            ),
            "payload_mib": p.size_mib,
            "piece_kib": p.piece_kib,
            "info_hash": payload.info_hash,
            "runs": runs,
        }
        for r in range(p.rounds):
            order = ["swarmcache", "libtorrent"] if r % 2 == 0 else ["libtorrent", "swarmcache"]
            for target in order:
                if target == "swarmcache":
                    run = self.download_swarmcache(r, payload)
                else:
                    run = self.download_libtorrent(r, payload)
                runs[target].append(run)
                log(
                    f"download round {r} {target}: {run['seconds']:.1f}s ({run['mb_s']} MB/s, "
                    f"uplink {run['uplink_rx_bytes'] / MiB:.0f} MiB)"
                )
        sw = [x["seconds"] for x in runs["swarmcache"]]
        lt = [x["seconds"] for x in runs["libtorrent"]]
        self.results["download"].update(
            {
                "swarmcache_seconds": spread(sw),
                "libtorrent_seconds": spread(lt),
                "swarmcache_mb_s_median": _round(
                    median([x["mb_s"] for x in runs["swarmcache"]]), 1
                ),
                "libtorrent_mb_s_median": _round(
                    median([x["mb_s"] for x in runs["libtorrent"]]), 1
                ),
                "ratio_libtorrent_time_over_swarmcache_time": _round(ratio(median(lt), median(sw))),
            }
        )

    # ---------------------------------------------------------------- phase 2

    def ensure_in_box(self, payload: Payload) -> None:
        """The payload complete in swarmcache (pinned from one extra outside seed if needed)."""
        st = self.torrent_status(payload.info_hash)
        if st is not None and st.get("complete"):
            return
        seed = self.lt_node("net", f"{NET}:6899", payload.torrent, payload.file.parent, seed=True)
        seed.wait_seeding(timeout=120)
        t0 = time.monotonic()
        self.admin("POST", "/api/torrents", data_file=payload.torrent)
        while time.monotonic() - t0 < self.params.timeout_s:
            self.check_daemon()
            st = self.torrent_status(payload.info_hash)
            if st is not None and st.get("complete"):
                seed.stop()
                log(f"pinned {payload.mib} MiB in {time.monotonic() - t0:.1f}s (no WAN delay)")
                return
            time.sleep(POLL)
        raise BenchError(
            f"pinning {payload.mib} MiB for the seeding phase did not complete: {st}\n"
            f"{tail(self.daemon_log, 40)}"
        )

    def seed_round(
        self, target: str, n: int, payload: Payload, r: int, lt_seed: LtNode | None
    ) -> dict[str, Any]:
        if lt_seed is None:
            peer, server_pid = BOX_PEER, self.daemon_pid
        else:
            assert lt_seed.proc is not None
            peer, server_pid = lt_seed.listen, lt_seed.proc.pid
        assert server_pid is not None
        base = self.scratch / "dl" / f"{target}-n{n}-r{r}"
        before_m, rx0 = self.metrics(), self.uplink_rx()
        cpu0, sys0 = proc_cpu_seconds(server_pid) or 0.0, system_cpu()
        profiler = self.start_profile(f"seed-n{n}-r{r}") if lt_seed is None else None
        t0 = time.monotonic()
        leechers = [
            self.lt_node(
                "sub", f"{SUB}:{7000 + i}", payload.local_torrent, base / str(i),
                peers=(peer,), name=f"{target}-n{n}-r{r}-{i}",
            )
            for i in range(n)
        ]  # fmt: skip
        done: dict[int, float] = {}
        first_byte: float | None = None
        last_check = 0.0
        while len(done) < n:
            now = time.monotonic()
            for i, node in enumerate(leechers):
                assert node.proc is not None
                if i not in done and node.proc.poll() is not None:
                    done[i] = now - t0
            if first_byte is None and now - last_check >= 0.2:
                last_check = now
                if any(int(node.status().get("total_done", 0) or 0) > 0 for node in leechers):
                    first_byte = now - t0
            if now - t0 > self.params.timeout_s + 30:
                raise BenchError(f"{target}: {n - len(done)} of {n} leechers still running")
            time.sleep(0.05)
        wall = max(done.values())
        profile = self.stop_profile(profiler)
        cpu = (proc_cpu_seconds(server_pid) or 0.0) - cpu0
        busy = busy_fraction(sys0, system_cpu())
        deltas = metric_deltas(before_m, self.metrics(), BT_METRICS)
        rx = self.uplink_rx() - rx0
        failed, served = [], 0
        for node in leechers:
            try:
                st = node.wait_complete(timeout=5)
                served += int(st["total_payload_download"])
            except AssertionError as exc:
                failed.append(str(exc)[-1500:])
        shutil.rmtree(base, ignore_errors=True)
        if failed:
            log_tail = tail(self.daemon_log, 30) if target == "swarmcache" else ""
            raise BenchError(
                f"{target}: {len(failed)} of {n} local leechers failed:\n{failed[0]}\n{log_tail}"
            )
        total = n * payload.size
        gb = total / 1e9
        run: dict[str, Any] = {
            "round": r,
            "wall_s": round(wall, 2),
            "aggregate_mb_s": round(total / wall / 1e6, 1),
            "first_byte_s": None if first_byte is None else round(first_byte, 2),
            "aggregate_mb_s_after_first_byte": round(total / (wall - first_byte) / 1e6, 1)
            if first_byte is not None and wall > first_byte
            else None,
            "leecher_done_s": [round(done[i], 2) for i in sorted(done)],
            "payload_bytes_received": served,
            "server_cpu_s": round(cpu, 2),
            "server_cpu_s_per_gb": round(cpu / gb, 3),
            "machine_busy_fraction": busy,
            "uplink_rx_bytes": rx,
        }
        if target == "swarmcache":
            run["metrics_delta"] = deltas
            run.update(profile)
        return run

    def phase_seeding(self) -> None:
        p = self.params
        self.results["local_seeding"] = {
            "method": (
                "N libtorrent leechers (lt_node.py) in sub started together, each told only one "
                "peer (trackerless copy of the torrent + --peer): swarmcache's seeder at "
                f"{BOX_PEER} or a libtorrent seed (lt_node.py --seed, default settings) at "
                f"{BOX}:{LT_SEED_PORTS[0]}/{LT_SEED_PORTS[1]} in gw. aggregate = N x payload / "
                "wall time from starting the leecher processes until the last one exited. CPU: "
                "utime+stime of the seeding process over that window."
            ),
        }
        lt_seeds: dict[int, LtNode] = {}
        for k, n in enumerate(p.leechers):
            payload = self.payloads[p.payload_for(n)]
            self.ensure_in_box(payload)
            if payload.mib not in lt_seeds:
                port = LT_SEED_PORTS[len(lt_seeds)]
                node = self.lt_node(
                    "gw", f"{BOX}:{port}", payload.local_torrent, payload.file.parent, seed=True,
                    name=f"lt-seed-gw-{payload.mib}m",
                )  # fmt: skip
                node.wait_seeding(timeout=300, announced=False)
                lt_seeds[payload.mib] = node
            runs: dict[str, list[dict[str, Any]]] = {"swarmcache": [], "libtorrent": []}
            for r in range(p.local_rounds):
                order = ["swarmcache", "libtorrent"]
                if (r + k) % 2:
                    order.reverse()
                for target in order:
                    seed = lt_seeds[payload.mib] if target == "libtorrent" else None
                    run = self.seed_round(target, n, payload, r, seed)
                    runs[target].append(run)
                    log(
                        f"seeding N={n} round {r} {target}: {run['aggregate_mb_s']} MB/s, "
                        f"{run['server_cpu_s_per_gb']} CPU-s/GB"
                    )
            summary: dict[str, Any] = {"leechers": n, "payload_mib": payload.mib}
            for target, target_runs in runs.items():
                summary[target] = {
                    "aggregate_mb_s": spread([x["aggregate_mb_s"] for x in target_runs]),
                    "cpu_s_per_gb": spread([x["server_cpu_s_per_gb"] for x in target_runs]),
                    "runs": target_runs,
                }
            summary["ratio_rate_swarmcache_over_libtorrent"] = _round(
                ratio(
                    summary["swarmcache"]["aggregate_mb_s"]["median"],
                    summary["libtorrent"]["aggregate_mb_s"]["median"],
                )
            )
            summary["ratio_cpu_per_gb_swarmcache_over_libtorrent"] = _round(
                ratio(
                    summary["swarmcache"]["cpu_s_per_gb"]["median"],
                    summary["libtorrent"]["cpu_s_per_gb"]["median"],
                )
            )
            self.results["local_seeding"][f"n{n}"] = summary
        for node in lt_seeds.values():
            node.stop()

    # ---------------------------------------------------------------- run

    def process_facts(self) -> None:
        if self.daemon_pid is None:
            return
        pid = self.daemon_pid
        self.results["swarmcache_process"] = {
            "pid": pid,
            "vm_hwm_kib": proc_status_kib(pid, "VmHWM"),
            "vm_rss_kib": proc_status_kib(pid, "VmRSS"),
            "cpu_s_total": proc_cpu_seconds(pid),
            "cpu_threads_s_total": thread_cpu(pid),
            "final_metrics": {k: v for k, v in self.metrics().items() if k.startswith(BT_METRICS)},
        }

    def stop_nodes(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.tracker is not None:
            self.tracker.stop()

    def run(self) -> None:
        p = self.params
        t0 = time.monotonic()
        log(f"making payloads ({p.size_mib}/{p.small_mib} MiB) in {self.scratch}")
        self.make_payloads()
        log(f"testbed up: {self.bed.prefix}")
        self.bed.up()
        self.start_daemon()
        log(f"swarmcache up, pid {self.daemon_pid}")
        self.start_outside()
        self.start_wan()
        self.results["setup_s"] = round(time.monotonic() - t0, 1)
        self.phase_download()
        self.stop_wan()
        for seed in self.outside_seeds:
            seed.stop()
        self.phase_seeding()
        self.process_facts()
        self.check_daemon()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "bt.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 128 MiB, 1 round")
    ap.add_argument("--size-mib", type=int, help="payload for the download and N<=5 (1024)")
    ap.add_argument("--small-mib", type=int, help="payload for N>5 local leechers (256)")
    ap.add_argument("--piece-kib", type=int, default=1024, help="piece size (1024)")
    ap.add_argument("--seeds", type=int, default=4, choices=range(1, 9), help="outside seeds (4)")
    ap.add_argument("--rounds", type=int, help="alternating download rounds (5; quick 1)")
    ap.add_argument(
        "--local-rounds", type=int, help="alternating seeding rounds per N (2; quick 1)"
    )
    ap.add_argument("--leechers", type=int, nargs="+", default=[5, 20], help="N (5 20)")
    ap.add_argument("--delay-ms", type=float, default=40.0, help="added RTT, upstream way (40)")
    ap.add_argument("--rate", help="tbf rate on the outside link, e.g. 400mbit (off)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per download (300 s)")
    ap.add_argument("--stall", type=float, default=60.0, help="abort after S s with no piece")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample swarmcache with py-spy during its runs (perturbs timing; diagnosis only)",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter for the daemon")
    ap.add_argument("--keep-scratch", action="store_true", help="keep files and logs")
    ap.add_argument("--scratch-dir", type=Path, help="parent of the scratch directory")
    return ap.parse_args(argv)


def print_summary(doc: dict[str, Any]) -> None:
    res = doc.get("results", {})
    if "download" in res and "ratio_libtorrent_time_over_swarmcache_time" in res["download"]:
        d = res["download"]
        print(
            f"download {d['payload_mib']} MiB: swarmcache {d['swarmcache_seconds']['median']} s, "
            f"libtorrent {d['libtorrent_seconds']['median']} s, ratio lt/sc "
            f"{d['ratio_libtorrent_time_over_swarmcache_time']}"
        )
    for key, s in res.get("local_seeding", {}).items():
        if not key.startswith("n"):
            continue
        print(
            f"seeding {key}: swarmcache {s['swarmcache']['aggregate_mb_s']['median']} MB/s "
            f"{s['swarmcache']['cpu_s_per_gb']['median']} CPU-s/GB, libtorrent "
            f"{s['libtorrent']['aggregate_mb_s']['median']} MB/s "
            f"{s['libtorrent']['cpu_s_per_gb']['median']} CPU-s/GB"
        )
    if "swarmcache_process" in res:
        print(f"swarmcache VmHWM: {res['swarmcache_process']['vm_hwm_kib']} KiB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = Params.from_args(args)
    return run_benchmark(
        name="bt_bench",
        params=params,
        out=args.out,
        scratch_dir=args.scratch_dir,
        keep_scratch=args.keep_scratch,
        prefix_stem="bt",
        make=lambda bed, scratch: Bench(bed, scratch, params, args.python),
        summary=print_summary,
        # tests/netns/bt.py's helpers report failures as AssertionError / CalledProcessError.
        failures=(BenchError, AssertionError, subprocess.CalledProcessError),
    )


if __name__ == "__main__":
    sys.exit(main())
