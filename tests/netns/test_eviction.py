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

from tests.netns.gateway import ORIGIN, Gateway, random_bytes
from tests.netns.testbed import Testbed

pytestmark = pytest.mark.netns

QUOTA = 4 << 20
OBJECTS = 40
POPULAR = 5


@pytest.fixture
def gateway(testbed: Testbed, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The daemon with a 4 MiB quota; the low watermark is the test's parameter (0.6)."""
    low = getattr(request, "param", 0.6)
    gw = Gateway(testbed, tmp_path)
    gw.start_origin()
    config = tmp_path / "quota.toml"
    config.write_text(
        f"[cache]\nquota_bytes = {QUOTA}\nhigh_watermark = 0.9\nlow_watermark = {low}\n"
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


@pytest.mark.parametrize("gateway", [0.75], indirect=True)
def test_a_download_behind_fresh_tokens_earns_its_place_on_a_full_disk(gateway: Gateway) -> None:
    """Tokenised URLs of one download are one object to admission, and a refused fetch still
    finds the stored copy.

    The disk is full of objects fetched three times each; then one 1.2 MiB file is fetched
    under a new token every time. Counted per URL, every token is a one-off, refused forever,
    and every fetch crosses the uplink in full. Counted under its length it wins its place
    after a few requests; and once one copy is stored, a token the quota refuses is still
    matched by fingerprint and served from that copy (no new disk, little uplink).
    """
    gw = gateway
    popular = {f"p{i}.bin": random_bytes(300_000 + i) for i in range(7)}
    for name, body in popular.items():
        url = gw.put(name, body, {"Cache-Control": "max-age=600"})
        for _ in range(3):
            assert gw.curl(url).body == body
    big = random_bytes(1_200 * 1024)
    gw.put("dl.bin", big, {"Cache-Control": "max-age=600"})
    before = gw.metrics()["swarmcache_http_upstream_bytes_total"]
    tokens = 14
    for token in range(tokens):
        got = gw.curl(f"http://{ORIGIN}/dl.bin?token={token}")
        assert got.status == 200 and got.body == big, f"token {token}"
    uplink = gw.metrics()["swarmcache_http_upstream_bytes_total"] - before
    confirmed = gw.metrics().get("swarmcache_fingerprint_confirmed_total", 0)
    assert confirmed >= 2, f"{confirmed} fingerprint matches; uplink {uplink} bytes"
    assert uplink < (tokens - 2) * len(big), f"{uplink} bytes upstream for {tokens} fetches"
    assert blob_disk_bytes(gw.cache_dir) <= QUOTA
