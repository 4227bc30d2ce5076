"""Python handle on ``deploy/testbed.sh``: three namespaces (sub, gw, net) per test.

Why it is built this way: the shell script is the one definition of the topology (operators
and the demo use it too); this class only adds what tests need: a unique random prefix so
tests and other users of the machine never collide, ``run``/``popen`` inside a namespace, and a
teardown that kills what the test started and then deletes the namespaces (the script kills
every remaining process inside them first), so nothing outlives a test, even a failed one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["REPO", "TESTBED_SH", "Testbed", "netns_unavailable"]

REPO = Path(__file__).resolve().parents[2]
TESTBED_SH = REPO / "deploy" / "testbed.sh"
_ALPHABET = string.ascii_lowercase + string.digits
_ROLES = ("sub", "gw", "net")


def _random_prefix() -> str:
    while True:
        prefix = "t" + "".join(secrets.choice(_ALPHABET) for _ in range(5))
        if not any(Path(f"/var/run/netns/{prefix}{r}").exists() for r in _ROLES):
            return prefix


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can (probes ``ip netns add``)."""
    if os.geteuid() != 0:
        return "not running as root"
    probe = f"{_random_prefix()}probe"
    res = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False, timeout=10
    )
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False, timeout=10)
    return None


class Testbed:
    """``${prefix}sub`` 10.77.1.2 -- ``${prefix}gw`` 10.77.1.1/10.77.2.1 -- ``${prefix}net``
    10.77.2.2. Namespace arguments accept a role (``"sub"``, ``"gw"``, ``"net"``) or a full
    namespace name."""

    __test__ = False  # not a pytest test class, despite the name

    SUB_IP = "10.77.1.2"
    GW_SUB_IP = "10.77.1.1"
    GW_NET_IP = "10.77.2.1"
    NET_IP = "10.77.2.2"
    SUBSCRIBERS = "10.77.1.0/24"

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or _random_prefix()
        self.sub = f"{self.prefix}sub"
        self.gw = f"{self.prefix}gw"
        self.net = f"{self.prefix}net"
        self._procs: list[subprocess.Popen[Any]] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}" if name in _ROLES else name

    def _script(self, action: str) -> None:
        subprocess.run(
            [str(TESTBED_SH), action, self.prefix],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        """Kill tracked processes, then let the script kill the rest and delete the namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # SIGKILL also ends a SIGSTOPped process
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        self._script("down")

    def run(
        self,
        ns: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` and wait; stdout/stderr captured as text."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(ns), *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; killed at teardown. ``ip netns exec`` execs the
        command, so the Popen's pid is the command's own pid (signals reach it directly).
        stdout/stderr default to DEVNULL (pass files to keep logs)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(ns), *argv], **kw
        )
        self._procs.append(proc)
        return proc

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
