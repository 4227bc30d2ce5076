"""Tests for swarm.tracker_client over loopback: a real opentracker, and small fake trackers
for what opentracker cannot be made to do (gzip, error statuses, silence, lost datagrams)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast
from urllib.parse import unquote_to_bytes

import pytest
from aiohttp import web

from swarm.bencode import bencode
from swarm.compact import encode_peers4
from swarm.tracker_client import (
    TrackerError,
    TrackerFailure,
    TrackerResponseError,
    TrackerUnreachable,
    announce,
)
from swarm.tracker_http import MAX_RESPONSE_SIZE, AnnounceRequest, announce_url
from swarm.tracker_udp import (
    AnnounceRequestPacket,
    ConnectRequest,
    ConnectResponse,
    UdpConnection,
    decode_request,
    encode_announce_response,
    encode_packet,
)

HTTP_HASH = bytes.fromhex("215b4252b75413217c5c63f07caefac8582fe8f3")
UDP_HASH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
SHARED_HASH = bytes.fromhex("aa" * 20)
STOP_HASH = bytes.fromhex("bb" * 20)
PROBE_HASH = bytes.fromhex("cc" * 20)
UNLISTED = bytes.fromhex("ff" * 20)
REFUSAL = "Requested download is not authorized for use with this tracker."


def peer(
    info_hash: bytes, n: int, *, left: int = 1000, event: str | None = "started"
) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=f"-SC0001-{n:012d}".encode(),
        port=40000 + n,
        uploaded=0,
        downloaded=0,
        left=left,
        event=event,  # type: ignore[arg-type]
        numwant=50,
    )


def free_port() -> int:
    """A loopback port free for both TCP and UDP (opentracker serves both on one number)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port for TCP and UDP")


def skip(reason: str) -> None:
    print(reason, file=sys.stderr)
    pytest.skip(reason=reason)


# --- the real opentracker -------------------------------------------------------------------


def _serves_whitelist(port: int) -> bool:
    """opentracker listens before a worker thread has read the whitelist; until then every
    announce is refused. Ready means a whitelisted hash is accepted."""
    url = announce_url(f"http://127.0.0.1:{port}/announce", peer(PROBE_HASH, 99))
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            body: bytes = resp.read()
    except OSError:
        return False
    return b"failure reason" not in body


@pytest.fixture(scope="module")
def opentracker() -> Iterator[int]:
    """opentracker on 127.0.0.1:<port> (TCP and UDP), whitelisting the test hashes."""
    binary = shutil.which("opentracker")
    if binary is None:
        skip("opentracker is not installed (apt-get install opentracker; deploy/install-deps.sh)")
    if os.geteuid() != 0:
        skip("opentracker chroots into its -d directory, which needs root")
    root = Path(tempfile.mkdtemp(prefix="swarm-ot-"))
    # It chroots into root and drops to 'nobody', who must read the whitelist; the path given
    # with -w is resolved inside the chroot (testbed-notes §6).
    root.chmod(0o755)
    whitelist = root / "whitelist.txt"
    hashes = (HTTP_HASH, UDP_HASH, SHARED_HASH, STOP_HASH, PROBE_HASH)
    whitelist.write_text("".join(h.hex() + "\n" for h in hashes))
    whitelist.chmod(0o644)
    log = root / "log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary or "opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port),
             "-d", str(root), "-w", "/whitelist.txt"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"opentracker exited with {proc.returncode}: {log.read_text()}")
            if _serves_whitelist(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"opentracker did not listen on {port}: {log.read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("scheme", ["http", "udp"])
async def test_two_peers_see_each_other(opentracker: int, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{opentracker}/announce"
    info_hash = HTTP_HASH if scheme == "http" else UDP_HASH
    seeder, leecher = peer(info_hash, 1, left=0), peer(info_hash, 2)
    first = await announce(url, seeder, timeout=5, udp_base_timeout=0.5)
    assert ("127.0.0.1", 40002) not in first.peers
    second = await announce(url, leecher, timeout=5, udp_base_timeout=0.5)
    assert ("127.0.0.1", 40001) in second.peers
    assert (second.complete, second.incomplete) == (1, 1)
    assert second.interval > 0
    again = await announce(url, peer(info_hash, 1, left=0, event=None), timeout=5)
    assert ("127.0.0.1", 40002) in again.peers


async def test_http_and_udp_announces_meet_in_one_swarm(opentracker: int) -> None:
    await announce(f"http://127.0.0.1:{opentracker}/announce", peer(SHARED_HASH, 3))
    r = await announce(f"udp://127.0.0.1:{opentracker}", peer(SHARED_HASH, 4), timeout=5)
    assert ("127.0.0.1", 40003) in r.peers


@pytest.mark.parametrize("scheme", ["http", "udp"])
async def test_stopped_event_leaves_the_swarm(opentracker: int, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{opentracker}/announce"
    n = 10 if scheme == "http" else 20  # both runs share STOP_HASH: keep their peers apart
    a, b = peer(STOP_HASH, n), peer(STOP_HASH, n + 1)
    await announce(url, a, timeout=5)
    assert ("127.0.0.1", a.port) in (await announce(url, b, timeout=5)).peers
    await announce(url, peer(STOP_HASH, n, event="stopped"), timeout=5)
    assert ("127.0.0.1", a.port) not in (await announce(url, b, timeout=5)).peers


async def test_http_unlisted_hash_gives_opentrackers_reason(opentracker: int) -> None:
    with pytest.raises(TrackerFailure) as info:
        await announce(f"http://127.0.0.1:{opentracker}/announce", peer(UNLISTED, 5))
    assert info.value.reason == REFUSAL


async def test_udp_unlisted_hash_is_refused(opentracker: int) -> None:
    with pytest.raises(TrackerFailure, match="announce refused"):
        await announce(f"udp://127.0.0.1:{opentracker}/announce", peer(UNLISTED, 5), timeout=5)


async def test_udp_connection_id_is_cached_and_reused(opentracker: int) -> None:
    url = f"udp://127.0.0.1:{opentracker}/announce"
    cache: dict[tuple[str, int], UdpConnection] = {}
    await announce(url, peer(UDP_HASH, 30), udp_connections=cache)
    first = cache[("127.0.0.1", opentracker)]
    r = await announce(url, peer(UDP_HASH, 31), udp_connections=cache)
    assert cache[("127.0.0.1", opentracker)] == first  # no new connect was needed
    assert ("127.0.0.1", 40030) in r.peers
    # A made-up id is refused by opentracker with its error message.
    cache[("127.0.0.1", opentracker)] = UdpConnection(first.connection_id ^ 1, first.obtained_at)
    with pytest.raises(TrackerFailure, match="Connection ID missmatch"):
        await announce(url, peer(UDP_HASH, 31), udp_connections=cache)
    assert cache == {}  # the rejected id is forgotten, so the next announce connects afresh
    await announce(url, peer(UDP_HASH, 31), udp_connections=cache)
    assert cache[("127.0.0.1", opentracker)].connection_id != first.connection_id ^ 1


# --- fake HTTP trackers ---------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def http_tracker(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/announce", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/announce"
    finally:
        await runner.cleanup()


async def test_http_gzip_reply_and_raw_hash_bytes_reach_the_tracker() -> None:
    tricky = b"%+ /&=?#\x00\xff" + bytes(range(10))
    seen: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        raw = request.raw_path.partition("?")[2]
        fields = dict(part.split("=", 1) for part in raw.split("&"))
        seen.append(unquote_to_bytes(fields["info_hash"]))
        body = bencode({b"interval": 900, b"peers": encode_peers4([("10.0.0.1", 6881)])})
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    async with http_tracker(handler) as url:
        r = await announce(url + "?passkey=p%2Fq", peer(tricky, 1))
    assert seen == [tricky]
    assert (r.interval, r.peers) == (900, (("10.0.0.1", 6881),))


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b"", "HTTP status 404 Not Found$"),
        (403, b"d14:failure reason10:no passkeye", "HTTP status 403 Forbidden: no passkey"),
        (500, b"<html>oops</html>", "HTTP status 500 Internal Server Error$"),
    ],
)
async def test_http_error_status_is_a_failure(status: int, body: bytes, message: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body)

    async with http_tracker(handler) as url:
        with pytest.raises(TrackerFailure, match=message):
            await announce(url, peer(HTTP_HASH, 1))


async def test_http_oversized_reply_is_refused() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * (256 << 10)
        for _ in range(MAX_RESPONSE_SIZE // len(chunk) + 2):
            await resp.write(chunk)
        return resp

    async with http_tracker(handler) as url:
        with pytest.raises(TrackerResponseError, match="reply larger than 2097152 bytes"):
            await announce(url, peer(HTTP_HASH, 1))


async def test_http_garbage_reply() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>hello</html>")

    async with http_tracker(handler) as url:
        with pytest.raises(TrackerResponseError, match="tracker response: bencode"):
            await announce(url, peer(HTTP_HASH, 1))


async def test_http_slow_tracker_times_out() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"")

    async with http_tracker(handler) as url:
        started = time.monotonic()
        with pytest.raises(TrackerUnreachable, match=r"no reply within 0\.3 s"):
            await announce(url, peer(HTTP_HASH, 1), timeout=0.3)
        assert time.monotonic() - started < 2


async def test_http_connection_refused() -> None:
    with pytest.raises(TrackerUnreachable, match="ClientConnectorError"):
        await announce(f"http://127.0.0.1:{free_port()}/announce", peer(HTTP_HASH, 1), timeout=5)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("wss://t/announce", "unsupported scheme 'wss'"),
        ("udp://tracker.example/announce", "has no port"),
        ("http:///announce", "has no host"),
        ("udp://t:99999/announce", "malformed"),
    ],
)
async def test_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(TrackerError, match=message):
        await announce(url, peer(HTTP_HASH, 1))


# --- fake UDP trackers ----------------------------------------------------------------------


class FakeUdpTracker(asyncio.DatagramProtocol):
    """Answers connect and announce like a tracker, after dropping the first ``drop`` requests."""

    def __init__(self, drop: int, answer: bool = True) -> None:
        self.drop = drop
        self.answer = answer
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        if len(self.received) <= self.drop or not self.answer:
            return
        assert self.transport is not None
        pkt = decode_request(data)
        if isinstance(pkt, ConnectRequest):
            self.transport.sendto(b"junk", addr)  # too short: must be ignored
            self.transport.sendto(encode_packet(ConnectResponse(pkt.transaction_id ^ 1, 1)), addr)
            self.transport.sendto(encode_packet(ConnectResponse(pkt.transaction_id, 99)), addr)
        elif isinstance(pkt, AnnounceRequestPacket):
            assert pkt.connection_id == 99
            peers = [("192.0.2.1", pkt.port + 1)]
            self.transport.sendto(
                encode_announce_response(pkt.transaction_id, 60, 1, 0, peers), addr
            )


@contextlib.asynccontextmanager
async def udp_tracker(fake: FakeUdpTracker) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: fake, local_addr=("127.0.0.1", 0))
    try:
        yield f"udp://127.0.0.1:{transport.get_extra_info('sockname')[1]}/announce"
    finally:
        transport.close()


async def test_udp_lost_datagrams_are_retransmitted() -> None:
    fake = FakeUdpTracker(drop=2)
    async with udp_tracker(fake) as url:
        r = await announce(url, peer(UDP_HASH, 1), timeout=5, udp_base_timeout=0.05)
    assert r.peers == (("192.0.2.1", 40002),)
    kinds = [type(decode_request(d)).__name__ for d in fake.received]
    assert kinds == ["ConnectRequest"] * 3 + ["AnnounceRequestPacket"]
    assert fake.received[0] == fake.received[1] == fake.received[2]


async def test_udp_silent_tracker_times_out_after_backoff() -> None:
    fake = FakeUdpTracker(drop=0, answer=False)
    async with udp_tracker(fake) as url:
        with pytest.raises(TrackerUnreachable, match=r"no reply within 1\.0 s"):
            await announce(url, peer(UDP_HASH, 1), timeout=1.0, udp_base_timeout=0.1)
    # Sent at 0, 0.1, 0.3 and 0.7 s; 1.5 s is past the deadline.
    assert len(fake.received) == 4


async def test_udp_gives_up_after_the_last_retransmission() -> None:
    fake = FakeUdpTracker(drop=0, answer=False)
    async with udp_tracker(fake) as url:
        with pytest.raises(TrackerUnreachable, match="no reply to 9 connect attempts"):
            await announce(url, peer(UDP_HASH, 1), timeout=30, udp_base_timeout=0.001)
    assert len(fake.received) == 9


async def test_udp_closed_port_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(TrackerUnreachable, match="Connection refused"):
        await announce(f"udp://127.0.0.1:{free_port()}", peer(UDP_HASH, 1), timeout=10)
    assert time.monotonic() - started < 5


async def test_udp_unresolvable_host() -> None:
    with pytest.raises(TrackerUnreachable, match="cannot resolve"):
        await announce("udp://no-such-host.invalid:6969", peer(UDP_HASH, 1), timeout=10)
