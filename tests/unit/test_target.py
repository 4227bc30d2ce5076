"""Where a request goes and its cache key: the Host-poisoning and open-proxy guards."""

from __future__ import annotations

import pytest

from swarmcache.http.parser import RemoteProtocolError, Request
from swarmcache.http.target import blocked_destination, resolve_target, variant_key


def request(target: bytes, host: bytes | None = b"example.com") -> Request:
    headers = ((b"host", host),) if host is not None else ()
    return Request(method=b"GET", target=target, version=b"1.1", headers=headers)


def test_transparent_key_includes_the_address_the_client_connected_to() -> None:
    a = resolve_target(request(b"/x.js"), transparent=True, local=("203.0.113.5", 80))
    b = resolve_target(request(b"/x.js"), transparent=True, local=("198.51.100.7", 80))
    assert a.url == b.url == b"http://example.com/x.js"
    assert a.key != b.key  # a forged Host cannot reach another origin's objects
    assert (a.host, a.port) == ("203.0.113.5", 80)  # the origin is where the client went


def test_transparent_without_host_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="Host header required"):
        resolve_target(request(b"/", host=None), transparent=True, local=("192.0.2.1", 80))


def test_explicit_proxy_needs_an_absolute_url_and_keys_on_it() -> None:
    with pytest.raises(RemoteProtocolError, match="absolute"):
        resolve_target(request(b"/x"), transparent=False, local=("10.0.0.1", 3128))
    t = resolve_target(
        request(b"http://Example.COM:80/a?b=1#frag"), transparent=False, local=("10.0.0.1", 3128)
    )
    assert t.key == t.url == b"http://example.com/a?b=1"
    assert (t.host, t.port, t.path) == ("example.com", 80, b"/a?b=1")


def test_explicit_proxy_keeps_a_non_default_port() -> None:
    t = resolve_target(request(b"http://h:8080/"), transparent=False, local=("10.0.0.1", 3128))
    assert t.url == b"http://h:8080/" and t.port == 8080


@pytest.mark.parametrize(
    "target", [b"https://h/", b"ftp://h/", b"http://h:99999/", b"http://a b/", b"http://@/"]
)
def test_unusable_targets_are_rejected(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        resolve_target(request(target), transparent=False, local=("10.0.0.1", 3128))


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("169.254.1.1", True),
        ("::1", True),
        ("10.1.2.3", False),
        ("93.184.216.34", False),
        ("not-an-ip", True),
    ],
)
def test_the_proxy_never_connects_to_the_box_itself(address: str, blocked: bool) -> None:
    assert (blocked_destination(address) is not None) is blocked


def test_variant_keys_of_different_generations_differ() -> None:
    assert variant_key(b"k", 1.0, b"gzip") != variant_key(b"k", 2.0, b"gzip")
    assert variant_key(b"k", 1.0, b"gzip") != variant_key(b"k", 1.0, b"br")
