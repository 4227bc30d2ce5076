"""Live fan-out end to end: 200 subscribers on one stream through one upstream connection.

Origin (tests/netns/live_origin.py, in the internet namespace) sends an endless chunked stream
of counter-stamped records at 64 KiB/s and logs every connection. 200 clients and one client
that stops reading (tests/netns/live_clients.py, one process in the subscriber namespace) ask
for it through the gateway's interception. What a user or operator would notice is asserted:
the bytes every client got, the connections the origin saw, the daemon's metrics and memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.gateway import GW_NET, ORIGIN, ROOT, Gateway
from tests.netns.live_origin import HEADER_BYTES, filler
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
RECORD = 1024
RATE = 64  # records (KiB) per second: 4 records every 1/16 s
RING = 256 << 10
BUFFER = 64 << 10
CLIENTS = 200
DURATION = 16.0
SLOW_PAUSE = 9.0

CONFIG = f"""
[live]
url_patterns = ["http://{ORIGIN}/live/*"]
block_bytes = 16384
ring_bytes = {RING}
client_buffer_bytes = {BUFFER}
align_bytes = {RECORD}
lag_policy = "skip"
linger = 1.0
"""


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(testbed, tmp_path)
    config = tmp_path / "live.toml"
    config.write_text(CONFIG)
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def _start_origin(gw: Gateway, *extra: str) -> None:
    gw.tb.popen(
        gw.tb.net,
        sys.executable,
        str(HERE / "live_origin.py"),
        "--bind",
        ORIGIN,
        "--port",
        "80",
        "--log",
        str(gw.origin_log),
        "--record-bytes",
        str(RECORD),
        "--records-per-tick",
        "4",
        "--tick",
        str(4 / RATE),
        *extra,
    )
    gw.wait_until(lambda: _listening(gw.tb), "live origin did not start")


def _clients(gw: Gateway, name: str, *args: str) -> subprocess.Popen[bytes]:
    with open(gw.tmp / f"{name}.json", "wb") as out, open(gw.tmp / f"{name}.log", "wb") as err:
        return gw.tb.popen(
            gw.tb.sub,
            sys.executable,
            str(HERE / "live_clients.py"),
            "--host",
            ORIGIN,
            "--path",
            "/live/radio.mp3",
            "--record-bytes",
            str(RECORD),
            "--per-client",
            *args,
            stdout=out,
            stderr=err,
            cwd=str(ROOT),
        )


def _result(gw: Gateway, name: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.wait(timeout=120) == 0, (gw.tmp / f"{name}.log").read_text()
    result: dict[str, Any] = json.loads((gw.tmp / f"{name}.json").read_text())
    return result


def _seqs(body: bytes) -> list[int]:
    """Sequence numbers of the records in ``body``; fails unless they are whole and aligned."""
    assert len(body) % RECORD == 0
    records = [body[i : i + RECORD] for i in range(0, len(body), RECORD)]
    seqs = [int(r[1:11]) for r in records]
    for seq, r in zip(seqs, records, strict=True):
        assert r[:1] == b"#" and r[HEADER_BYTES - 1 : HEADER_BYTES] == b"\n"
        assert r[HEADER_BYTES:] == filler(seq, RECORD), f"record {seq} is damaged"
    return seqs


def _listening(tb: Testbed) -> bool:
    out = tb.run(tb.net, "ss", "-Hltn", f"src {ORIGIN}:80", check=False).stdout
    return "LISTEN" in out


def _origin_events(gw: Gateway) -> list[dict[str, Any]]:
    if not gw.origin_log.exists():
        return []
    return [json.loads(line) for line in gw.origin_log.read_text().splitlines()]


def _upstream_opens(gw: Gateway) -> list[dict[str, Any]]:
    return [e for e in _origin_events(gw) if e["event"] == "open" and e["peer"].startswith(GW_NET)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_one_upstream_connection_feeds_200_clients_and_a_slow_one_costs_nothing(
    gateway: Gateway,
) -> None:
    _start_origin(gateway)
    clients = _clients(
        gateway,
        "clients",
        *("--clients", str(CLIENTS), "--slow", "1"),
        *("--slow-pause", str(SLOW_PAUSE), "--duration", str(DURATION)),
    )
    assert gateway.daemon is not None
    pid = gateway.daemon.pid

    gateway.wait_until(
        lambda: gateway.metrics().get("swarmcache_live_clients") == CLIENTS + 1,
        "not every client joined the stream",
        timeout=30,
    )
    rss_joined = _rss_kib(pid)
    # The slow client has stopped reading by now; wait until its backlog is past the ring.
    time.sleep(SLOW_PAUSE - 2)
    during = gateway.metrics()
    rss_stalled = _rss_kib(pid)

    result = _result(gateway, "clients", clients)

    # Exactly one upstream connection for 201 clients.
    assert len(_upstream_opens(gateway)) == 1
    assert during["swarmcache_live_streams"] == 1
    assert during["swarmcache_live_clients"] == CLIENTS + 1

    # Every fast client got a contiguous slice of the origin's stream at the stream's rate,
    # while the slow client sat on its backlog.
    fast = result["fast"]
    assert len(fast) == CLIENTS
    for client in fast:
        assert client["status"] == 200, client
        assert client["errors"] == [], client
        assert client["jumps"] == 0, client
        assert client["receiving_s"] > DURATION / 2, client
        # Generous: half the rate over the time it was receiving (the machine is shared).
        assert client["records"] >= 0.5 * RATE * client["receiving_s"], client
        assert client["last_seq"] - client["first_seq"] + 1 == client["records"], client
    assert "detail=live" in result["headers"]["cache-status"]
    assert "swarmcache" in result["headers"]["via"]

    # The slow client: pieces of the stream, in order, separated by the skip to the live edge.
    (slow,) = result["slow"]
    assert slow["status"] == 200 and slow["errors"] == [], slow
    assert slow["jumps"] >= 1, slow
    after = gateway.metrics()
    assert after['swarmcache_live_clients_dropped_total{action="skipped"}'] >= 1
    assert after['swarmcache_live_clients_dropped_total{action="disconnected"}'] == 0

    # Memory: the ring is the bound, whatever the slow client does.
    assert during["swarmcache_live_ring_bytes"] <= RING
    assert rss_stalled - rss_joined < 16 << 10, (rss_joined, rss_stalled)

    # Everyone left: after the linger the upstream is closed and the stream is gone.
    gateway.wait_until(
        lambda: any(e["event"] == "close" for e in _origin_events(gateway)),
        "the origin never saw the upstream connection close",
        timeout=15,
    )
    gateway.wait_until(
        lambda: gateway.metrics().get("swarmcache_live_streams") == 0,
        "the stream was not retired",
    )
    assert len(_upstream_opens(gateway)) == 1
    served = gateway.metrics()["swarmcache_live_served_bytes_total"]
    got = sum(c["bytes"] for c in fast) + slow["bytes"]
    # What the daemon sent is at least what arrived (the rest was in flight at the end).
    assert served >= got


def test_the_origin_ending_ends_every_client_and_private_requests_are_not_shared(
    gateway: Gateway,
) -> None:
    records = 5 * RATE  # the origin ends its stream after five seconds
    _start_origin(gateway, "--max-records", str(records))
    url = f"http://{ORIGIN}/live/radio.mp3"
    clients = _clients(gateway, "clients", "--clients", "20", "--duration", "30")
    gateway.wait_until(
        lambda: gateway.metrics().get("swarmcache_live_clients") == 20,
        "the clients did not join",
        timeout=30,
    )
    tb = gateway.tb
    http10 = tb.popen(
        tb.sub, "curl", "-s", "--http1.0", "-D", str(gateway.tmp / "h10"),
        "-o", str(gateway.tmp / "b10"), "--max-time", "30", url,
    )  # fmt: skip
    private = tb.popen(
        tb.sub, "curl", "-s", "-H", "Cookie: session=alice", "-D", str(gateway.tmp / "hp"),
        "-o", str(gateway.tmp / "bp"), "--max-time", "30", url,
    )  # fmt: skip
    result = _result(gateway, "clients", clients)
    assert http10.wait(timeout=60) == 0 and private.wait(timeout=60) == 0

    # Each shared client's response ended cleanly (last chunk) with the stream's last record.
    for client in result["fast"]:
        assert client["ended"] and client["errors"] == [] and client["jumps"] == 0, client
        assert client["last_seq"] == records - 1, client
    assert result["fast_summary"]["with_errors"] == 0

    # An HTTP/1.0 joiner gets the stream close-delimited, ending with the origin's.
    head10 = (gateway.tmp / "h10").read_bytes().lower()
    assert b"transfer-encoding" not in head10 and b"hit; detail=live" in head10
    seqs = _seqs((gateway.tmp / "b10").read_bytes())
    assert seqs == list(range(seqs[0], records))

    # A request with a Cookie is never shared: it went upstream on its own connection.
    assert b"detail=live" not in (gateway.tmp / "hp").read_bytes().lower()
    assert _seqs((gateway.tmp / "bp").read_bytes()) == list(range(records))
    assert len(_upstream_opens(gateway)) == 2
