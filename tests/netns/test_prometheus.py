"""Every Grafana panel has data: a real Prometheus scrapes the running gateway while traffic
runs, and every PromQL expression of every dashboard in ``grafana/dashboards`` is evaluated
through Prometheus's HTTP API.

Topology: origin, opentracker and a libtorrent seed in ``net``; swarmcache in ``gw`` with
interception and BitTorrent steering on; Prometheus (the Debian package's binary, run by the
test with a 1 s scrape interval) in ``gw`` scraping the admin listener on loopback; curl and
libtorrent clients in ``sub``. The traffic: HTTP misses, hits and an uncacheable response
through TPROXY; a torrent the first client makes the box admit and fetch, and a second client
downloads from the box; the same body under two URLs (fingerprints); then more objects than
the quota holds (evictions); two listeners of a live stream. Expressions are evaluated at a
time after the traffic, with ``$__rate_interval`` and ``$__range`` set to cover all of it, so
a panel is empty only when
its metric is missing or never moved: the assertion is that each returns at least one series
and no series is NaN (a ratio whose denominator never moved).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.bt import LtNode, Opentracker, make_payload, make_torrent, needs_bt_tools, tbf
from tests.netns.gateway import Gateway, random_bytes
from tests.netns.testbed import REPO, Testbed

pytestmark = pytest.mark.netns

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
NET = Testbed.NET_IP
SUB = Testbed.SUB_IP
BOX = "10.77.1.1"
PROM = "127.0.0.1:19090"
MiB = 1 << 20
QUOTA = 16 * MiB
LIVE_PORT = 8080

_bt_tools = needs_bt_tools("opentracker", "tc")


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every query target of every panel."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


_GRAFANA_VARS = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")


def substitute(expr: str, window: str) -> str:
    """Grafana's built-in range variables -> a fixed PromQL duration."""
    return _GRAFANA_VARS.sub(window, expr)


def test_substitute_replaces_grafana_variables() -> None:
    assert (
        substitute("rate(x[$__rate_interval]) + increase(y[${__range}])", "90s")
        == "rate(x[90s]) + increase(y[90s])"
    )


class Prometheus:
    """The packaged binary, run in a namespace with its own config and storage."""

    def __init__(self, testbed: Testbed, role: str, tmp: Path, target: str) -> None:
        self.tb = testbed
        self.role = role
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: swarmcache\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log, "wb") as log:
            self.proc = self.tb.popen(
                self.role,
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={PROM}",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        Gateway.wait_until(self._ready, f"prometheus not ready: {self._tail()}", timeout=60)
        return self

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self._tail()}")
        res = self.tb.run(
            self.role, "curl", "-sf", "-o", "/dev/null", f"http://{PROM}/-/ready", check=False
        )
        return res.returncode == 0

    def api(self, path: str, **params: str) -> Any:
        url = f"http://{PROM}{path}?{urllib.parse.urlencode(params)}"
        res = self.tb.run(self.role, "curl", "-s", "--max-time", "10", url, check=False)
        try:
            body = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"prometheus answered {res.stdout!r} to {url}") from None
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {url}: {body}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr, time=f"{at:.3f}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def target_up(self) -> bool:
        targets = self.api("/api/v1/targets")["activeTargets"]
        return any(t["health"] == "up" for t in targets)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    if shutil.which("prometheus") is None:
        reason = "needs prometheus (deploy/install-deps.sh installs Debian's package)"
        print(reason, file=sys.stderr)
        pytest.skip(reason=reason)
    gw = Gateway(testbed, tmp_path)
    config = tmp_path / "box.toml"
    config.write_text(
        "[bittorrent]\n"
        f'listen = "{BOX}:6881"\n'
        "steering = true\n"
        "admit_min_local_peers = 1\n"
        "tracker_ports = [6969]\n"
        "commit_interval = 0.5\n"
        # Small enough that the traffic below passes the high watermark: evictions happen.
        "[cache]\n"
        f"quota_bytes = {QUOTA}\n"
        "[live]\n"
        f'url_patterns = ["http://{NET}:{LIVE_PORT}/live/*"]\n'
        "linger = 0.5\n"
    )
    gw.start_origin()
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def _http_traffic(gw: Gateway) -> None:
    for i in range(3):
        body = random_bytes((i + 1) * 300_000)
        url = gw.put(f"obj{i}.bin", body, {"Cache-Control": "max-age=600"})
        assert gw.curl(url).x_cache == "MISS"
        for _ in range(2):
            hit = gw.curl(url)
            assert hit.x_cache == "HIT" and hit.body == body
    private = gw.put("private.bin", random_bytes(50_000), {"Cache-Control": "private"})
    assert gw.curl(private).status == 200


def _bt_traffic(testbed: Testbed, gw: Gateway, tmp: Path) -> None:
    """Client 1 makes the box admit and fetch the torrent; client 2 then gets it from the box."""
    seed_dir, work = tmp / "seed", tmp / "work"
    seed_dir.mkdir()
    work.mkdir()
    payload = make_payload(seed_dir, "prom.bin", 8 * MiB, seed=31)
    tracker = Opentracker(testbed, "net", NET)
    torrent = work / "prom.torrent"
    _, info_hash = make_torrent(payload, trackers=[tracker.http_url], out=torrent)
    tracker.allow(info_hash)
    seed = LtNode(
        testbed, "net", f"{NET}:6881", torrent, seed_dir, work, seed=True, enc="enabled", utp=True
    )
    with tracker, seed:
        seed.wait_seeding()
        dirs = [tmp / "c1", tmp / "c2"]
        for i, d in enumerate(dirs):
            d.mkdir()
            with LtNode(testbed, "sub", f"{SUB}:{6901 + i}", torrent, d, work, utp=True) as c:
                c.wait_complete(timeout=90)
            if i == 0:
                Gateway.wait_until(
                    lambda: (
                        gw.metrics().get(
                            f'swarmcache_bt_torrent_progress_ratio{{info_hash="{info_hash}",'
                            'name="prom.bin"}',
                            0.0,
                        )
                        == 1.0
                    ),
                    "the box did not admit and fetch the torrent",
                    timeout=60,
                )
                # The WAN is slower than the LAN: client 2 takes most pieces from the box.
                tbf(testbed, "net", f"{testbed.prefix}n", "16mbit")
    assert gw.metrics().get("swarmcache_bt_local_served_bytes_total", 0.0) > 0


def _fill_past_quota(gw: Gateway) -> None:
    """Same 2 MiB body under two URLs (a fingerprint match), then more objects than the quota
    holds beside the torrent: the evictor must run."""
    twin = random_bytes(2 * MiB)
    for name in ("twin-a.bin", "twin-b.bin"):
        url = gw.put(name, twin, {"Cache-Control": "max-age=600"})
        assert gw.curl(url).body == twin
    for i in range(5):
        body = random_bytes(2 * MiB)
        url = gw.put(f"fill{i}.bin", body, {"Cache-Control": "max-age=600"})
        assert gw.curl(url).body == body
    Gateway.wait_until(
        lambda: gw.metrics().get("swarmcache_eviction_runs_total", 0.0) >= 1,
        f"no eviction run: {gw.metrics()}",
        timeout=30,
    )


def _live_traffic(gw: Gateway, tmp: Path) -> None:
    """Two listeners of one live stream (through the explicit proxy) for a few seconds."""
    gw.tb.popen(
        "net", sys.executable, str(REPO / "tests" / "netns" / "live_origin.py"),
        "--bind", NET, "--port", str(LIVE_PORT), "--log", str(tmp / "live-origin.log"),
    )  # fmt: skip
    url = f"http://{NET}:{LIVE_PORT}/live/radio"
    Gateway.wait_until(
        lambda: gw.tb.run("net", "curl", "-s", "-o", "/dev/null", "--max-time", "0.5", url,
                          check=False).returncode == 28,
        "live origin did not start",
    )  # fmt: skip
    listeners = [
        gw.tb.popen("sub", "curl", "-s", "-o", "/dev/null", "--max-time", "4", "-x",
                    "http://10.77.1.1:3128", url)
        for _ in range(2)
    ]  # fmt: skip
    for proc in listeners:
        proc.wait(timeout=15)
    assert gw.metrics().get("swarmcache_live_served_bytes_total", 0.0) > 0


def test_every_dashboard_query_returns_data(
    testbed: Testbed, gateway: Gateway, tmp_path: Path
) -> None:
    expressions = dashboard_expressions()
    assert expressions, "no dashboard queries found"
    prom = Prometheus(testbed, "gw", tmp_path, "127.0.0.1:9480").start()
    try:
        Gateway.wait_until(prom.target_up, "prometheus never scraped the daemon", timeout=30)
        started = time.time()
        _http_traffic(gateway)
        _bt_traffic(testbed, gateway, tmp_path)
        _fill_past_quota(gateway)
        _live_traffic(gateway, tmp_path)
        # Two more scrapes after the traffic, so every counter's last value is stored.
        time.sleep(3)
        at = time.time()
        window = f"{math.ceil(at - started) + 10}s"
        empty: list[str] = []
        nan: list[str] = []
        for name, title, expr in expressions:
            result = prom.query(substitute(expr, window), at)
            where = f"{name} / {title!r}: {expr}"
            if not result:
                empty.append(where)
            elif any(math.isnan(float(r["value"][1])) for r in result):
                nan.append(where)
        assert not empty, "queries without data:\n" + "\n".join(empty)
        assert not nan, "queries that are only NaN:\n" + "\n".join(nan)
    finally:
        prom.stop()
    # The same run's access log (HTTP and BitTorrent lines) replays through the size advisor.
    gateway.stop_daemon()  # flushes the log
    advice = subprocess.run(
        [sys.executable, "-m", "swarmcache", "advise", "--log", str(gateway.access_log), "--json"],
        capture_output=True, text=True, check=False, timeout=120, cwd=str(REPO),
    )  # fmt: skip
    assert advice.returncode == 0, advice.stderr
    report = json.loads(advice.stdout)
    assert report["lines"]["malformed"] == 0, report["lines"]
    assert report["lines"]["bittorrent"] >= 1 and report["lines"]["http"] >= 10
    assert report["unlimited"]["byte_hit_ratio"] > 0
