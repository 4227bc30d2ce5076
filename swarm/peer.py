"""One BitTorrent peer connection on a raw non-blocking socket: moves bytes, nothing more.

Why it is built this way
------------------------
* The protocol lives in :class:`swarm.peerwire.PeerWireReader`; this class only feeds it what
  the socket gives and hands each event to a handler. Downloader and seeder share it.
* Raw socket plus ``loop.add_reader``/``add_writer`` instead of an asyncio Transport, because
  the seeder's blocks leave with ``os.sendfile`` straight from the payload file, interleaved
  with ordinary messages. A Transport has its own write buffer that a direct ``sendfile`` would
  overtake; here one output queue holds both kinds of item, in order.
* Reads are large (256 KiB per ``recv``) and a readable callback drains at most a few MiB
  before yielding, so one fast peer cannot starve the loop; ``pause_reading`` is the
  back-pressure a seeder applies when a peer's queued output grows.
* Consecutive byte items are written with one ``sendmsg`` (gathered), so a burst of small
  messages (have, request) costs one system call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from swarm.errors import RemoteProtocolError
from swarm.peerwire import NEED_DATA, Event, HandshakeMode, PeerWireReader

__all__ = ["PeerHandler", "PeerSocket", "connect_peer"]

log = logging.getLogger(__name__)

_RECV_BYTES: Final = 256 << 10
_TURN_BYTES: Final = 4 << 20
_GATHER_MAX: Final = 64


class PeerHandler(Protocol):
    def peer_event(self, peer: PeerSocket, event: Event) -> None: ...

    def peer_closed(self, peer: PeerSocket, reason: str) -> None: ...


@dataclass(slots=True)
class _FileRange:
    fd: int
    offset: int
    remaining: int
    on_sent: Callable[[int], None] | None


class PeerSocket:
    """A connected peer. ``handler`` may be replaced until the first event is delivered."""

    def __init__(
        self,
        sock: socket.socket,
        handler: PeerHandler,
        *,
        handshake: HandshakeMode = "full",
        reader: PeerWireReader | None = None,
    ) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.reader = reader or PeerWireReader(handshake=handshake)
        peer = sock.getpeername()
        self.address: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.closed = False
        self.close_reason = ""
        self.received_bytes = 0
        self.sent_bytes = 0
        self._out: deque[bytes | _FileRange] = deque()
        self.queued_bytes = 0
        self._writing = False
        self._reading = False
        # While received messages are being handled, sends are only queued: everything the
        # handler answers to one read batch leaves in one gathered write at its end.
        self._batching = False
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<PeerSocket {self.address[0]}:{self.address[1]}>"

    # --- reading ---------------------------------------------------------------------------

    def start(self) -> None:
        self.resume_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._loop.add_reader(self.fd, self._on_readable)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        self._batching = True
        try:
            self._read_batch()
        finally:
            self._batching = False
        if self._out and not self.closed:
            self._flush()

    def _read_batch(self) -> None:
        got = 0
        try:
            while got < _TURN_BYTES and self._reading:
                try:
                    data = self.sock.recv(_RECV_BYTES)
                except BlockingIOError:
                    break
                if not data:
                    self.reader.feed(b"")
                    self._dispatch()
                    self.close("peer closed the connection")
                    return
                got += len(data)
                self.received_bytes += len(data)
                self.reader.feed(data)
                self._dispatch()
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            self.close(f"protocol error: {exc}")
        except OSError as exc:
            self.close(f"receive failed: {exc}")

    def _dispatch(self) -> None:
        reader, handler = self.reader, self.handler
        while not self.closed:
            event = reader.next_event()
            if event is NEED_DATA:
                return
            assert not isinstance(event, type(NEED_DATA))
            handler.peer_event(self, event)
            handler = self.handler

    # --- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._out.append(data)
        self.queued_bytes += len(data)
        self._flush()

    def send_file(
        self, fd: int, offset: int, count: int, on_sent: Callable[[int], None] | None = None
    ) -> None:
        """Queue ``count`` bytes of ``fd`` from ``offset``; they leave with ``os.sendfile``.

        ``fd`` must stay open until ``on_sent(count)`` is called (or the connection closes).
        """
        if self.closed or count <= 0:
            return
        self._out.append(_FileRange(fd, offset, count, on_sent))
        self.queued_bytes += count
        self._flush()

    def _flush(self) -> None:
        if self._writing or self._batching:
            return  # the writer callback, or the end of the read batch, will get to it
        try:
            done = self._write_some()
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return
        if not done:
            self._writing = True
            self._loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            done = self._write_some()
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return
        if done:
            self._writing = False
            self._loop.remove_writer(self.fd)

    def _write_some(self) -> bool:
        """Write until the queue is empty (True) or the socket is full (False)."""
        out = self._out
        while out:
            head = out[0]
            if isinstance(head, _FileRange):
                try:
                    n = os.sendfile(self.fd, head.fd, head.offset, head.remaining)
                except BlockingIOError:
                    return False
                if n == 0:
                    raise OSError(errno.EIO, "payload file ended before the block did")
                head.offset += n
                head.remaining -= n
                self.queued_bytes -= n
                self.sent_bytes += n
                if head.remaining == 0:
                    out.popleft()
                    if head.on_sent is not None:
                        head.on_sent(n)
                continue
            batch: list[bytes] = []
            more = 0
            for item in out:
                if not isinstance(item, bytes):
                    # A block follows its piece header: let the kernel put both in one segment.
                    more = socket.MSG_MORE
                    break
                if len(batch) >= _GATHER_MAX:
                    break
                batch.append(item)
            try:
                n = self.sock.sendmsg(batch, (), more)
            except BlockingIOError:
                return False
            self.queued_bytes -= n
            self.sent_bytes += n
            while n:
                first = out[0]
                assert isinstance(first, bytes)
                if n >= len(first):
                    n -= len(first)
                    out.popleft()
                else:
                    out[0] = first[n:]
                    n = 0
        return True

    # --- closing ---------------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False
        self._out.clear()
        self.queued_bytes = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        self.handler.peer_closed(self, reason)


async def connect_peer(
    address: tuple[str, int],
    *,
    timeout: float,
    bind: str | None = None,
) -> socket.socket:
    """A connected non-blocking TCP socket to ``address`` (raises OSError / TimeoutError)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if bind is not None:
            sock.bind((bind, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock
