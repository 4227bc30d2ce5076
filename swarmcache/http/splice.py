"""Moving an origin's body from its socket into a blob file without passing through Python.

Why: on a cold miss the bytes used to be copied socket → Python → file, and hashed on the
event loop; that capped a miss well below a direct download. ``os.splice`` moves socket pages
into a pipe and from the pipe into the page cache inside the kernel, so the event loop only
issues two system calls per megabyte. The blob's digest is computed from the file when it is
committed, in a worker thread (see :meth:`cache.store.BlobWriter.account_written`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
import typing
from collections.abc import Callable

__all__ = ["SpliceError", "splice_both_ways", "splice_into"]

_F_SETPIPE_SZ = 1031  # linux/fcntl.h; not exported by the fcntl module on 3.11
_PIPE_BYTES = 1 << 20
# Bytes moved per readiness callback before yielding, so one fast origin cannot starve the
# other connections the loop serves.
_TURN_BYTES = 8 << 20


class SpliceError(ConnectionError):
    """The origin closed or stalled before the announced length arrived."""


async def splice_into(
    sock_fd: int,
    file_fd: int,
    length: int,
    *,
    on_progress: Callable[[int], None],
    idle_timeout: float,
) -> None:
    """Move exactly ``length`` bytes from ``sock_fd`` to ``file_fd`` (at its position).

    ``on_progress(n)`` is called after every ``n`` bytes have landed in the file.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    remaining = length
    last_progress = time.monotonic()
    # If refused, the default 64 KiB pipe still works, with more system calls.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)

    def on_readable() -> None:
        nonlocal remaining, last_progress
        moved_this_turn = 0
        try:
            while remaining > 0 and moved_this_turn < _TURN_BYTES:
                try:
                    n = os.splice(
                        sock_fd,
                        write_end,
                        min(remaining, _PIPE_BYTES),
                        flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                    )
                except BlockingIOError:
                    return
                if n == 0:
                    raise SpliceError(f"origin closed with {remaining} body bytes missing")
                left = n
                while left:
                    left -= os.splice(read_end, file_fd, left, flags=os.SPLICE_F_MOVE)
                remaining -= n
                moved_this_turn += n
                last_progress = time.monotonic()
                on_progress(n)
            if remaining == 0 and not done.done():
                done.set_result(None)
        except OSError as exc:
            if not done.done():
                done.set_exception(exc)

    def check_idle() -> None:
        if done.done():
            return
        if time.monotonic() - last_progress > idle_timeout:
            done.set_exception(SpliceError("origin stalled"))
            return
        timer[0] = loop.call_later(1.0, check_idle)

    timer = [loop.call_later(1.0, check_idle)]
    loop.add_reader(sock_fd, on_readable)
    try:
        if remaining == 0:
            return
        await done
    finally:
        timer[0].cancel()
        loop.remove_reader(sock_fd)
        os.close(read_end)
        os.close(write_end)


async def splice_both_ways(fd_a: int, fd_b: int, *, idle_timeout: float | None = None) -> int:
    """Relay two connected sockets to each other in the kernel until both directions end.

    Each direction is socket → pipe → socket with non-blocking splices: the source is read
    only while its pipe can be emptied, so a slow receiver pushes back on the sender through
    TCP instead of through our memory. An end of stream becomes a half-close of the other
    side; a reset, or an idle period of ``idle_timeout`` if one is given, ends both (an ssh
    session may rightly sit idle for hours). Returns bytes moved. The caller owns (and
    closes) both descriptors.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    moved = 0
    last_progress = time.monotonic()
    pipes: list[tuple[int, int]] = []

    class _Direction:
        def __init__(self, src: int, dst: int) -> None:
            self.src, self.dst = src, dst
            self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            pipes.append((self.read_end, self.write_end))
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
            self.in_pipe = 0
            self.eof = False
            self.finished = False
            self.reading = False
            self.writing = False

        def want_read(self, on: bool) -> None:
            if on and not self.reading:
                loop.add_reader(self.src, self.pump)
            elif not on and self.reading:
                loop.remove_reader(self.src)
            self.reading = on

        def want_write(self, on: bool) -> None:
            if on and not self.writing:
                loop.add_writer(self.dst, self.pump)
            elif not on and self.writing:
                loop.remove_writer(self.dst)
            self.writing = on

        def pump(self) -> None:
            nonlocal moved, last_progress
            try:
                turn = 0
                while turn < _TURN_BYTES:
                    if self.in_pipe:
                        try:
                            n = os.splice(
                                self.read_end,
                                self.dst,
                                self.in_pipe,
                                flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                            )
                        except BlockingIOError:
                            # The receiver is full: stop reading until it drains.
                            self.want_read(False)
                            self.want_write(True)
                            return
                        self.in_pipe -= n
                        moved += n
                        turn += n
                        last_progress = time.monotonic()
                        continue
                    if self.eof:
                        self.finish()
                        return
                    try:
                        n = os.splice(
                            self.src,
                            self.write_end,
                            _PIPE_BYTES,
                            flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                        )
                    except BlockingIOError:
                        self.want_write(False)
                        self.want_read(True)
                        return
                    if n == 0:
                        self.eof = True
                    self.in_pipe += n
            except OSError as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            # A full turn: let other connections run, then continue. Bytes still in the pipe
            # go on when the receiver can take them: the sender may have nothing more to send.
            self.want_read(not self.in_pipe)
            self.want_write(bool(self.in_pipe))

        def finish(self) -> None:
            self.want_read(False)
            self.want_write(False)
            self.finished = True
            with contextlib.suppress(OSError):
                socket_shutdown_write(self.dst)
            if all(d.finished for d in directions) and not done.done():
                done.set_result(None)

        def stop(self) -> None:
            self.want_read(False)
            self.want_write(False)

    directions: list[_Direction] = []

    def check_idle() -> None:
        if done.done():
            return
        if time.monotonic() - last_progress > typing.cast(float, idle_timeout):
            done.set_exception(SpliceError("relay idle"))
            return
        timer[0] = loop.call_later(1.0, check_idle)

    timer: list[asyncio.TimerHandle] = []
    try:
        # Inside the try: a second pipe that cannot be had (EMFILE) must not leak the first.
        directions += [_Direction(fd_a, fd_b), _Direction(fd_b, fd_a)]
        if idle_timeout is not None:
            timer.append(loop.call_later(1.0, check_idle))
        for direction in directions:
            direction.want_read(True)
        await done
    finally:
        for handle in timer:
            handle.cancel()
        for direction in directions:
            direction.stop()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)
    return moved


def socket_shutdown_write(fd: int) -> None:
    """Half-close a socket given only its descriptor (a duplicate shares the connection)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.close()
