"""Fixtures for the real-kernel namespace tests: a fresh, uniquely named testbed per test."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gateway import Gateway
from .testbed import Testbed, netns_unavailable

_TOOLS = ("ip", "iptables", "iptables-restore", "iptables-save", "curl")


@functools.cache
def _unavailable() -> str | None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return netns_unavailable()


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A testbed that is up for the test and torn down afterwards, also when the test fails
    (and when ``up`` itself fails half-way)."""
    why = _unavailable()
    if why is not None:
        reason = f"needs root and network namespaces: {why}"
        print(reason, file=sys.stderr)
        pytest.skip(reason=reason)
    bed = Testbed()
    try:
        bed.up()
        yield bed
    finally:
        bed.down()


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    """The plain gateway: an origin in the internet namespace and the daemon with defaults.
    Tests that need another configuration define their own ``gateway``."""
    gw = Gateway(testbed, tmp_path)
    gw.start_origin()
    gw.start_daemon()
    try:
        yield gw
    finally:
        gw.stop_daemon()
