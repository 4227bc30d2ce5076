"""The operator CLI against a running gateway: every command, as a subprocess, the way an
operator's shell or script runs it.

Subscriber curl → gateway namespace (interception, swarmcache) → origin in the internet
namespace; ``swarmcache COMMAND`` runs in the gateway namespace against the admin API on its
loopback. What is asserted is what an operator sees: exit codes, ``--json`` parsed back, and the
effect of purge and pin on what is served next (X-Cache, requests reaching the origin).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarm.bencode import bencode
from tests.netns.gateway import ORIGIN, Fetch, Gateway, random_bytes
from tests.netns.testbed import REPO, Testbed

pytestmark = pytest.mark.netns

MAX_AGE = {"Cache-Control": "max-age=600"}


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return json.loads(self.out)


class Operator:
    """Runs ``swarmcache`` in the gateway namespace, where the admin API listens."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def __call__(self, *argv: str, env: dict[str, str] | None = None) -> Ran:
        result = subprocess.run(
            ["ip", "netns", "exec", self.gw.tb.gw, sys.executable, "-m", "swarmcache", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, **(env or {})},
            check=False,
        )
        return Ran(result.returncode, result.stdout, result.stderr)

    def json(self, *argv: str) -> Any:
        return self(*argv, "--json").json()


@pytest.fixture
def op(gateway: Gateway) -> Operator:
    return Operator(gateway)


def fetch(gateway: Gateway, name: str, host: str | None = None) -> Fetch:
    """GET /name from the origin's address, as ``host`` if given (the cache keys by Host)."""
    args = ("-H", f"Host: {host}") if host else ()
    return gateway.curl(f"http://{ORIGIN}/{name}", *args)


def origin_hits(gateway: Gateway, name: str) -> int:
    return len(gateway.origin_requests("/" + name))


def test_stats_top_and_inspect_report_what_was_served(gateway: Gateway, op: Operator) -> None:
    hot = random_bytes(200_000)
    cold = random_bytes(30_000)
    hot_url = gateway.put("hot.bin", hot, MAX_AGE)
    cold_url = gateway.put("cold.bin", cold, MAX_AGE)
    # Each miss is let be indexed before the hits: a request arriving between a fill's last
    # byte and its index entry joins the fill instead, and is not a hit of the stored object.
    for n, (url, body, fetches) in enumerate(((hot_url, hot, 4), (cold_url, cold, 2)), 1):
        assert gateway.curl(url).body == body
        gateway.wait_until(
            lambda n=n: gateway.metrics().get("swarmcache_store_objects") == n,
            "the fill was not indexed",
        )
        for _ in range(fetches - 1):
            assert gateway.curl(url).body == body  # hot: 1 miss, 3 hits; cold: 1 miss, 1 hit

    stats = op.json("stats")
    http = stats["http"]
    assert stats["objects"] == 2 and stats["bytes"] == len(hot) + len(cold)
    assert http["requests"]["hit"] == 4 and http["requests"]["miss"] == 2
    assert http["request_hit_ratio"] == pytest.approx(4 / 6, abs=1e-3)
    assert http["saved_bytes"] == 3 * len(hot) + len(cold)
    assert http["upstream_bytes"] >= len(hot) + len(cold)
    assert 0 < http["byte_hit_ratio"] < 1
    assert stats["disk"]["total_bytes"] > 0 and stats["bittorrent"]["torrents"] == 0
    text = op("stats")
    assert text.code == 0 and "66.7 % of requests" in text.out

    top = op.json("top")
    assert [row["url"] for row in top["http"]] == [hot_url, cold_url]
    assert top["http"][0]["hits"] == 3
    assert top["http"][0]["bytes_saved"] == 3 * len(hot)
    assert top["http"][0]["destination"] == f"{ORIGIN}:80"
    assert top["torrents"] == []
    only = op.json("top", "--kind", "http", "--limit", "1")
    assert set(only) == {"http"} and len(only["http"]) == 1
    assert op("top").code == 0

    view = op.json("inspect", hot_url)
    assert view["url"] == hot_url and view["pinned_by"] == [] and view["in_flight"] == []
    [obj] = view["objects"]
    assert obj["status"] == 200 and obj["size"] == len(hot)
    assert obj["blob"] == hashlib.sha256(hot).hexdigest()  # bodies are stored by content hash
    assert obj["hits"] == 3 and obj["freshness"] == "fresh" and obj["lifetime_s"] == 600
    assert obj["validators"]["last_modified"] and not obj["pinned"]
    assert ("cache-control", "max-age=600") in {(n.lower(), v) for n, v in obj["headers"]}
    assert op("inspect", hot_url).code == 0

    missing = op("inspect", f"http://{ORIGIN}/never.bin")
    assert missing.code == 4 and "not in the cache" in missing.err
    assert op("inspect", "https://example.com/").code == 2


def test_purge_makes_the_next_request_a_miss(gateway: Gateway, op: Operator) -> None:
    for name in ("page.html", "dir/a.bin", "dir/b.bin", "other.bin"):
        (gateway.www / name).parent.mkdir(exist_ok=True)
        gateway.put(name, random_bytes(20_000), MAX_AGE)
    hosts = {"page.html": "www.example.test", "dir/a.bin": "cdn.example.test"}
    hosts |= {"dir/b.bin": "cdn.example.test", "other.bin": "other.test"}

    def miss_then_hits(name: str) -> None:
        assert fetch(gateway, name, hosts[name]).x_cache == "MISS"
        for _ in range(2):  # the second hit is served from the in-memory copy
            assert fetch(gateway, name, hosts[name]).x_cache == "HIT"

    for name in hosts:
        miss_then_hits(name)
    assert origin_hits(gateway, "page.html") == 1

    # An exact URL, spelt as an operator might: upper-case host, explicit default port.
    purged = op.json("purge", "http://WWW.example.test:80/page.html")
    assert purged == {
        "url": "http://www.example.test/page.html",
        "purged_objects": 1,
        "dropped_fills": 0,
    }
    again = fetch(gateway, "page.html", hosts["page.html"])
    assert again.x_cache == "MISS" and origin_hits(gateway, "page.html") == 2
    assert fetch(gateway, "dir/a.bin", hosts["dir/a.bin"]).x_cache == "HIT"

    prefix = op.json("purge", "--prefix", "http://cdn.example.test/dir/a")
    assert prefix["purged_objects"] == 1
    assert fetch(gateway, "dir/a.bin", hosts["dir/a.bin"]).x_cache == "MISS"
    assert fetch(gateway, "dir/b.bin", hosts["dir/b.bin"]).x_cache == "HIT"

    by_host = op("purge", "--host", "*.example.test")
    assert by_host.code == 0 and "purged 3 objects" in by_host.out
    for name in ("page.html", "dir/a.bin", "dir/b.bin"):
        assert fetch(gateway, name, hosts[name]).x_cache == "MISS"
    assert fetch(gateway, "other.bin", hosts["other.bin"]).x_cache == "HIT"
    assert origin_hits(gateway, "other.bin") == 1

    # Nothing left to purge, bad input, bad usage: distinct exit codes with a reason.
    nothing = op("purge", "--host", "nothing.test")
    assert nothing.code == 4 and "nothing in the cache matches host nothing.test" in nothing.err
    bad = op("purge", "--host", "bad host!")
    assert bad.code == 2 and "not a host pattern" in bad.err
    assert op("purge").code == 2
    assert op("purge", "--host", "a.test", "--prefix", "http://a.test/").code == 2
    assert op("purge", "ftp://example.test/x").code == 2


def test_purge_during_a_fill_serves_the_client_whole_and_stores_nothing(
    gateway: Gateway, op: Operator, tmp_path: Path
) -> None:
    body = random_bytes(3 << 20)
    gate = tmp_path / "release"
    url = gateway.put("slow.bin", body, {**MAX_AGE, "X-Origin-Hold": f"{1 << 20} {gate}"})
    out = tmp_path / "first.bin"
    first = gateway.tb.popen(gateway.tb.sub, "curl", "-s", "--max-time", "120", "-o", str(out), url)

    def filling() -> bool:
        ran = op("inspect", url, "--json")
        return ran.code == 0 and bool(json.loads(ran.out)["in_flight"])

    gateway.wait_until(filling, "the fill never showed up in inspect", timeout=60)
    purged = op.json("purge", url)
    assert purged["dropped_fills"] == 1 and purged["purged_objects"] == 0
    gate.touch()
    assert first.wait(timeout=120) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()

    # The purged fill was never indexed: the next request goes to the origin again.
    gateway.wait_until(lambda: op("inspect", url).code == 4, "purged fill was indexed")
    again = gateway.curl(url)
    assert again.x_cache == "MISS" and again.body == body
    assert origin_hits(gateway, "slow.bin") == 2
    assert gateway.curl(url).x_cache == "HIT"


def _torrent(tmp_path: Path) -> tuple[Path, str, int]:
    payload = random_bytes(100_000)
    piece = 16384
    pieces = b"".join(
        hashlib.sha1(payload[i : i + piece]).digest() for i in range(0, len(payload), piece)
    )
    info = {b"length": len(payload), b"name": b"cli.bin", b"piece length": piece, b"pieces": pieces}
    path = tmp_path / "cli.torrent"
    path.write_bytes(bencode({b"info": info}))
    return path, hashlib.sha1(bencode(info)).hexdigest(), len(pieces) // 20


def test_pins_apply_to_future_fills_survive_a_restart_and_are_removed_by_unpin(
    gateway: Gateway, op: Operator, tmp_path: Path
) -> None:
    url = gateway.put("pinned.bin", random_bytes(50_000), MAX_AGE)
    free = gateway.put("free.bin", random_bytes(50_000), MAX_AGE)

    # A URL pinned before it is cached is stored pinned.
    rule = op.json("pin", url)
    assert rule["created"] and rule["rule"]["kind"] == "url" and rule["objects_pinned"] == 0
    gateway.curl(url)
    gateway.curl(free)
    assert op.json("inspect", url)["objects"][0]["pinned"]
    assert not op.json("inspect", free)["objects"][0]["pinned"]

    # A host rule pins what is already stored under it.
    host = op.json("pin", "--host", ORIGIN)
    assert host["created"] and host["objects_pinned"] == 1  # free.bin; pinned.bin already was
    assert op.json("pin", "--host", ORIGIN)["created"] is False
    prefix = op("pin", "--prefix", f"http://{ORIGIN}/pin")
    assert prefix.code == 0 and "pinned prefix" in prefix.out

    # Torrents: a .torrent file (no peers: it stays at 0 %), then by info hash.
    torrent, info_hash, n_pieces = _torrent(tmp_path)
    added = op.json("pin", str(torrent), "--no-wait")
    assert added["info_hash"] == info_hash
    details = op.json("inspect", info_hash)
    assert details["pinned"] and details["pieces"] == n_pieces and details["have"] == 0

    listed = op.json("pins")
    assert [(r["kind"], r["pattern"]) for r in listed["rules"]] == [
        ("host", ORIGIN),
        ("prefix", f"http://{ORIGIN}/pin"),
        ("url", url),
    ]
    assert [t["info_hash"] for t in listed["torrents"]] == [info_hash]

    # Restart with an admin token: the rules and flags are still there; the token is required.
    gateway.stop_daemon()
    down = op("pins")
    assert down.code == 3
    assert "swarmcache daemon not reachable at 127.0.0.1:9480: connection refused" in down.err
    config = tmp_path / "admin.toml"
    config.write_text('[admin]\ntoken = "s3cret"\n')
    gateway.start_daemon("--config", str(config))
    refused = op("pins")
    assert refused.code == 1 and "admin token required" in refused.err and "--token" in refused.err
    assert op("pins", "--token", "s3cret", "--json").json()["rules"] == listed["rules"]
    token = {"SWARMCACHE_TOKEN": "s3cret"}
    assert json.loads(op("pins", "--json", env=token).out)["torrents"] == listed["torrents"]
    view = json.loads(op("inspect", url, "--json", env=token).out)
    assert view["objects"][0]["pinned"]
    assert {r["kind"] for r in view["pinned_by"]} == {"url", "host", "prefix"}
    assert gateway.curl(url).x_cache == "HIT"  # still served from the cache

    # Unpin: a flag clears only once no rule selects the object any more.
    assert op("unpin", url, env=token).code == 0
    assert op("unpin", "--prefix", f"http://{ORIGIN}/pin", env=token).code == 0
    assert json.loads(op("inspect", url, "--json", env=token).out)["objects"][0]["pinned"]
    gone = json.loads(op("unpin", "--host", ORIGIN, "--json", env=token).out)
    assert gone["objects_unpinned"] == 2
    for each in (url, free):
        assert not json.loads(op("inspect", each, "--json", env=token).out)["objects"][0]["pinned"]
    again = op("unpin", url, env=token)
    assert again.code == 4 and "no pin rule url" in again.err
    assert op("pin", "--host", "*", env=token).code == 2

    # Torrent unpin and re-pin by info hash, by .torrent file; then purge.
    assert json.loads(op("unpin", info_hash, "--json", env=token).out)["pinned"] is False
    assert not json.loads(op("inspect", info_hash, "--json", env=token).out)["pinned"]
    assert op("pin", info_hash, env=token).code == 0
    assert json.loads(op("inspect", info_hash, "--json", env=token).out)["pinned"]
    assert op("unpin", str(torrent), env=token).code == 0
    stats = json.loads(op("stats", "--json", env=token).out)
    assert stats["bittorrent"]["torrents"] == 1 and stats["bittorrent"]["pinned"] == 0
    top = json.loads(op("top", "--kind", "torrent", "--json", env=token).out)
    assert [t["info_hash"] for t in top["torrents"]] == [info_hash]
    assert json.loads(op("torrents", "--json", env=token).out)[0]["info_hash"] == info_hash
    purged = json.loads(op("purge", info_hash, "--json", env=token).out)
    assert purged == {"info_hash": info_hash, "purged": True}
    assert op("inspect", info_hash, env=token).code == 4
    assert op("purge", info_hash, env=token).code == 4
    assert op("pin", "00" * 20, env=token).code == 4
    assert op("pins", env=token).out.strip() == "no pins"
    # Sensing is off here (no steering): `seen` says so, as not found.
    assert op("seen", "--json", env=token).code == 4


@pytest.fixture
def ruled(testbed: Testbed, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose origin's tokens are not part of the key, and whose two host names (the
    origin's own and ``net.testbed``) form one service."""
    gw = Gateway(testbed, tmp_path)
    gw.start_origin()
    config = tmp_path / "rules.toml"
    config.write_text(
        "[[cache.key_rules]]\n"
        f'hosts = ["{ORIGIN}"]\n'
        'ignore_query = ["token"]\n\n'
        "[[cache.key_rules]]\n"
        'hosts = ["net.testbed", "origin.testbed"]\n'
        'service = "dist"\n'
    )
    gw.start_daemon("--config", str(config))
    try:
        yield gw
    finally:
        gw.stop_daemon()


def test_inspect_and_purge_find_an_object_by_any_url_its_key_rule_maps_to_it(
    ruled: Gateway,
) -> None:
    """Under a key rule one object answers many URLs; the operator may name any of them."""
    op = Operator(ruled)
    body = random_bytes(50_000)
    ruled.put("tok.bin", body, MAX_AGE)
    ruled.put("svc.bin", body + b"2", MAX_AGE)
    assert ruled.curl(f"http://{ORIGIN}/tok.bin?token=alice").x_cache == "MISS"
    assert ruled.curl("http://net.testbed/svc.bin").x_cache == "MISS"
    ruled.wait_until(
        lambda: ruled.metrics().get("swarmcache_store_objects") == 2, "fills were not indexed"
    )

    # Another token, another host of the service: the same objects.
    seen = op.json("inspect", f"http://{ORIGIN}/tok.bin?token=bob")
    assert len(seen["objects"]) == 1
    assert len(op.json("inspect", "http://origin.testbed/svc.bin")["objects"]) == 1
    assert op("inspect", f"http://{ORIGIN}/other.bin").code == 4

    assert op.json("purge", f"http://{ORIGIN}/tok.bin?token=carol")["purged_objects"] == 1
    assert op.json("purge", "http://origin.testbed/svc.bin")["purged_objects"] == 1
    # Purged for real: the next request under the first URL goes to the origin again.
    assert ruled.curl(f"http://{ORIGIN}/tok.bin?token=alice").x_cache == "MISS"
    assert ruled.curl("http://net.testbed/svc.bin").x_cache == "MISS"
