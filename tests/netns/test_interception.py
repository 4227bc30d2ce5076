"""The interception path on a real kernel: rules + SYN queue + TPROXY listener + watchdog.

Each test gets its own three namespaces (``testbed`` fixture). The origin is
``python -m http.server`` in net (its access log names the client: 10.77.1.2 when the flow was
forwarded directly, 10.77.2.1 when it came through the relay on gw); the relay
(``tproxy_relay.py``) uses the interceptor modules exactly as the daemon does and logs every
connection with its original destination. Measured times are printed as ``MEASURE ...`` lines
(``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .testbed import REPO, Testbed

pytestmark = pytest.mark.netns
pytest.importorskip("netfilterqueue")

RELAY = Path(__file__).with_name("tproxy_relay.py")
URL = f"http://{Testbed.NET_IP}/blob.bin"
LISTEN_PORT = 3129
QUEUE_NUM = 7
SPEC_ARGS = f"""
import ipaddress, sys
sys.path.insert(0, {str(REPO)!r})
from interceptor import rules
spec = rules.InterceptSpec(
    subscribers=(ipaddress.IPv4Network({Testbed.SUBSCRIBERS!r}),),
    ports=(80,), listen_port={LISTEN_PORT}, queue_num={QUEUE_NUM})
"""

# Connects (waiting as long as it takes), reports it, waits for a "go" file, then sends a request
# on the connection it already has and reports how many bytes came back (or the error).
SLOW_CLIENT = """
import os, socket, sys, time
out, go = sys.argv[1], sys.argv[2]
s = socket.create_connection(("10.77.2.2", 80), timeout=15)
open(out, "w").write("connected %s:%d\\n" % s.getsockname())
while not os.path.exists(go):
    time.sleep(0.05)
try:
    s.sendall(b"GET /blob.bin HTTP/1.0\\r\\n\\r\\n")
    n = 0
    while d := s.recv(65536):
        n += len(d)
    res = "got %d" % n
except OSError as e:
    res = "error %r" % e
open(out, "a").write(res + "\\n")
"""


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``pred`` until true; return the time it took. Fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@dataclass
class Scene:
    tb: Testbed
    tmp: Path
    blob: bytes = field(default_factory=lambda: os.urandom(256 * 1024 + 17))
    relay: subprocess.Popen[Any] | None = None
    relay_info: dict[str, Any] = field(default_factory=dict)

    @property
    def relay_log(self) -> Path:
        return self.tmp / "relay.log"

    @property
    def origin_log(self) -> Path:
        return self.tmp / "origin.log"

    # -- processes -------------------------------------------------------------------------
    def start_origin(self, ns: str = "net", ip: str = Testbed.NET_IP, port: int = 80) -> None:
        www = self.tmp / "www"
        www.mkdir(exist_ok=True)
        (www / "blob.bin").write_bytes(self.blob)
        main = (ns, port) == ("net", 80)
        log = (self.origin_log if main else self.tmp / f"origin-{ns}-{port}.log").open("ab")
        self.tb.popen(
            ns,
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            ip,
            "--directory",
            str(www),
            stderr=log,
        )
        probe = ["curl", "-s", "-o", "/dev/null", f"http://{ip}:{port}/"]
        wait_for(
            lambda: self.tb.run(ns, *probe, check=False).returncode == 0, 5.0, f"origin {ip}:{port}"
        )

    def start_relay(self, *, watchdog: bool) -> dict[str, Any]:
        ready = self.tmp / "relay.ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable,
            str(RELAY),
            "--subscriber",
            Testbed.SUBSCRIBERS,
            "--port",
            "80",
            "--listen-port",
            str(LISTEN_PORT),
            "--queue-num",
            str(QUEUE_NUM),
            "--log",
            str(self.relay_log),
            "--ready",
            str(ready),
        ]
        if watchdog:
            argv.append("--watchdog")
        out = (self.tmp / "relay.out").open("ab")
        self.relay = self.tb.popen("gw", *argv, stdout=out, stderr=out)
        relay = self.relay

        def is_ready() -> bool:
            if relay.poll() is not None:
                pytest.fail(f"relay exited with {relay.returncode}:\n{self.relay_output()}")
            return ready.exists() and ready.stat().st_size > 0

        wait_for(is_ready, 10.0, "relay ready")
        self.relay_info = json.loads(ready.read_text())
        assert self.relay_info["pid"] == relay.pid  # `ip netns exec` execs: same pid
        return self.relay_info

    def relay_output(self) -> str:
        p = self.tmp / "relay.out"
        return p.read_text(errors="replace") if p.exists() else ""

    # -- observations -----------------------------------------------------------------------
    def curl(self, ns: str = "sub", url: str = URL, max_time: float = 2.0) -> bytes | None:
        """Body of ``url`` fetched from ``ns``, or None if curl failed."""
        out = self.tmp / f"curl-{time.monotonic_ns()}.out"
        res = self.tb.run(
            ns,
            "curl",
            "-sS",
            "--max-time",
            str(max_time),
            "-o",
            str(out),
            url,
            check=False,
            timeout=max_time + 5,
        )
        if res.returncode != 0:
            return None
        body = out.read_bytes()
        out.unlink()
        return body

    def fetch_until_ok(self, deadline: float, max_time: float = 1.0) -> float:
        """Retry the fetch from sub until it returns the blob; return the seconds it took."""
        t0 = time.monotonic()
        while True:
            body = self.curl(max_time=max_time)
            if body is not None:
                assert body == self.blob
                return time.monotonic() - t0
            if time.monotonic() - t0 > deadline:
                pytest.fail(f"no successful fetch within {deadline} s\n{self.relay_output()}")

    def relay_lines(self) -> list[str]:
        if not self.relay_log.exists():
            return []
        return self.relay_log.read_text().splitlines()

    def origin_clients(self) -> list[str]:
        """Client IP of every GET the origin served, in order."""
        text = self.origin_log.read_text() if self.origin_log.exists() else ""
        return re.findall(r'^(\S+) - - \[.*?\] "GET ', text, re.MULTILINE)

    def mangle(self, counters: bool = False) -> str:
        argv = ["iptables-save", "-t", "mangle"] + (["-c"] if counters else [])
        return self.tb.run("gw", *argv).stdout

    def queue_rules(self) -> list[str]:
        return [ln for ln in self.mangle().splitlines() if "-j NFQUEUE" in ln]

    def ip_rules(self) -> str:
        return self.tb.run("gw", "ip", "rule").stdout

    def fetch_through_relay(self) -> None:
        before = len(self.relay_lines())
        assert self.curl() == self.blob
        wait_for(lambda: len(self.relay_lines()) == before + 1, 2.0, "relay log line")
        assert self.origin_clients()[-1] == Testbed.GW_NET_IP  # the relay connected upstream


@pytest.fixture
def scene(testbed: Testbed, tmp_path: Path) -> Iterator[Scene]:
    tmp_path.chmod(0o755)
    s = Scene(testbed, tmp_path)
    s.start_origin()
    yield s


def measure(name: str, seconds: float) -> None:
    print(f"MEASURE {name}={seconds:.3f}s", file=sys.stderr)


# --------------------------------------------------------------------------- tests


def test_intercepts_and_reports_original_destination(scene: Scene) -> None:
    scene.start_relay(watchdog=False)
    scene.fetch_through_relay()
    scene.fetch_through_relay()
    lines = scene.relay_lines()
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(r"10\.77\.1\.2:\d+ -> 10\.77\.2\.2:80", line), line
    # Only the two SYNs were queued: the rest of each flow never reached user space.
    queued = [ln for ln in scene.mangle(counters=True).splitlines() if "-j NFQUEUE" in ln]
    assert len(queued) == 1 and queued[0].startswith("[2:"), queued


def test_kill9_fails_open_by_queue_bypass_alone(scene: Scene) -> None:
    scene.start_relay(watchdog=False)
    scene.fetch_through_relay()
    assert scene.relay is not None
    scene.relay.send_signal(signal.SIGKILL)
    scene.relay.wait(timeout=5)
    took = scene.fetch_until_ok(deadline=5.0)
    measure("direct_fetch_after_kill9", took)
    assert took < 5.0
    assert scene.origin_clients()[-1] == Testbed.SUB_IP  # forwarded, not relayed
    assert len(scene.relay_lines()) == 1
    assert scene.queue_rules(), "no watchdog here: the rules are still installed"


def test_kill9_with_watchdog_removes_rules(scene: Scene) -> None:
    info = scene.start_relay(watchdog=True)
    scene.fetch_through_relay()
    assert scene.relay is not None
    scene.relay.send_signal(signal.SIGKILL)
    scene.relay.wait(timeout=5)
    t0 = time.monotonic()
    took = scene.fetch_until_ok(deadline=5.0)
    measure("direct_fetch_after_kill9_with_watchdog", took)
    wait_for(lambda: "SWARMCACHE" not in scene.mangle(), 3.0, "watchdog to remove the chains")
    wait_for(lambda: "fwmark" not in scene.ip_rules(), 1.0, "watchdog to remove the ip rule")
    measure("rules_removed_after_kill9", time.monotonic() - t0)
    wait_for(lambda: gone(info["watchdog_pid"]), 3.0, "watchdog to exit")
    assert scene.tb.run("gw", "ip", "route", "show", "table", "100").stdout.strip() == ""
    assert scene.origin_clients()[-1] == Testbed.SUB_IP


def test_sigstop_watchdog_fails_open_then_recovers(scene: Scene) -> None:
    scene.start_relay(watchdog=True)
    scene.fetch_through_relay()
    relay = scene.relay
    assert relay is not None
    relay.send_signal(signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        # A connection made while the daemon is stuck (its first SYNs sit in the queue) ...
        conn_out, go = scene.tmp / "slow.out", scene.tmp / "slow.go"
        client = scene.tb.popen("sub", sys.executable, "-c", SLOW_CLIENT, str(conn_out), str(go))
        took = scene.fetch_until_ok(deadline=6.0)
        measure("direct_fetch_after_sigstop", took)
        assert took < 5.0
        assert scene.origin_clients()[-1] == Testbed.SUB_IP
        assert scene.queue_rules() == [], "the watchdog should have flushed the queue chain"
        connected = lambda: conn_out.exists() and "connected" in conn_out.read_text()  # noqa: E731
        wait_for(connected, 5.0, "slow client to connect directly")
        measure("stall_before_sigcont", time.monotonic() - t_stop)
    finally:
        relay.send_signal(signal.SIGCONT)
    t_cont = time.monotonic()
    took = wait_for(lambda: bool(scene.queue_rules()), 3.0, "watchdog to re-enable the queue")
    measure("queue_reenabled_after_sigcont", took)
    # ... survives the relay waking up with that connection's stale SYNs still queued.
    time.sleep(0.3)
    go.touch()
    client.wait(timeout=10)
    assert conn_out.read_text().splitlines()[-1].startswith("got "), conn_out.read_text()
    assert int(conn_out.read_text().split("got ")[1]) > len(scene.blob)
    # New flows go through the relay again.
    scene.fetch_through_relay()
    measure("through_relay_again_after_sigcont", time.monotonic() - t_cont)
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0
    stale = re.search(r"\((\d+) stale, let through\)", scene.relay_output())
    assert stale is not None and int(stale.group(1)) >= 1, scene.relay_output()


def test_clean_stop_removes_everything(scene: Scene) -> None:
    # Leftovers of a "crashed" earlier run, installed twice: install() must clean them first.
    for _ in range(2):
        scene.tb.run("gw", sys.executable, "-c", SPEC_ARGS + "rules.install(spec)", timeout=20)
    leftovers = scene.mangle()
    assert leftovers.count("-A PREROUTING") == 1, leftovers
    scene.start_relay(watchdog=True)
    mangle = scene.mangle()
    assert mangle.count("-A PREROUTING") == 1, mangle
    assert scene.ip_rules().count("fwmark 0x1/0x1 lookup 100") == 1
    scene.fetch_through_relay()
    assert scene.relay is not None
    scene.relay.send_signal(signal.SIGTERM)
    assert scene.relay.wait(timeout=10) == 0, scene.relay_output()
    assert "SWARMCACHE" not in scene.mangle()
    assert "fwmark" not in scene.ip_rules()
    assert scene.tb.run("gw", "ip", "route", "show", "table", "100").stdout.strip() == ""
    wait_for(lambda: gone(scene.relay_info["watchdog_pid"]), 3.0, "watchdog to exit")
    assert "clean stop requested" in scene.relay_output()
    assert scene.curl() == scene.blob
    assert scene.origin_clients()[-1] == Testbed.SUB_IP


def test_non_subscriber_traffic_is_not_diverted(scene: Scene) -> None:
    scene.start_origin("net", Testbed.NET_IP, 8080)  # subscriber, but a port not intercepted
    scene.start_origin("sub", Testbed.SUB_IP, 80)  # a server on the subscriber side
    scene.start_relay(watchdog=False)
    # gateway's own traffic (OUTPUT path), the outside reaching a subscriber, other port:
    assert scene.curl("gw") == scene.blob
    assert scene.curl("net", f"http://{Testbed.SUB_IP}/blob.bin") == scene.blob
    assert scene.curl("sub", f"http://{Testbed.NET_IP}:8080/blob.bin") == scene.blob
    assert scene.relay_lines() == []
    queued = [ln for ln in scene.mangle(counters=True).splitlines() if "-j NFQUEUE" in ln]
    assert queued[0].startswith("[0:"), queued
    # ... while the relay is live for subscriber traffic to port 80.
    scene.fetch_through_relay()
    assert len(scene.relay_lines()) == 1
