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
import time
from collections.abc import Callable

__all__ = ["SpliceError", "splice_into"]

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
