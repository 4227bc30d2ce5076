"""Live fan-out end to end: 200 subscribers on one stream through one upstream connection.

Origin (tests/netns/live_origin.py, in the internet namespace) sends an endless chunked stream
of counter-stamped records at 64 KiB/s and logs every connection. 200 clients and one client
that stops reading (tests/netns/live_clients.py, one process in the subscriber namespace) ask
for it through the gateway's interception. What a user or operator would notice is asserted:
the bytes every client got, the connections the origin saw, the daemon's metrics and memory.
"""

from __future__ import annotations

import contextlib
import itertools
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

LIVE = {
    "url_patterns": [f"http://{ORIGIN}/live/*"],
    "block_bytes": 16384,
    "ring_bytes": RING,
    "client_buffer_bytes": BUFFER,
    "align_bytes": RECORD,
    "lag_policy": "skip",
    "linger": 1.0,
}


@contextlib.contextmanager
def _daemon(testbed: Testbed, tmp_path: Path, **live: object) -> Iterator[Gateway]:
    """A gateway whose daemon runs the [live] settings above, with ``live`` overriding them."""
    gw = Gateway(testbed, tmp_path)
    config = tmp_path / "live.toml"
    lines = ["[live]", *(f"{k} = {json.dumps(v)}" for k, v in {**LIVE, **live}.items())]
    config.write_text("\n".join(lines) + "\n")
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    with _daemon(testbed, tmp_path) as gw:
        yield gw


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


CUT = "RemoteProtocolError: connection closed: incomplete chunked body"


def _assert_contiguous(client: dict[str, Any], *, cut: bool = False) -> None:
    """Consecutive, whole, intact records from first_seq to last_seq; ``cut``: and then the
    connection closed in the middle of the response (no last chunk), as a cut client sees."""
    assert client["status"] == 200 and client["errors"] == ([CUT] if cut else []), client
    assert client["jumps"] == 0, client
    assert client["last_seq"] - client["first_seq"] + 1 == client["records"], client


DISCONNECTED = 'swarmcache_live_clients_dropped_total{action="disconnected"}'
SKIPPED = 'swarmcache_live_clients_dropped_total{action="skipped"}'


def _one_client_cut(gw: Gateway, fast: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``fast`` clients and one that reads for a second, then nothing for SLOW_PAUSE seconds;
    the box must cut that one (and only it). Returns the fast clients and the cut one, after
    checking what every test of a cut asserts."""
    # The pause is long: before the ring laps the paused client, the kernel's buffers between
    # the box and it fill first (the box's send buffer autotunes to hundreds of KiB), and a
    # client that reads again before it is cut is never cut.
    pause = 2 * SLOW_PAUSE
    _start_origin(gw)
    clients = _clients(
        gw,
        "clients",
        *("--clients", str(fast), "--slow", "1"),
        *("--slow-pause", str(pause), "--duration", str(pause + 4)),
    )
    gw.wait_until(
        lambda: gw.metrics().get(DISCONNECTED) == 1,
        "the slow client was not cut",
        timeout=pause + 20,
    )
    result = _result(gw, "clients", clients)
    metrics = gw.metrics()
    (slow,) = result["slow"]
    # What it got before the cut is a contiguous slice from where it joined (never a skip),
    # then its connection closed mid-response (it found out when it read again, before its
    # own deadline).
    _assert_contiguous(slow, cut=True)
    assert slow["why"] != "deadline" and not slow["ended"], slow
    # The others carried on over one upstream connection, untouched.
    assert len(result["fast"]) == fast
    for client in result["fast"]:
        _assert_contiguous(client)
        assert client["last_seq"] > slow["last_seq"], (client, slow)
    assert metrics[DISCONNECTED] == 1 and metrics[SKIPPED] == 0
    assert len(_upstream_opens(gw)) == 1
    return result["fast"], slow


# --- lag_policy = "disconnect" ---------------------------------------------------------------


@pytest.fixture
def disconnecting(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    with _daemon(testbed, tmp_path, lag_policy="disconnect") as gw:
        yield gw


def test_a_client_behind_the_ring_is_disconnected_and_the_others_carry_on(
    disconnecting: Gateway,
) -> None:
    # The stream (64 KiB/s) laps the 256 KiB ring long before the paused client reads again.
    fast, slow = _one_client_cut(disconnecting, 20)
    # It was cut for falling more than a ring behind the others.
    for client in fast:
        assert client["last_seq"] > slow["last_seq"] + RING // RECORD, (client, slow)


# --- stall_timeout ---------------------------------------------------------------------------


@pytest.fixture
def stall_cutting(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    # Skip policy (which never cuts for lag) and a ring (1 MiB: 16 s of stream) the pause
    # cannot lap: the only way a client is cut here is its socket not draining for
    # stall_timeout seconds.
    with _daemon(testbed, tmp_path, stall_timeout=1.5, ring_bytes=1 << 20) as gw:
        yield gw


def test_a_client_whose_socket_does_not_drain_for_stall_timeout_is_disconnected(
    stall_cutting: Gateway,
) -> None:
    # Cut, not skipped (no jump, skipped == 0), though the ring still held its position.
    _, slow = _one_client_cut(stall_cutting, 10)
    assert slow["records"] > 0


# --- upstream_end = "reconnect" --------------------------------------------------------------


@pytest.fixture
def reconnecting(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    with _daemon(testbed, tmp_path, upstream_end="reconnect", reconnect_delay=0.5) as gw:
        yield gw


def test_the_stream_reconnects_upstream_and_clients_see_whole_records_across_the_seam(
    reconnecting: Gateway,
) -> None:
    gw = reconnecting
    # Each origin connection carries one second of the stream (numbered on the origin's clock,
    # as a live source would), then the first breaks off mid-record, the second ends cleanly,
    # the third breaks again...
    _start_origin(gw, "--seq-from-clock", "--max-records", str(RATE), "--end", "alternate")
    clients = _clients(gw, "clients", "--clients", "10", "--duration", "12")
    gw.wait_until(
        lambda: len([e for e in _origin_events(gw) if e["event"] == "close"]) >= 3,
        "the box did not reconnect twice",
        timeout=30,
    )
    result = _result(gw, "clients", clients)

    opens = _upstream_opens(gw)
    closes = {e["conn"]: e for e in _origin_events(gw) if e["event"] == "close"}
    assert len(opens) >= 3
    assert closes[1]["why"] == "broke off mid-record" and closes[2]["why"] == "stream ended"
    # One upstream connection at a time: each opened after the one before it closed.
    for before, after in itertools.pairwise(opens):
        assert after["t"] >= closes[before["conn"]]["t"]
    # The seams: after connection k's last whole record comes connection k+1's first one.
    # Nothing of the broken record, nothing twice; the records the origin sent while the box
    # reconnected are missing (a jump forward, as a listener hears a gap).
    seams = [
        (closes[k]["last_seq"], closes[k + 1]["first_seq"])
        for k in sorted(closes)
        if k + 1 in closes and closes[k + 1]["first_seq"] is not None
    ]
    for client in result["fast"]:
        assert client["status"] == 200 and client["errors"] == [], client
        assert not client["ended"], client  # the response went on across every seam
        crossed = [s for s in seams if client["first_seq"] <= s[0] and s[1] <= client["last_seq"]]
        assert len(crossed) >= 2, (client, seams)
        assert [tuple(j) for j in client["jumped"]] == crossed, (client, seams)
    assert result["fast_summary"]["with_errors"] == 0

    # Everyone left: the stream is retired and no upstream connection is left open.
    gw.wait_until(
        lambda: gw.metrics().get("swarmcache_live_streams") == 0,
        "the stream was not retired",
    )
    gw.wait_until(
        lambda: (
            len(_upstream_opens(gw))
            == len([e for e in _origin_events(gw) if e["event"] == "close"])
        ),
        "an upstream connection was left open",
    )


# --- back_buffer_bytes -----------------------------------------------------------------------

BACK_BUFFER = 32 * RECORD + RECORD // 2  # not a whole number of records, on purpose
QUIET_AFTER = 100  # records; then the origin keeps the connection open but sends nothing


@pytest.fixture
def back_buffered(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    with _daemon(testbed, tmp_path, back_buffer_bytes=BACK_BUFFER) as gw:
        yield gw


def test_a_joining_client_gets_the_back_buffer_aligned_to_records(
    back_buffered: Gateway,
) -> None:
    gw = back_buffered
    # The stream goes quiet after QUIET_AFTER records, so the live edge stays put while the
    # second client joins: what it gets is the back-buffer and nothing else.
    _start_origin(gw, "--stall-after", str(QUIET_AFTER))
    first = _clients(gw, "first", "--clients", "1", "--duration", "10")
    gw.wait_until(
        lambda: gw.metrics().get("swarmcache_live_upstream_bytes_total") == QUIET_AFTER * RECORD,
        "the origin's records did not reach the box",
        timeout=30,
    )
    joiner = _clients(gw, "joiner", "--clients", "1", "--duration", "3")
    joined = _result(gw, "joiner", joiner)
    started = _result(gw, "first", first)

    # The first client started the stream at its beginning and got all of it.
    (client,) = started["fast"]
    _assert_contiguous(client)
    assert (client["first_seq"], client["last_seq"]) == (0, QUIET_AFTER - 1)
    # The joiner starts BACK_BUFFER bytes before the live edge, rounded down to a record
    # start: whole records, from the one that point falls in to the edge.
    (late,) = joined["fast"]
    _assert_contiguous(late)
    back = -(-BACK_BUFFER // RECORD)
    assert (late["first_seq"], late["last_seq"]) == (QUIET_AFTER - back, QUIET_AFTER - 1), late
    assert late["bytes"] == back * RECORD
    assert "hit; detail=live" in joined["headers"]["cache-status"]
    assert len(_upstream_opens(gw)) == 1
