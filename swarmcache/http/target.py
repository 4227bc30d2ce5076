"""Where a request goes and under which cache key it is stored.

Why it is built this way (brief §3a, Squid CVE-2009-0801): in transparent mode the Host header
is whatever the subscriber's page wrote, so the key includes the address the client actually
connected to. ``GET /x`` sent to an attacker's IP with ``Host: victim.example`` is then stored
under the attacker's address and can never be served to someone who connects to the real
victim. The explicit proxy resolves the host itself, so its key is the URL alone. Per-site
key rules (:mod:`cache.keyrules`) may drop query parameters from the key or replace the host
by a service name; a service key has no address in it, so for those the box connects to the
Host it resolves itself, in transparent mode too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cache.keyrules import SERVICE_KEY_PREFIX, KeyRules, rule_key
from swarmcache.http.parser import RemoteProtocolError, Request

__all__ = [
    "Target",
    "blocked_destination",
    "key_for_url",
    "resolve_target",
    "split_authority",
    "trust_scope",
    "url_rule_key",
    "variant_key",
]


@dataclass(frozen=True, slots=True)
class Target:
    url: bytes  # absolute http URL, host lowercased, default port dropped
    key: bytes  # the store key of the primary object
    host: str  # where to connect (an address in transparent mode; maybe a name if explicit)
    port: int
    path: bytes  # origin-form request target sent upstream
    host_header: bytes
    # What follows the URL part of keys on this connection (`` @dst-ip:port`` in transparent
    # mode), so that other URLs of the same origin (invalidations) get comparable keys.
    suffix: bytes = b""


def split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` too) → (host, port); RemoteProtocolError if malformed."""
    text = authority.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"malformed host {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise RemoteProtocolError(f"malformed host {text!r}")
    else:
        host, _, port_text = text.partition(":")
    if not host or any(c in host for c in " /\\@?#"):
        raise RemoteProtocolError(f"malformed host {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RemoteProtocolError(f"malformed port in host {text!r}")
    return host, int(port_text)


def _authority(host: str, port: int) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    return (shown if port == 80 else f"{shown}:{port}").encode()


def resolve_target(
    request: Request,
    *,
    transparent: bool,
    local: tuple[str, int],
    rules: KeyRules | None = None,
) -> Target:
    """Work out the origin and key of ``request``; RemoteProtocolError(400) if impossible.

    ``rules``: the per-site key rules (:mod:`cache.keyrules`); they change the key only.
    """
    raw = request.target
    if raw.startswith(b"/"):
        path = raw
        if transparent:
            host_field = request.get(b"host")
            if host_field is None:
                raise RemoteProtocolError("Host header required")
            host, port = split_authority(host_field, local[1])
        else:
            raise RemoteProtocolError("the explicit proxy needs an absolute http:// URL")
    elif raw[:7].lower() == b"http://":
        rest = raw[7:]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        host, port = split_authority(authority, 80)
    elif raw[:8].lower() == b"https://":
        raise RemoteProtocolError("https URLs need CONNECT", status_hint=501)
    elif raw == b"*":
        host_field = request.get(b"host") or b""
        host, port = split_authority(host_field or local[0].encode(), local[1])
        path = b"*"
    else:
        raise RemoteProtocolError(f"unsupported request target {raw[:80]!r}")
    if b"#" in path:
        path = path[: path.find(b"#")]
    authority = _authority(host, port)
    url = b"http://" + authority + path
    rule = rules.match(host) if rules else None
    base = url if rule is None else rule_key(rule, authority, path)
    if not transparent:
        return Target(url, base, host, port, path, authority)
    host_header = request.get(b"host") or authority
    if rule is not None and rule.service:
        # A service key is shared by every host of the service, so the address the client
        # chose must not decide what gets stored under it (a forged Host would poison the
        # whole service): the box resolves the Host itself, as the explicit proxy does.
        return Target(url, base, host, port, path, host_header)
    dst_ip, dst_port = local
    suffix = b" @" + f"{dst_ip}:{dst_port}".encode()
    return Target(url, base + suffix, dst_ip, dst_port, path, host_header, suffix)


def trust_scope(target: Target) -> bytes:
    """Who vouches for a body fetched for ``target``: the service of a service key rule (whose
    hosts the operator declared to serve one catalogue, and which the box resolves itself),
    else the origin's authority plus, in transparent mode, the address the client connected
    to (a Host field alone is the client's word: anyone can send ``Host: popular.example`` to
    their own server)."""
    if target.key.startswith(SERVICE_KEY_PREFIX):
        return target.key.split(b"/", 1)[0]
    authority = target.url[7:].split(b"/", 1)[0]
    return authority + target.suffix


def key_for_url(target: Target, url: bytes, rules: KeyRules | None = None) -> bytes:
    """The primary key of ``url`` (canonical ``http://authority/path``, same origin as
    ``target``) as a request on ``target``'s connection would get it."""
    ruled = url_rule_key(url, rules)
    if ruled is None:
        return url + target.suffix
    key, service = ruled
    return key if service else key + target.suffix


def url_rule_key(url: bytes, rules: KeyRules | None) -> tuple[bytes, bool] | None:
    """The key a key rule gives ``url`` (canonical ``http://authority/path``) before any
    destination suffix, and whether it is a service key; None if no rule applies."""
    rest = url[7:] if url[:7].lower() == b"http://" else b""
    if not rules or not rest:
        return None
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    try:
        host, _ = split_authority(authority, 80)
    except RemoteProtocolError:
        return None
    rule = rules.match(host)
    if rule is None:
        return None
    return rule_key(rule, authority, path), bool(rule.service)


def variant_key(primary: bytes, generation: float, vary_key: bytes) -> bytes:
    """Store key of one Vary variant; NUL cannot occur in a URL, so no key collides.

    ``generation`` is the primary record's ``stored_at``: deleting the primary (invalidation,
    purge) orphans every variant of the old generation at once, without a scan.
    """
    return b"%s\x00%r\x00%s" % (primary, generation, vary_key)


def blocked_destination(address: str) -> str | None:
    """Why the explicit proxy must not connect to ``address`` (None if it may).

    Without this a subscriber could reach the box's own loopback services (the admin API)
    through the proxy.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an address"
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return f"destination {address} is not allowed"
    return None
