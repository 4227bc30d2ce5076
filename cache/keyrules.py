"""Per-site cache-key rules: which hosts share objects across query tokens or host names.

Why it is built this way (brief §6.1-6.2): some sites put a per-user token in the query
(``?token=...``, ``?expires=...&sig=...``) or spread one catalogue over many host names (game
and OS-update CDNs). Keyed on the raw URL, each user's copy is a different object. Lancache keys
such services on a service name and the path only; Squid's StoreID does the same with a helper,
and its wiki warns that a rule too broad serves one object for another. So nothing here is
guessed: the operator names the hosts (glob patterns) and, per rule, the query parameters that do
not select content, or a service name that replaces the host. The first rule whose pattern
matches the request's host applies; a host no rule names keeps its exact URL key.

Everything here is pure (strings in, key bytes out); :mod:`swarmcache.http.target` applies it.
A rule never changes what is sent to the origin, only the key the response is stored under.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["KeyRule", "KeyRules", "drop_query", "rule_key"]

_HOST_PATTERN = re.compile(r"[a-z0-9.*?:_-]+")
_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_FORBIDDEN_IN_NAME = frozenset("&=#? \t\r\n")
# Keys under a service name cannot collide with URL keys (which start with "http://").
SERVICE_KEY_PREFIX: Final = b"service:"
# Host → rule lookups remembered (the match is a regex per rule; hosts repeat a lot).
_MATCH_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One ``[[cache.key_rules]]`` entry.

    ``hosts``: glob patterns over the host name (no port), case-insensitive; ``*`` also matches
    dots, so ``*.example.com`` covers every subdomain (but not ``example.com`` itself).
    ``ignore_query``: names of query parameters left out of the key (case-sensitive, as query
    names are), or ``["*"]`` for the whole query. ``service``: a name that replaces scheme and
    host in the key, so every listed host shares one set of objects.
    """

    hosts: tuple[str, ...] = ()
    ignore_query: tuple[str, ...] = ()
    service: str = ""

    def check(self) -> None:
        """Raise ValueError describing the first problem (the caller adds the config key)."""
        if not self.hosts:
            raise ValueError("hosts: at least one host pattern is required")
        for pattern in self.hosts:
            low = pattern.lower()
            if _HOST_PATTERN.fullmatch(low) is None:
                raise ValueError(
                    f"hosts: {pattern!r} is not a host pattern (letters, digits, . - _ : * ?)"
                )
            if not low.strip("*?."):
                raise ValueError(f"hosts: {pattern!r} would match every site; name the sites")
        for name in self.ignore_query:
            if not name or any(c in _FORBIDDEN_IN_NAME for c in name):
                raise ValueError(f"ignore_query: {name!r} is not a query parameter name")
        if "*" in self.ignore_query and len(self.ignore_query) > 1:
            raise ValueError('ignore_query: "*" (the whole query) must be the only entry')
        if self.service and _SERVICE.fullmatch(self.service) is None:
            raise ValueError(
                f"service: {self.service!r} must be 1-63 of [a-z0-9._-], starting alphanumeric"
            )
        if not self.ignore_query and not self.service:
            raise ValueError("a rule needs ignore_query or service (it would change nothing)")

    @property
    def drops_whole_query(self) -> bool:
        return self.ignore_query == ("*",)


class KeyRules:
    """The configured rules, compiled once; :meth:`match` is what a request pays."""

    def __init__(self, rules: Sequence[KeyRule]) -> None:
        self._rules = [
            (re.compile("|".join(fnmatch.translate(p.lower()) for p in rule.hosts)), rule)
            for rule in rules
        ]
        self._cache: dict[str, KeyRule | None] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, host: str) -> KeyRule | None:
        """The first rule naming ``host`` (already lowercased, without port), or None."""
        try:
            return self._cache[host]
        except KeyError:
            pass
        found = next((rule for regex, rule in self._rules if regex.match(host)), None)
        if len(self._cache) >= _MATCH_CACHE_MAX:
            self._cache.clear()
        self._cache[host] = found
        return found


def drop_query(path: bytes, rule: KeyRule) -> bytes:
    """``path`` (origin-form: ``/p?q``) without the query parameters ``rule`` ignores.

    The order of the remaining parameters is kept (it may matter to the origin, so two orders
    stay two keys); ``?`` goes when nothing is left.
    """
    base, sep, query = path.partition(b"?")
    if not sep or not rule.ignore_query:
        return path
    if rule.drops_whole_query:
        return base
    ignored = {name.encode() for name in rule.ignore_query}
    kept = [p for p in query.split(b"&") if p.partition(b"=")[0] not in ignored]
    return base + b"?" + b"&".join(kept) if kept else base


def rule_key(rule: KeyRule, authority: bytes, path: bytes) -> bytes:
    """The primary key of ``http://authority/path`` under ``rule``.

    With a service name the key has no host at all (``service:steam/depot/1/chunk/ab``);
    otherwise it is the URL with the ignored parameters removed.
    """
    kept = drop_query(path, rule)
    if rule.service:
        return SERVICE_KEY_PREFIX + rule.service.encode() + kept
    return b"http://" + authority + kept
