"""A running gateway in a testbed: origin in net, swarmcache in gw, curl in sub.

Everything a test observes is what a user or operator could observe: bytes and headers curl
received, requests the origin logged, bytes on the gateway's uplink interface, /metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.netns.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "10.77.2.2"
GW_SUB = "10.77.1.1"
GW_NET = "10.77.2.1"


@dataclass
class Fetch:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def x_cache(self) -> str:
        return self.headers.get("x-cache", "")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class Gateway:
    def __init__(self, testbed: Testbed, tmp: Path) -> None:
        self.tb = testbed
        self.tmp = tmp
        self.www = tmp / "www"
        self.www.mkdir()
        self.cache_dir = tmp / "cache"
        self.origin_log = tmp / "origin.log"
        self.access_log = tmp / "access.log"
        self.daemon_log = tmp / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, dict[str, str]] = {}
        self._fetches = 0

    # --- origin -----------------------------------------------------------------------
    def put(self, name: str, body: bytes, headers: dict[str, str] | None = None) -> str:
        (self.www / name).write_bytes(body)
        self.set_headers("/" + name, headers or {})
        return f"http://{ORIGIN}/{name}"

    def set_headers(self, path: str, headers: dict[str, str]) -> None:
        self.headers[path] = headers
        (self.www / ".headers.json").write_text(json.dumps(self.headers))

    def start_origin(self, address: str = ORIGIN, www: Path | None = None) -> None:
        self.tb.popen(
            self.tb.net,
            sys.executable,
            str(ROOT / "deploy" / "origin.py"),
            "--bind",
            address,
            "--port",
            "80",
            "--root",
            str(www or self.www),
            "--log",
            str(self.origin_log),
        )
        self.wait_until(lambda: self._probe(address), "origin did not start")

    def _probe(self, address: str) -> bool:
        result = self.tb.run(
            self.tb.net, "curl", "-s", "-o", "/dev/null", f"http://{address}/", check=False
        )
        return result.returncode == 0

    def origin_requests(self, path: str | None = None) -> list[dict[str, Any]]:
        if not self.origin_log.exists():
            return []
        entries = [json.loads(line) for line in self.origin_log.read_text().splitlines()]
        return [e for e in entries if path is None or e["path"] == path]

    # --- daemon -----------------------------------------------------------------------
    def start_daemon(self, *extra: str) -> None:
        log = open(self.daemon_log, "ab")  # noqa: SIM115 - handed to the child
        self.daemon = self.tb.popen(
            self.tb.gw,
            sys.executable,
            "-m",
            "swarmcache",
            "run",
            "--cache-dir",
            str(self.cache_dir),
            "--subscribers",
            "10.77.1.0/24",
            "--admin-listen",
            "127.0.0.1:9480",
            "--proxy-listen",
            "0.0.0.0:3128",
            "--access-log",
            str(self.access_log),
            *extra,
            stdout=log,
            stderr=log,
            cwd=str(ROOT),
        )
        self.wait_until(self._healthy, "daemon did not become healthy")

    def _healthy(self) -> bool:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            raise AssertionError(f"daemon exited: {self.daemon_log.read_text()[-3000:]}")
        result = self.tb.run(
            self.tb.gw,
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "http://127.0.0.1:9480/healthz",
            check=False,
        )
        return result.returncode == 0

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=15)

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        text = self.tb.run(self.tb.gw, "curl", "-s", "http://127.0.0.1:9480/metrics").stdout
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def uplink_rx_bytes(self) -> int:
        """Bytes the gateway received from the internet side (its uplink)."""
        path = f"/sys/class/net/{self.tb.prefix}gn/statistics/rx_bytes"
        return int(self.tb.run(self.tb.gw, "cat", path).stdout)

    # --- clients ----------------------------------------------------------------------
    def curl(self, url: str, *args: str, ns: str | None = None, timeout: float = 60) -> Fetch:
        self._fetches += 1
        head = self.tmp / f"h{self._fetches}"
        body = self.tmp / f"b{self._fetches}"
        result = self.tb.run(
            ns or self.tb.sub,
            "curl",
            "-s",
            "--max-time",
            str(int(timeout)),
            "-D",
            str(head),
            "-o",
            str(body),
            *args,
            url,
            check=False,
            timeout=timeout + 5,
        )
        if result.returncode != 0:
            raise AssertionError(f"curl {url} failed with exit {result.returncode}")
        return parse_fetch(head.read_bytes(), body.read_bytes() if body.exists() else b"")

    @staticmethod
    def wait_until(check: Any, message: str, timeout: float = 15.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(message)


def parse_fetch(head: bytes, body: bytes) -> Fetch:
    # curl -D writes every response head (interim, proxy CONNECT replies): keep the last one.
    blocks = [b for b in head.split(b"\r\n\r\n") if b.strip()]
    lines = blocks[-1].split(b"\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Fetch(status, headers, body)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
