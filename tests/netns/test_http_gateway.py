"""The HTTP gateway end to end through the real kernel path.

Subscriber curl → gateway namespace (iptables NFQUEUE + TPROXY, swarmcache) → origin
(python http.server) in the internet namespace. Assertions are what a user sees: bytes and
headers received, requests that reached the origin, bytes on the gateway's uplink.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.netns.gateway import GW_NET, GW_SUB, ORIGIN, Gateway, random_bytes

pytestmark = pytest.mark.netns


def test_second_fetch_is_a_hit_and_the_uplink_carries_nothing(gateway: Gateway) -> None:
    body = random_bytes(5 << 20)
    url = gateway.put("video.bin", body, {"Cache-Control": "max-age=600"})

    first = gateway.curl(url)
    assert first.status == 200 and first.body == body
    assert first.x_cache == "MISS"

    uplink_before = gateway.uplink_rx_bytes()
    second = gateway.curl(url)
    uplink_after = gateway.uplink_rx_bytes()

    assert second.status == 200 and second.body == body
    assert second.x_cache == "HIT"
    assert "hit" in second.headers["cache-status"]
    assert "swarmcache" in second.headers["via"]
    assert int(second.headers["age"]) >= 0
    assert len(gateway.origin_requests("/video.bin")) == 1
    # Nothing but perhaps a stray ARP frame may arrive on the uplink during a hit.
    assert uplink_after - uplink_before < 1000
    metrics = gateway.metrics()
    assert metrics['swarmcache_http_requests_total{result="hit"}'] == 1
    assert metrics["swarmcache_http_saved_bytes_total"] >= len(body)


def test_restart_keeps_the_cache(gateway: Gateway) -> None:
    body = random_bytes(300_000)
    url = gateway.put("keep.bin", body, {"Cache-Control": "max-age=600"})
    assert gateway.curl(url).x_cache == "MISS"
    gateway.stop_daemon()
    gateway.start_daemon()
    again = gateway.curl(url)
    assert again.x_cache == "HIT" and again.body == body
    assert len(gateway.origin_requests("/keep.bin")) == 1


@pytest.mark.parametrize(
    ("name", "headers", "request_args"),
    [
        ("private.bin", {"Cache-Control": "private, max-age=600"}, ()),
        ("nostore.bin", {"Cache-Control": "no-store, max-age=600"}, ()),
        ("cookie.bin", {"Cache-Control": "max-age=600", "Set-Cookie": "session=abc"}, ()),
        ("auth.bin", {"Cache-Control": "max-age=600"}, ("-H", "Authorization: Bearer alice")),
    ],
)
def test_private_responses_are_never_served_to_another_client(
    gateway: Gateway, name: str, headers: dict[str, str], request_args: tuple[str, ...]
) -> None:
    url = gateway.put(name, b"secret of the first client\n", headers)
    first = gateway.curl(url, *request_args)
    assert first.body == b"secret of the first client\n"
    gateway.put(name, b"what the second client gets\n", headers)
    second = gateway.curl(url)
    assert second.body == b"what the second client gets\n"
    assert second.x_cache == "MISS"
    assert len(gateway.origin_requests("/" + name)) == 2


def test_a_changed_object_is_revalidated(gateway: Gateway) -> None:
    url = gateway.put("page.html", b"version one\n", {"Cache-Control": "no-cache"})
    path = gateway.www / "page.html"
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert gateway.curl(url).body == b"version one\n"

    # Unchanged: the origin answers the conditional request with 304, the body comes from disk.
    again = gateway.curl(url)
    assert again.body == b"version one\n"
    assert again.x_cache == "HIT"
    requests = gateway.origin_requests("/page.html")
    assert len(requests) == 2
    assert "if-modified-since" in requests[1]["headers"]
    assert requests[1]["status"] == 304 and requests[1]["bytes"] == 0

    path.write_bytes(b"version two, longer\n")
    os.utime(path, (old + 60, old + 60))
    changed = gateway.curl(url)
    assert changed.body == b"version two, longer\n"
    assert gateway.curl(url).body == b"version two, longer\n"


def test_range_requests_return_exactly_the_right_bytes(gateway: Gateway) -> None:
    body = random_bytes(1 << 20)
    url = gateway.put("range.bin", body, {"Cache-Control": "max-age=600"})
    gateway.curl(url)

    single = gateway.curl(url, "-H", "Range: bytes=1000-1999")
    assert single.status == 206
    assert single.body == body[1000:2000]
    assert single.headers["content-range"] == f"bytes 1000-1999/{len(body)}"

    suffix = gateway.curl(url, "-H", "Range: bytes=-100")
    assert suffix.status == 206 and suffix.body == body[-100:]

    big = gateway.curl(url, "-H", "Range: bytes=100000-")
    assert big.status == 206 and big.body == body[100000:]

    multi = gateway.curl(url, "-H", "Range: bytes=0-9,500000-500009")
    assert multi.status == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges")
    assert body[0:10] in multi.body and body[500000:500010] in multi.body

    beyond = gateway.curl(url, "-H", "Range: bytes=5000000-")
    assert beyond.status == 416
    assert beyond.headers["content-range"] == f"bytes */{len(body)}"
    assert len(gateway.origin_requests("/range.bin")) == 1


def test_head_is_answered_from_a_stored_get(gateway: Gateway) -> None:
    body = random_bytes(70_000)
    url = gateway.put("head.bin", body, {"Cache-Control": "max-age=600"})
    gateway.curl(url)
    head = gateway.curl(url, "-I")
    assert head.status == 200 and body[:1000] not in head.body
    assert head.headers["content-length"] == str(len(body))
    assert head.x_cache == "HIT"
    assert len(gateway.origin_requests("/head.bin")) == 1


def test_post_is_passed_through_and_invalidates(gateway: Gateway) -> None:
    url = gateway.put("form", b"cached form\n", {"Cache-Control": "max-age=600"})
    assert gateway.curl(url).x_cache == "MISS"
    assert gateway.curl(url).x_cache == "HIT"
    posted = gateway.curl(url, "--data-binary", "a=1")
    assert posted.body == f"posted 3 {hashlib.sha256(b'a=1').hexdigest()}\n".encode()
    after = gateway.curl(url)
    assert after.x_cache == "MISS"
    methods = [r["method"] for r in gateway.origin_requests("/form")]
    assert methods == ["GET", "POST", "GET"]


def test_twenty_concurrent_clients_of_a_cold_object_make_one_upstream_fetch(
    gateway: Gateway,
) -> None:
    body = random_bytes(100 << 20)
    digest = hashlib.sha256(body).hexdigest()
    url = gateway.put("big.bin", body, {"Cache-Control": "max-age=600"})
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        fetches = list(pool.map(lambda _: gateway.curl(url, timeout=120), range(20)))
    assert all(f.status == 200 for f in fetches)
    assert {f.sha256 for f in fetches} == {digest}
    assert len(gateway.origin_requests("/big.bin")) == 1
    metrics = gateway.metrics()
    assert metrics["swarmcache_http_upstream_bytes_total"] < len(body) * 1.01


def test_kill_9_leaves_subscribers_able_to_fetch_directly(gateway: Gateway) -> None:
    url = gateway.put("direct.txt", b"still reachable\n", {"Cache-Control": "max-age=600"})
    assert gateway.curl(url).x_cache == "MISS"
    gateway.kill_daemon()

    def direct_fetch_works() -> bool:
        try:
            fetch = gateway.curl(url, timeout=2)
        except AssertionError:
            return False
        return fetch.body == b"still reachable\n" and "x-cache" not in fetch.headers

    took = gateway.wait_until(direct_fetch_works, "no direct HTTP after kill -9", timeout=5)
    print(f"direct fetch worked {took:.2f} s after kill -9")


def test_explicit_proxy_serves_subscribers_and_refuses_others(gateway: Gateway) -> None:
    body = random_bytes(10_000)
    url = gateway.put("proxied.bin", body, {"Cache-Control": "max-age=600"})
    via_proxy = ("-x", f"http://{GW_SUB}:3128")
    assert gateway.curl(url, *via_proxy).x_cache == "MISS"
    hit = gateway.curl(url, *via_proxy)
    assert hit.x_cache == "HIT" and hit.body == body

    refused = gateway.curl(url, "-x", f"http://{GW_NET}:3128", ns=gateway.tb.net)
    assert refused.status == 403
    assert b"not a subscriber" in refused.body
    assert len(gateway.origin_requests("/proxied.bin")) == 1


def test_connect_tunnels_are_relayed_never_cached(gateway: Gateway) -> None:
    url = gateway.put("tunnel.bin", b"through the tunnel\n", {"Cache-Control": "max-age=600"})
    for _ in range(2):
        fetch = gateway.curl(url, "-p", "-x", f"http://{GW_SUB}:3128")
        assert fetch.body == b"through the tunnel\n"
        assert "x-cache" not in fetch.headers
    assert len(gateway.origin_requests("/tunnel.bin")) == 2


def test_explicit_proxy_refuses_the_box_itself(gateway: Gateway) -> None:
    refused = gateway.curl("http://127.0.0.1:9480/metrics", "-x", f"http://{GW_SUB}:3128")
    assert refused.status == 403


def test_malformed_requests_get_400_and_the_connection_closes(gateway: Gateway) -> None:
    bad_requests = [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded: line\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    script = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{ORIGIN}',80),timeout=5)\n"
        "s.sendall(bytes.fromhex(sys.argv[1]))\n"
        "data=b''\n"
        "while chunk:=s.recv(65536): data+=chunk\n"
        "sys.stdout.write(data.decode('latin-1'))\n"
    )
    seen_by_origin = len(gateway.origin_requests())
    for raw in bad_requests:
        result = gateway.tb.run(gateway.tb.sub, "python3", "-c", script, raw.hex())
        reply = result.stdout
        assert reply.startswith("HTTP/1.1 400 "), (raw, reply)
        assert "Traceback" not in reply
    assert gateway.daemon is not None and gateway.daemon.poll() is None
    assert len(gateway.origin_requests()) == seen_by_origin


def test_host_header_cannot_poison_another_origin(gateway: Gateway, tmp_path: Path) -> None:
    """Squid CVE-2009-0801: a page sends GET /x to the attacker's IP with the victim's Host."""
    victim_www = tmp_path / "victim"
    victim_www.mkdir()
    (victim_www / "x.js").write_bytes(b"genuine\n")
    (victim_www / ".headers.json").write_text('{"/x.js": {"Cache-Control": "max-age=600"}}')
    gateway.tb.run(
        gateway.tb.net, "ip", "addr", "add", "10.77.2.3/24", "dev", f"{gateway.tb.prefix}n"
    )
    gateway.start_origin("10.77.2.3", victim_www)
    gateway.put("x.js", b"evil\n", {"Cache-Control": "max-age=600"})

    poisoned = gateway.curl(f"http://{ORIGIN}/x.js", "-H", "Host: 10.77.2.3")
    assert poisoned.body == b"evil\n"
    genuine = gateway.curl("http://10.77.2.3/x.js")
    assert genuine.body == b"genuine\n"


def test_client_outside_subscriber_prefixes_is_not_intercepted(gateway: Gateway) -> None:
    url = gateway.put("inside.bin", b"x" * 1000, {"Cache-Control": "max-age=600"})
    # From the gateway itself (not a subscriber): never diverted into the cache.
    for _ in range(2):
        fetch = gateway.curl(url, ns=gateway.tb.gw)
        assert "x-cache" not in fetch.headers


@pytest.mark.parametrize("size", [200_000, 8 << 20])  # read through Python / spliced
def test_an_origin_that_dies_mid_body_leaves_nothing_in_the_cache(
    gateway: Gateway, size: int
) -> None:
    body = random_bytes(size)
    url = gateway.put(
        "cut.bin", body, {"Cache-Control": "max-age=600", "X-Origin-Truncate": str(size // 2)}
    )
    cut = gateway.tb.run(gateway.tb.sub, "curl", "-s", "-o", "/dev/null", url, check=False)
    assert cut.returncode != 0  # the client sees a truncated transfer, not a complete one
    gateway.set_headers("/cut.bin", {"Cache-Control": "max-age=600"})
    whole = gateway.curl(url)
    assert whole.x_cache == "MISS" and whole.body == body
    assert gateway.curl(url).body == body
    assert len(gateway.origin_requests("/cut.bin")) == 2


def test_a_range_request_on_a_cold_object_gets_its_bytes_and_fills_the_cache(
    gateway: Gateway,
) -> None:
    body = random_bytes(3 << 20)
    url = gateway.put("cold-range.bin", body, {"Cache-Control": "max-age=600"})
    part = gateway.curl(url, "-H", "Range: bytes=2000000-2000099")
    assert part.status == 206 and part.body == body[2000000:2000100]
    whole = gateway.curl(url)
    assert whole.x_cache == "HIT" and whole.body == body
    requests = gateway.origin_requests("/cold-range.bin")
    assert len(requests) == 1 and "range" not in requests[0]["headers"]


def test_vary_selects_the_variant_for_each_client(gateway: Gateway) -> None:
    url = gateway.put(
        "lang.txt", b"english\n", {"Cache-Control": "max-age=600", "Vary": "Accept-Language"}
    )
    assert gateway.curl(url, "-H", "Accept-Language: en").body == b"english\n"
    gateway.put(
        "lang.txt", b"deutsch\n", {"Cache-Control": "max-age=600", "Vary": "Accept-Language"}
    )
    german = gateway.curl(url, "-H", "Accept-Language: de")
    assert german.body == b"deutsch\n" and german.x_cache == "MISS"
    english = gateway.curl(url, "-H", "Accept-Language:   en")
    assert english.body == b"english\n" and english.x_cache == "HIT"
    assert gateway.curl(url, "-H", "Accept-Language: de").x_cache == "HIT"
    assert len(gateway.origin_requests("/lang.txt")) == 2


def test_unknown_methods_are_passed_through(gateway: Gateway) -> None:
    url = gateway.put("dav", b"x", {"Cache-Control": "max-age=600"})
    reply = gateway.curl(url, "-X", "PROPFIND")
    # http.server answers methods it does not implement with 501: the origin's own answer.
    assert reply.status == 501
    assert "swarmcache" in reply.headers.get("via", "")
    assert [r["method"] for r in gateway.origin_requests("/dav")] == ["PROPFIND"]


def test_uncacheable_responses_are_not_coalesced(gateway: Gateway) -> None:
    url = gateway.put("live.json", random_bytes(2 << 20), {"Cache-Control": "no-store"})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        fetches = list(pool.map(lambda _: gateway.curl(url), range(5)))
    assert all(f.status == 200 and f.x_cache == "MISS" for f in fetches)
    assert len(gateway.origin_requests("/live.json")) == 5


def test_a_slow_reader_does_not_slow_the_others(gateway: Gateway) -> None:
    body = random_bytes(40 << 20)
    url = gateway.put("shared.bin", body, {"Cache-Control": "max-age=600"})
    slow = gateway.tb.popen(
        gateway.tb.sub, "curl", "-s", "--limit-rate", "1M", "-o", "/dev/null", url
    )
    time.sleep(0.5)  # let the slow client start the fill and attach to it
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        fast = list(pool.map(lambda _: gateway.curl(url, timeout=60), range(3)))
    # 40 MiB at 1 MiB/s takes the slow client ~40 s; the others are already done.
    assert slow.poll() is None
    assert all(f.body == body for f in fast)
    assert len(gateway.origin_requests("/shared.bin")) == 1
    slow.kill()


def test_a_large_upload_reaches_the_origin_intact(gateway: Gateway, tmp_path: Path) -> None:
    upload = random_bytes(24 << 20)
    path = tmp_path / "upload.bin"
    path.write_bytes(upload)
    url = gateway.put("upload", b"", {})
    reply = gateway.curl(url, "--data-binary", f"@{path}")  # curl sends Expect: 100-continue
    assert reply.body == f"posted {len(upload)} {hashlib.sha256(upload).hexdigest()}\n".encode()


@pytest.mark.parametrize("size", [50_000, 3 << 20])
def test_a_body_without_length_is_streamed_chunked_and_cached(gateway: Gateway, size: int) -> None:
    body = random_bytes(size)
    url = gateway.put(
        "nolength.bin", body, {"Cache-Control": "max-age=600", "X-Origin-No-Length": "1"}
    )
    first = gateway.curl(url)
    assert first.body == body and first.x_cache == "MISS"
    assert first.headers.get("transfer-encoding") == "chunked"
    second = gateway.curl(url)
    assert second.body == body and second.x_cache == "HIT"
    assert second.headers["content-length"] == str(size)
    assert len(gateway.origin_requests("/nolength.bin")) == 1
