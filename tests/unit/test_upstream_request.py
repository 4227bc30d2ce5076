"""What the box sends upstream for a request it may cache: the Host it names is the origin's."""

from __future__ import annotations

from swarmcache.http.handler import CacheHandler
from swarmcache.http.parser import Request
from swarmcache.http.target import resolve_target


def _host_sent(handler: CacheHandler, request: Request, *, transparent: bool) -> list[bytes]:
    target = resolve_target(request, transparent=transparent, local=("203.0.113.5", 80))
    fields = handler._upstream_fields(request, target, frozenset())
    return [v for n, v in fields if n == b"host"]


def test_the_explicit_proxy_names_the_url_host_not_the_clients_host_field(
    handler: CacheHandler,
) -> None:
    """``GET http://victim/app.js`` with ``Host: attacker`` is stored as victim's app.js, so
    the origin must be asked for victim's app.js: on a shared address (a CDN, a hosting
    provider) a forwarded ``Host: attacker`` would fetch the attacker's file into victim's
    key for every subscriber (RFC 9112 §3.2.2: a proxy replaces the received Host)."""
    forged = Request(
        b"GET", b"http://victim.example/app.js", b"1.1", ((b"host", b"attacker.example"),)
    )
    assert _host_sent(handler, forged, transparent=False) == [b"victim.example"]


def test_the_transparent_path_forwards_the_host_the_client_named(handler: CacheHandler) -> None:
    plain = Request(b"GET", b"/app.js", b"1.1", ((b"host", b"site.example:8080"),))
    assert _host_sent(handler, plain, transparent=True) == [b"site.example:8080"]
