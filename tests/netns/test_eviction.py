"""A small disk quota through the real gateway: many objects served, the cache stays under it.

Subscriber curl → gateway (TPROXY, swarmcache with ``cache.quota_bytes`` = 4 MiB, default
policy: TinyLFU admission + LFU-DA) → origin. Forty objects of 100-400 kB (about 10 MB): first
a scan of all of them with five popular ones in between, then popularity shifts to five other
objects (requested six times each, with more of the scan in between). Every response must be
the origin's bytes; the blob files must never occupy more than the quota (measured from
``st_blocks`` after every request); eviction must have run to let the new favourites in; and
both popular sets must be hits at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.gateway import Gateway, random_bytes
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

QUOTA = 4 << 20
OBJECTS = 40
POPULAR = 5


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(testbed, tmp_path)
    gw.start_origin()
    config = tmp_path / "quota.toml"
    config.write_text(
        f"[cache]\nquota_bytes = {QUOTA}\nhigh_watermark = 0.9\nlow_watermark = 0.6\n"
    )
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def blob_disk_bytes(cache_dir: Path) -> int:
    return sum(
        os.stat(os.path.join(d, f)).st_blocks * 512
        for d, _, files in os.walk(cache_dir / "blobs")
        for f in files
    )


def test_a_small_quota_holds_while_many_objects_are_served(gateway: Gateway) -> None:
    bodies: dict[str, bytes] = {}
    urls: dict[str, str] = {}
    for i in range(OBJECTS):
        name = f"obj{i}.bin"
        bodies[name] = random_bytes(100_000 + i * 7_919)
        urls[name] = gateway.put(name, bodies[name], {"Cache-Control": "max-age=600"})
    assert sum(map(len, bodies.values())) > 2 * QUOTA

    first = [f"obj{i}.bin" for i in range(POPULAR)]
    second = [f"obj{30 + i}.bin" for i in range(POPULAR)]
    rest = [f"obj{i}.bin" for i in range(POPULAR, 30)]
    order: list[str] = []
    for i in range(OBJECTS):
        order += [f"obj{i}.bin", first[i % POPULAR]]
    for n in range(6 * POPULAR):
        order += [second[n % POPULAR], rest[n % len(rest)]]
    order += first + second
    last: dict[str, str] = {}
    peak = 0
    for n, name in enumerate(order):
        got = gateway.curl(urls[name])
        assert got.status == 200
        assert got.body == bodies[name], f"wrong bytes for {name} (request {n})"
        last[name] = got.x_cache
        peak = max(peak, blob_disk_bytes(gateway.cache_dir))
        assert peak <= QUOTA, f"{peak} bytes of blobs on disk after request {n}, quota {QUOTA}"

    metrics = gateway.metrics()
    assert metrics["swarmcache_store_quota_bytes"] == QUOTA
    assert metrics["swarmcache_eviction_runs_total"] >= 1
    assert metrics['swarmcache_evicted_objects_total{kind="http"}'] >= 1
    assert metrics['swarmcache_evicted_bytes_total{kind="http"}'] > 0
    assert metrics["swarmcache_store_bytes"] <= QUOTA
    for name in first + second:
        assert last[name] == "HIT", f"popular {name} was not kept"
