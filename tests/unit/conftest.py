"""Fixtures shared by the unit tests: a real store in a temp dir, and a handler over one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.store import Store
from swarmcache.config import CacheConfig, Config
from swarmcache.http.accesslog import AccessLog
from swarmcache.http.handler import CacheHandler
from swarmcache.metrics import Metrics


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store", map_size=1 << 30)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[CacheHandler]:
    """A CacheHandler with default config over its own small store (no sockets)."""
    config = dataclasses.replace(
        Config(), cache=CacheConfig(dir=str(tmp_path), index_map_bytes=1 << 24)
    )
    handler_store = Store(tmp_path, map_size=1 << 24)
    try:
        yield CacheHandler(
            store=handler_store, metrics=Metrics(), config=config, access_log=AccessLog("")
        )
    finally:
        handler_store.close()
