"""The kernel relay behind tunnels: every byte both ways, half-closes carried across."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket

import pytest

from swarmcache.http.splice import SpliceError, splice_both_ways


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (splice needs real sockets, not AF_UNIX)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


async def _send_all_then_close(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def _read_to_eof(sock: socket.socket, *, pause: float = 0.0) -> bytes:
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    while True:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        if pause:
            await asyncio.sleep(pause)


def _relay_setup() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    a_outer, a_inner = _pair()
    b_inner, b_outer = _pair()
    for s in (a_outer, a_inner, b_inner, b_outer):
        s.setblocking(False)
    return a_outer, a_inner, b_inner, b_outer


@pytest.mark.parametrize("slow_reader", [False, True])
def test_every_byte_crosses_both_ways_and_half_closes_propagate(slow_reader: bool) -> None:
    up = os.urandom(3 << 20)
    down = os.urandom(5 << 20) + b"tail"

    async def main() -> tuple[bytes, bytes, int]:
        a_outer, a_inner, b_inner, b_outer = _relay_setup()
        try:
            relay = asyncio.create_task(
                splice_both_ways(a_inner.fileno(), b_inner.fileno(), idle_timeout=30)
            )
            results = await asyncio.gather(
                _send_all_then_close(a_outer, up),
                _send_all_then_close(b_outer, down),
                _read_to_eof(b_outer),
                # A slow receiver holds the relay back through TCP, not through memory.
                _read_to_eof(a_outer, pause=0.002 if slow_reader else 0.0),
            )
            moved = await relay
            return results[2], results[3], moved
        finally:
            for s in (a_outer, a_inner, b_inner, b_outer):
                s.close()

    got_up, got_down, moved = asyncio.run(main())
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert moved == len(up) + len(down)


def test_an_idle_relay_ends_when_asked_to() -> None:
    async def main() -> None:
        a_outer, a_inner, b_inner, b_outer = _relay_setup()
        try:
            with pytest.raises(SpliceError):
                await splice_both_ways(a_inner.fileno(), b_inner.fileno(), idle_timeout=0.5)
        finally:
            for s in (a_outer, a_inner, b_inner, b_outer):
                s.close()

    asyncio.run(main())


def test_a_reset_ends_the_relay_with_an_error() -> None:
    async def main() -> None:
        a_outer, a_inner, b_inner, b_outer = _relay_setup()
        try:
            relay = asyncio.create_task(splice_both_ways(a_inner.fileno(), b_inner.fileno()))
            await asyncio.sleep(0.05)
            # SO_LINGER 0: close sends RST instead of FIN.
            b_outer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            b_outer.close()
            await asyncio.get_running_loop().sock_sendall(a_outer, b"x" * 100_000)
            with pytest.raises(OSError):
                await asyncio.wait_for(relay, 10)
        finally:
            for s in (a_outer, a_inner, b_inner):
                s.close()

    asyncio.run(main())


def test_bytes_left_in_the_pipe_after_a_turn_are_delivered_without_more_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that then waits for its answer (ssh, rsync) must arrive whole: when a turn
    ends with bytes still in the pipe, nothing more may be needed from the sender."""
    import swarmcache.http.splice as splice

    monkeypatch.setattr(splice, "_TURN_BYTES", 1)
    request = os.urandom(4 << 20)

    async def main() -> bytes:
        a_outer, a_inner, b_inner, b_outer = _relay_setup()
        # A small send buffer towards the receiver: the pipe is emptied in several writes.
        b_inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
        b_outer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        relay = asyncio.create_task(splice_both_ways(a_inner.fileno(), b_inner.fileno()))
        try:
            loop = asyncio.get_running_loop()
            # The whole request is sent, and the sender waits (no more bytes, no EOF).
            sender = asyncio.create_task(loop.sock_sendall(a_outer, request))
            got = bytearray()

            async def read_request() -> None:
                while len(got) < len(request):
                    chunk = await loop.sock_recv(b_outer, 1 << 16)
                    assert chunk, "relay closed early"
                    got.extend(chunk)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read_request(), 30)
            return bytes(got)
        finally:
            sender.cancel()
            relay.cancel()
            with contextlib.suppress(BaseException):
                await relay
            for s in (a_outer, a_inner, b_inner, b_outer):
                s.close()

    got = asyncio.run(main())
    assert len(got) == len(request)
    assert got == request


def test_a_relay_that_cannot_get_its_second_pipe_leaks_no_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of descriptors (EMFILE) is when a leak hurts most: the first pipe is closed too."""
    import swarmcache.http.splice as splice

    opened: list[int] = []
    real_pipe2 = os.pipe2

    def pipe2(flags: int) -> tuple[int, int]:
        if opened:
            raise OSError(24, "Too many open files")
        pair = real_pipe2(flags)
        opened.extend(pair)
        return pair

    monkeypatch.setattr(splice.os, "pipe2", pipe2)

    async def main() -> None:
        a_outer, a_inner, b_inner, b_outer = _relay_setup()
        try:
            with pytest.raises(OSError):
                await splice_both_ways(a_inner.fileno(), b_inner.fileno())
        finally:
            for s in (a_outer, a_inner, b_inner, b_outer):
                s.close()

    asyncio.run(main())
    assert opened
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
