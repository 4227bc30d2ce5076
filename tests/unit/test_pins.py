"""Pin rules select the URLs an operator named, persist, and keep the store's pinned flags in step;
the store's key-range scans find exactly the keys a full scan would."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.pins import PinError, PinRule, PinRules, RuleSet, parse_host_pattern, url_host
from cache.store import ObjectMeta, Store
from swarmcache.admin_api import normalize_prefix, normalize_url
from tests.unit.test_store import meta_for, write_blob

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
paths = st.from_regex(r"/[a-zA-Z0-9/._~%?=&-]{0,30}", fullmatch=True)
ports = st.sampled_from(["", ":8080", ":81"])


@given(host=hosts, port=ports, path=paths)
def test_host_of_a_stored_url_ignores_port_and_path(host: str, port: str, path: str) -> None:
    assert url_host(f"http://{host}{port}{path}".encode()) == host


@given(host=hosts, other=hosts, port=ports, path=paths)
def test_host_rule_selects_that_host_only(host: str, other: str, port: str, path: str) -> None:
    rules = RuleSet.of([PinRule("host", parse_host_pattern(host.upper()))])
    assert rules.is_pinned(f"http://{host}{port}{path}".encode())
    assert rules.is_pinned(f"http://{other}{port}{path}".encode()) == (other == host)


@given(domain=hosts, sub=labels, path=paths)
def test_wildcard_selects_names_under_the_domain_not_the_domain(
    domain: str, sub: str, path: str
) -> None:
    rules = RuleSet.of([PinRule("host", parse_host_pattern(f"*.{domain}"))])
    assert rules.is_pinned(f"http://{sub}.{domain}{path}".encode())
    assert rules.is_pinned(f"http://a.{sub}.{domain}:8080{path}".encode())
    assert not rules.is_pinned(f"http://{domain}{path}".encode())
    # A name that merely ends with the same letters is another domain.
    assert not rules.is_pinned(f"http://{sub}{domain}{path}".encode())


@given(base=hosts, path=paths, rest=paths)
def test_url_and_prefix_rules(base: str, path: str, rest: str) -> None:
    url = f"http://{base}{path}".encode()
    exact = RuleSet.of([PinRule("url", url.decode())])
    assert exact.is_pinned(url)
    longer = url + rest.encode()[1:] + b"x"
    assert not exact.is_pinned(longer)
    prefix = RuleSet.of([PinRule("prefix", url.decode())])
    assert prefix.is_pinned(url) and prefix.is_pinned(longer)
    assert not prefix.is_pinned(f"http://x{base}{path}".encode())


def test_no_rules_pin_nothing() -> None:
    assert not RuleSet() and not RuleSet().is_pinned(b"http://example.com/")


@pytest.mark.parametrize(
    "bad", ["", "exa mple.com", "*", "*.", "a..b", "http://x.com", "x.com/path", "ex*.com", "-a.b"]
)
def test_bad_host_patterns_are_refused_by_name(bad: str) -> None:
    with pytest.raises(PinError, match="not a host pattern"):
        parse_host_pattern(bad)


def test_host_patterns_normalise() -> None:
    assert parse_host_pattern("Example.COM.") == "example.com"
    assert parse_host_pattern("[::1]") == "::1"
    assert parse_host_pattern("10.0.0.1") == "10.0.0.1"


def test_urls_normalise_as_the_cache_stores_them() -> None:
    assert normalize_url("http://Example.COM:80/a?b=1#frag") == b"http://example.com/a?b=1"
    assert normalize_url("http://example.com") == b"http://example.com/"
    assert normalize_url("http://[::1]:8080/x") == b"http://[::1]:8080/x"
    assert normalize_prefix("http://CDN") == b"http://cdn"
    assert normalize_prefix("http://Example.com:80/v/") == b"http://example.com/v/"
    for bad, why in [
        ("https://example.com/", "tunnelled"),
        ("example.com/x", "expected an http:// URL"),
        ("http://exa mple.com/", "malformed host"),
    ]:
        with pytest.raises(ValueError, match=why):
            normalize_url(bad)


def test_rules_persist_across_reopen(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 24) as store:
        pins = PinRules(store)
        rule, created = pins.add("host", "*.example.com", now=5.0)
        assert created and rule == PinRule("host", "*.example.com", 5.0)
        assert pins.add("host", "*.example.com")[1] is False
        pins.add("prefix", "http://cdn.test/v/")
        pins.add("url", "http://a.test/x")
        assert pins.remove("url", "http://a.test/x") is not None
        assert pins.remove("url", "http://a.test/x") is None
    with Store(tmp_path / "s", map_size=1 << 24) as store:
        pins = PinRules(store)
        assert [(r.kind, r.pattern) for r in pins.rules()] == [
            ("host", "*.example.com"),
            ("prefix", "http://cdn.test/v/"),
        ]
        assert pins.get("host", "*.example.com") == PinRule("host", "*.example.com", 5.0)
        assert pins.is_pinned(b"http://www.example.com/")
        assert pins.is_pinned(b"http://cdn.test/v/1.ts")
        assert not pins.is_pinned(b"http://a.test/x")
        assert [r.kind for r in pins.matching(b"http://cdn.test/v/1.ts")] == ["prefix"]


def test_bad_rules_are_refused(store: Store) -> None:
    pins = PinRules(store)
    with pytest.raises(PinError, match="unknown pin kind"):
        pins.add("path", "x")  # type: ignore[arg-type]
    with pytest.raises(PinError, match="1 to 400 bytes"):
        pins.add("prefix", "http://x/" + "a" * 400)
    assert pins.rules() == []


def _put(store: Store, key: bytes, url: bytes, body: bytes = b"body") -> None:
    store.put(key, meta_for(write_blob(store, body), url=url, vary=()))


def test_prefix_scan_finds_what_a_full_scan_finds(store: Store) -> None:
    url = b"http://example.com/a"
    keys = [
        url,
        url + b" @10.0.0.1:80",
        url + b"\x001.5\x00gzip",
        url + b"b",  # another URL with the same prefix
        b"http://example.com/" + b"a" * 500,  # too long to index inline: stored hashed
        b"http://example.com/b",
        b"http://example.co/a",
    ]
    for key in keys:
        _put(store, key, key.partition(b"\x00")[0].partition(b" @")[0])
    store.touch(url, 2000.0)
    for prefix in (url, b"http://example.com/", b"http://", b"http://nothing", b""):
        ranged = sorted(k for k, _ in store.iter_prefix(prefix))
        assert ranged == sorted(k for k, _ in store.iter_objects() if k.startswith(prefix))
    assert dict(store.iter_prefix(url))[url].hits == 1  # pending touches are merged


def test_pinned_flags_follow_decisions_and_keep_hit_counts(store: Store) -> None:
    for name in (b"a", b"b", b"c"):
        _put(store, b"http://x.test/" + name, b"http://x.test/" + name, body=name)
    store.touch(b"http://x.test/a", 3000.0)

    def pin_a(_key: bytes, meta: ObjectMeta) -> bool | None:
        return True if meta.url.endswith(b"/a") else None

    assert store.set_pinned_where(pin_a) == 1
    assert store.set_pinned_where(pin_a) == 0  # already so: nothing written
    a = store.get(b"http://x.test/a")
    assert a is not None and a.pinned and a.hits == 1 and a.last_access == 3000.0
    store.flush_touches()
    a = store.get(b"http://x.test/a")
    assert a is not None and a.pinned and a.hits == 1
    assert store.set_pinned_where(lambda _k, _m: False, prefix=b"http://x.test/") == 1
    assert not any(m.pinned for _, m in store.iter_objects())


def test_delete_where_with_a_prefix_deletes_only_matches_under_it(store: Store) -> None:
    for key in (b"http://x.test/a", b"http://x.test/a?v=2", b"http://y.test/a"):
        _put(store, key, key, body=key)
    assert store.delete_where(lambda _k, m: m.url.endswith(b"a"), prefix=b"http://x.test/") == 1
    assert sorted(k for k, _ in store.iter_objects()) == [
        b"http://x.test/a?v=2",
        b"http://y.test/a",
    ]
