"""Fail-open guard for a daemon that is alive but stuck.

Why it exists: ``--queue-bypass`` only helps when *no* process is bound to the queue. A daemon
that is stopped (SIGSTOP) or whose event loop is blocked keeps the queue bound but never gives a
verdict, so every new subscriber flow on the intercepted ports stalls (testbed notes §4d).
NetfilterQueue cannot set ``NFQA_CFG_F_FAIL_OPEN``, and that would only cover a *full* queue.

Why it is built this way:

* A separate process, so it keeps running whatever happens to the daemon's threads. The daemon
  starts it with :meth:`Watchdog.start` right after :func:`interceptor.rules.install` and calls
  :meth:`Watchdog.heartbeat` every 0.5 s *from its event loop* (or runs :meth:`Watchdog.run` as
  a task). The SYN queue is read by the same loop, so "the loop ticks" is the liveness we need.
* Heartbeats are single bytes on a pipe. The child is
  ``python -m interceptor.watchdog --spec-json JSON --heartbeat-fd N --parent-pid P
  [--timeout S]``; it holds only the read end.
* State machine of the child (the pipe's read end is the only input besides the clock):

  ================  =========================  ==========================================
  state             event                      action / next state
  ================  =========================  ==========================================
  queue enabled     no byte for ``timeout`` s  :func:`~interceptor.rules.disable_queue`
  or unknown                                   -> queue disabled (new SYNs bypass)
  queue disabled    heartbeat byte             :func:`~interceptor.rules.enable_queue`
  or unknown                                   -> queue enabled (the state is unknown at
                                               start: a respawned watchdog may find a queue
                                               its predecessor disabled)
  any               EOF (daemon died, even     :func:`~interceptor.rules.remove`, exit 0
                    ``kill -9``), or
                    SIGTERM/SIGHUP after the
                    parent is gone
  any               stop byte ``Q``            exit 0, rules untouched (the daemon's clean
                                               stop removes them itself)
  ================  =========================  ==========================================

  A failed rule command is logged and retried on the next tick.
* It never outlives the daemon: EOF on the pipe, plus ``PR_SET_PDEATHSIG`` (SIGTERM) for the
  case where the pipe's write end leaked into another process. It runs in its own session so a
  terminal's ^C (sent to the daemon's process group) cannot kill it before it has cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from . import rules
from .rules import InterceptError, InterceptSpec

__all__ = ["DEFAULT_TIMEOUT", "HEARTBEAT_INTERVAL", "Watchdog", "main", "serve"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT = b"."
STOP = b"Q"
_PR_SET_PDEATHSIG = 1
_RESPAWN_DELAY = 5.0


# --------------------------------------------------------------------------- daemon side


class Watchdog:
    """Daemon-side handle: owns the pipe's write end and the child process."""

    def __init__(
        self, spec: InterceptSpec, *, timeout: float = DEFAULT_TIMEOUT, python: str | None = None
    ) -> None:
        self.spec = spec
        self.timeout = timeout
        self.python = python or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._wfd = -1
        self._last_spawn = 0.0

    @classmethod
    def start(
        cls, spec: InterceptSpec, *, timeout: float = DEFAULT_TIMEOUT, python: str | None = None
    ) -> Watchdog:
        """Spawn the watchdog process. Call from the main thread (PDEATHSIG follows the thread
        that forked), after the rules are installed."""
        wd = cls(spec, timeout=timeout, python=python)
        wd._spawn()
        return wd

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        rfd, wfd = os.pipe()  # both non-inheritable (PEP 446): no other child gets the write end
        os.set_blocking(wfd, False)  # a stuck watchdog must never block the event loop
        env = dict(os.environ)
        # make `-m interceptor.watchdog` importable even when the daemon runs from a checkout
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        argv = [
            self.python,
            "-m",
            "interceptor.watchdog",
            "--spec-json",
            self.spec.to_json(),
            "--heartbeat-fd",
            str(rfd),
            "--parent-pid",
            str(os.getpid()),
            "--timeout",
            str(self.timeout),
        ]
        try:
            self._proc = subprocess.Popen(
                argv, pass_fds=(rfd,), start_new_session=True, stdin=subprocess.DEVNULL, env=env
            )
        except BaseException:
            os.close(wfd)
            raise
        finally:
            os.close(rfd)
        self._wfd = wfd
        self._last_spawn = time.monotonic()
        log.info("watchdog started (pid %d, timeout %.1f s)", self._proc.pid, self.timeout)

    def heartbeat(self) -> None:
        """Tell the watchdog the event loop is alive. Never blocks; cheap (one write)."""
        if self._wfd < 0:
            return
        try:
            os.write(self._wfd, HEARTBEAT)
        except BlockingIOError:
            pass  # pipe full: the watchdog is behind; it will still see bytes
        except BrokenPipeError:
            self._respawn()

    def _respawn(self) -> None:
        """The watchdog died under us (killed by hand?): start a new one, at most every 5 s."""
        if time.monotonic() - self._last_spawn < _RESPAWN_DELAY:
            return
        rc = self._proc.wait() if self._proc is not None else None
        log.warning("watchdog exited (rc=%s); starting a new one", rc)
        os.close(self._wfd)
        self._wfd = -1
        self._spawn()

    async def run(self, interval: float = HEARTBEAT_INTERVAL) -> None:
        """Heartbeat forever from the event loop; run it as a named task, cancel on stop."""
        while True:
            self.heartbeat()
            await asyncio.sleep(interval)

    def stop(self, wait: float = 3.0) -> None:
        """Ask the watchdog to exit *without* touching the rules; idempotent.

        The daemon's clean stop then calls :func:`interceptor.rules.remove` itself.
        """
        if self._wfd >= 0:
            # already dead or pipe full: the EOF below still ends it (then *with* removal)
            with contextlib.suppress(OSError):
                os.write(self._wfd, STOP)
            os.close(self._wfd)
            self._wfd = -1
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            log.warning("watchdog %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- watchdog side


def _set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def serve(
    spec: InterceptSpec,
    fd: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    parent_pid: int | None = None,
    run: rules.Runner = subprocess.run,
) -> int:
    """The watchdog loop (see the module docstring's table). Returns the exit status."""
    terminated = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def parent_gone() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    if parent_pid is not None:
        _set_pdeathsig(signal.SIGTERM)
        if parent_gone():  # died before prctl took effect
            log.warning("daemon %d already gone; removing rules", parent_pid)
            rules.remove(spec, run)
            return 0

    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    tick_ms = max(10, int(min(0.1, timeout / 5) * 1000))
    last_beat = time.monotonic()
    # Unknown at start: a respawned watchdog may inherit a queue its predecessor disabled. The
    # first heartbeat therefore refills the queue chain (atomic and idempotent).
    queue_enabled: bool | None = None

    while True:
        poller.poll(tick_ms)
        if terminated:
            if parent_gone():
                log.warning("daemon %s died (signal); removing rules", parent_pid)
                rules.remove(spec, run)
            else:
                log.info("terminated while the daemon lives; leaving the rules to it")
            return 0
        beat = False
        eof = False
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            if STOP in data:
                log.info("clean stop requested; rules left to the daemon")
                return 0
            beat = True
        now = time.monotonic()
        if beat:
            if queue_enabled is not True:
                try:
                    rules.enable_queue(spec, run)
                except InterceptError as exc:
                    log.error("could not re-enable the SYN queue: %s", exc)
                else:
                    if queue_enabled is False:
                        gap = now - last_beat
                        log.warning("heartbeat back after %.2f s: SYN queue re-enabled", gap)
                    queue_enabled = True
            last_beat = now
        if eof:
            log.warning("daemon pipe closed (daemon died); removing rules")
            rules.remove(spec, run)
            return 0
        if queue_enabled is not False and now - last_beat > timeout:
            try:
                rules.disable_queue(spec, run)
            except InterceptError as exc:
                log.error("could not disable the SYN queue: %s", exc)
            else:
                queue_enabled = False
                log.warning(
                    "no heartbeat for %.2f s: SYN queue disabled (failing open)", now - last_beat
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interceptor.watchdog", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--spec-json", required=True, help="InterceptSpec.to_json() output")
    parser.add_argument("--heartbeat-fd", type=int, required=True, help="read end of the pipe")
    parser.add_argument("--parent-pid", type=int, default=None, help="the daemon's pid")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="swarmcache-watchdog[%(process)d]: %(levelname)s %(message)s"
    )
    spec = InterceptSpec.from_json(args.spec_json)
    return serve(spec, args.heartbeat_fd, timeout=args.timeout, parent_pid=args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
