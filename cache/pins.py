"""Pin rules: which HTTP objects the evictor must never take, kept across restarts.

Why it is built this way:

* **Rules, not flags alone.** An operator pins a URL, every URL under a prefix, or every host
  matching a pattern, including objects that are not stored yet. The rules are the truth;
  :meth:`PinRules.is_pinned` answers for any URL, and is the predicate the evictor is given.
  ``ObjectMeta.pinned`` mirrors it for stored objects (set at fill and at every rule change) so
  that ``inspect`` shows it and a store scan need not consult the rules.
* **One table in the store's LMDB environment** (``pin_rules``), so rules are written under the
  store's single writer lock and survive restarts with the objects they protect.
* **Lock-free reads.** The evictor may ask from a worker thread while the admin API changes
  rules on the event loop: the matcher is an immutable :class:`RuleSet`, replaced whole on a
  change, so a reader sees either the old rules or the new ones.
* **Matching is pure** (:class:`RuleSet`, :func:`parse_host_pattern`, :func:`url_host`) and is
  tested exhaustively without a store.

Patterns: ``url`` is one exact normalised URL (``http://host[:port]/path?query``); ``prefix``
matches every URL starting with it; ``host`` is a host name (``example.com``, that host only),
``*.example.com`` (every name under example.com, not example.com itself) or an IP address. The
port of the URL plays no part in host matching.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from cache.store import Store, StoreError

__all__ = [
    "KINDS",
    "PinError",
    "PinKind",
    "PinRule",
    "PinRules",
    "RuleSet",
    "parse_host_pattern",
    "rule_matches",
    "url_host",
]

PinKind = Literal["url", "host", "prefix"]
KINDS: Final[tuple[PinKind, ...]] = ("url", "host", "prefix")

_F64 = struct.Struct("<d")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_PATTERN: Final = 400  # LMDB keys are limited to 511 bytes


class PinError(ValueError):
    """A pin rule that cannot be: bad pattern, unknown kind."""


@dataclass(frozen=True, slots=True)
class PinRule:
    kind: PinKind
    pattern: str
    created_at: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "pattern": self.pattern, "created_at": self.created_at}


def parse_host_pattern(text: str) -> str:
    """``example.com``, ``*.example.com`` or an IP address, lowercased; PinError otherwise."""
    pattern = text.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(pattern.strip("[]"))
    except ValueError:
        pass
    else:
        return pattern.strip("[]")
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise PinError(
            f"not a host pattern: {text!r} (expected a host name, *.domain or an IP address)"
        )
    return pattern


def url_host(url: bytes) -> str | None:
    """The host of a normalised ``http://`` URL (no port, no brackets), or None."""
    if url[:7].lower() != b"http://":
        return None
    rest = url[7:]
    end = len(rest)
    for sep in (b"/", b"?"):
        pos = rest.find(sep)
        if 0 <= pos < end:
            end = pos
    authority = rest[:end].decode("latin-1").lower()
    if authority.startswith("["):
        close = authority.find("]")
        return authority[1:close] if close > 0 else None
    return authority.partition(":")[0] or None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An immutable matcher over a set of rules."""

    urls: frozenset[bytes] = frozenset()
    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".example.com" for *.example.com
    prefixes: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, rules: Iterable[PinRule]) -> RuleSet:
        urls, hosts, suffixes, prefixes = set(), set(), set(), set()
        for rule in rules:
            if rule.kind == "url":
                urls.add(rule.pattern.encode())
            elif rule.kind == "prefix":
                prefixes.add(rule.pattern.encode())
            elif rule.pattern.startswith("*."):
                suffixes.add(rule.pattern[1:])
            else:
                hosts.add(rule.pattern)
        return cls(frozenset(urls), frozenset(hosts), tuple(sorted(suffixes)), tuple(prefixes))

    def __bool__(self) -> bool:
        return bool(self.urls or self.hosts or self.suffixes or self.prefixes)

    def is_pinned(self, url: bytes) -> bool:
        if url in self.urls or any(url.startswith(p) for p in self.prefixes):
            return True
        if not (self.hosts or self.suffixes):
            return False
        host = url_host(url)
        if host is None:
            return False
        return host in self.hosts or any(
            host.endswith(s) and len(host) > len(s) for s in self.suffixes
        )


def rule_matches(rule: PinRule, url: bytes) -> bool:
    return RuleSet.of([rule]).is_pinned(url)


def _key(kind: PinKind, pattern: str) -> bytes:
    return kind.encode() + b"\x00" + pattern.encode()


class PinRules:
    """The persistent rule table of one store; :meth:`is_pinned` is safe from any thread."""

    TABLE: Final = b"pin_rules"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._table = store.open_table(self.TABLE)
        rules: list[PinRule] = []
        with store.transaction() as txn:
            for key, value in txn.cursor(db=self._table):
                kind, _, pattern = bytes(key).partition(b"\x00")
                if kind.decode() not in KINDS or len(value) != _F64.size:
                    raise StoreError(f"malformed pin rule record {bytes(key)!r}")
                created = _F64.unpack(bytes(value))[0]
                rules.append(PinRule(kind.decode(), pattern.decode(), created))  # type: ignore[arg-type]
        self._rules = {(r.kind, r.pattern): r for r in rules}
        self._set = RuleSet.of(rules)

    def is_pinned(self, url: bytes) -> bool:
        """Whether any rule selects ``url`` (a stored object's normalised URL)."""
        return self._set.is_pinned(url)

    def rules(self) -> list[PinRule]:
        return sorted(self._rules.values(), key=lambda r: (r.kind, r.pattern))

    def matching(self, url: bytes) -> list[PinRule]:
        """The rules that select ``url`` (for ``inspect``)."""
        return [r for r in self.rules() if rule_matches(r, url)]

    def get(self, kind: PinKind, pattern: str) -> PinRule | None:
        return self._rules.get((kind, pattern))

    def add(self, kind: PinKind, pattern: str, *, now: float | None = None) -> tuple[PinRule, bool]:
        """Add a rule (persisted at once); returns it and whether it is new."""
        if kind not in KINDS:
            raise PinError(f"unknown pin kind {kind!r} (one of {', '.join(KINDS)})")
        if not pattern or len(pattern.encode()) > _MAX_PATTERN:
            raise PinError(f"pin pattern must be 1 to {_MAX_PATTERN} bytes long")
        old = self._rules.get((kind, pattern))
        if old is not None:
            return old, False
        rule = PinRule(kind, pattern, time.time() if now is None else now)
        with self._store.transaction(write=True) as txn:
            txn.put(_key(kind, pattern), _F64.pack(rule.created_at), db=self._table)
        self._rules[(kind, pattern)] = rule
        self._set = RuleSet.of(self._rules.values())
        return rule, True

    def remove(self, kind: PinKind, pattern: str) -> PinRule | None:
        """Remove a rule (persisted at once); None if there was no such rule."""
        rule = self._rules.get((kind, pattern))
        if rule is None:
            return None
        with self._store.transaction(write=True) as txn:
            txn.delete(_key(kind, pattern), db=self._table)
        del self._rules[(kind, pattern)]
        self._set = RuleSet.of(self._rules.values())
        return rule
