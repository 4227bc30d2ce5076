"""Per-site key rules (cache/keyrules.py), applied where the key is computed (target.py), and
loaded from [[cache.key_rules]]."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.keyrules import KeyRule, KeyRules, drop_query, rule_key
from swarmcache.config import Config, ConfigError, load_config
from swarmcache.http.parser import Request
from swarmcache.http.target import Target, key_for_url, resolve_target

TOKENS = KeyRule(hosts=("dl.example.com", "*.cdn.example.net"), ignore_query=("token", "exp"))
STEAM = KeyRule(hosts=("*.steamcontent.com", "steam.cache.example"), service="steam")
RULES = KeyRules([TOKENS, STEAM])


def request(target: bytes, host: bytes) -> Request:
    return Request(method=b"GET", target=target, version=b"1.1", headers=((b"host", host),))


# --- the rule itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (KeyRule(ignore_query=("t",)), "at least one host pattern"),
        (KeyRule(hosts=("*",), ignore_query=("t",)), "would match every site"),
        (KeyRule(hosts=("*.*",), ignore_query=("t",)), "would match every site"),
        (KeyRule(hosts=("a b.com",), ignore_query=("t",)), "not a host pattern"),
        (KeyRule(hosts=("[ab].com",), ignore_query=("t",)), "not a host pattern"),
        (KeyRule(hosts=("a.com",), ignore_query=("",)), "not a query parameter name"),
        (KeyRule(hosts=("a.com",), ignore_query=("a=b",)), "not a query parameter name"),
        (KeyRule(hosts=("a.com",), ignore_query=("*", "t")), "must be the only entry"),
        (KeyRule(hosts=("a.com",), service="Steam Games"), "service"),
        (KeyRule(hosts=("a.com",)), "would change nothing"),
    ],
)
def test_a_bad_rule_is_described(rule: KeyRule, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule.check()


def test_good_rules_pass() -> None:
    for rule in (TOKENS, STEAM, KeyRule(hosts=("Mirror.Example.ORG",), ignore_query=("*",))):
        rule.check()


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("dl.example.com", TOKENS),
        ("a.cdn.example.net", TOKENS),
        ("a.b.cdn.example.net", TOKENS),  # * also matches dots
        ("cdn.example.net", None),  # *.x does not match x itself
        ("lancache.steamcontent.com", STEAM),
        ("steam.cache.example", STEAM),
        ("dl.example.com.evil.org", None),  # patterns match the whole host
        ("xdl.example.com", None),
        ("example.com", None),
    ],
)
def test_the_first_rule_whose_pattern_matches_the_whole_host_applies(
    host: str, rule: KeyRule | None
) -> None:
    assert RULES.match(host) is rule
    assert RULES.match(host) is rule  # from the cache this time


def test_patterns_are_case_insensitive_and_first_rule_wins() -> None:
    first = KeyRule(hosts=("*.Example.com",), ignore_query=("a",))
    second = KeyRule(hosts=("x.example.com",), service="x")
    rules = KeyRules([first, second])
    assert rules.match("x.example.com") is first
    assert not KeyRules([])
    assert KeyRules([]).match("x.example.com") is None


# --- dropping query parameters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        (b"/f.bin?token=abc&v=2", b"/f.bin?v=2"),
        (b"/f.bin?v=2&token=abc&exp=9", b"/f.bin?v=2"),
        (b"/f.bin?token=abc", b"/f.bin"),
        (b"/f.bin?token", b"/f.bin"),  # a name without a value
        (b"/f.bin?tokens=1", b"/f.bin?tokens=1"),  # names match exactly
        (b"/f.bin?Token=1", b"/f.bin?Token=1"),  # and case-sensitively
        (b"/f.bin", b"/f.bin"),
        (b"/f.bin?", b"/f.bin?"),
        (b"/a?b=1&token=x&c=2", b"/a?b=1&c=2"),  # order of the rest is kept
    ],
)
def test_drop_query(path: bytes, kept: bytes) -> None:
    assert drop_query(path, TOKENS) == kept


_name = st.sampled_from([b"token", b"exp", b"v", b"id", b"tokenx", b""])
_param = st.tuples(_name, st.binary(max_size=5).filter(lambda b: b"&" not in b))


@given(st.lists(_param, min_size=1, max_size=6))
def test_dropping_keeps_every_other_parameter_in_order(params: list[tuple[bytes, bytes]]) -> None:
    query = b"&".join(n + b"=" + v for n, v in params)
    kept = drop_query(b"/p?" + query, TOKENS)
    expected = [n + b"=" + v for n, v in params if n not in (b"token", b"exp")]
    assert kept == (b"/p?" + b"&".join(expected) if expected else b"/p")
    assert drop_query(b"/p?" + query, KeyRule(hosts=("h",), ignore_query=("*",))) == b"/p"


def test_a_service_replaces_the_host_in_the_key() -> None:
    assert rule_key(STEAM, b"a.steamcontent.com", b"/depot/1/chunk/ab") == (
        b"service:steam/depot/1/chunk/ab"
    )
    assert rule_key(TOKENS, b"dl.example.com:8080", b"/f?token=1") == (
        b"http://dl.example.com:8080/f"
    )


# --- applied where the key is computed ------------------------------------------------------


def intercepted(path: bytes, host: bytes, dst: str = "203.0.113.5") -> Target:
    return resolve_target(request(path, host), transparent=True, local=(dst, 80), rules=RULES)


def proxied(url: bytes) -> Target:
    host = url.split(b"/")[2]
    return resolve_target(
        request(url, host), transparent=False, local=("10.0.0.1", 3128), rules=RULES
    )


def test_transparent_token_rule_keeps_the_destination_in_the_key() -> None:
    a = intercepted(b"/f.bin?token=alice&v=2", b"dl.example.com")
    b = intercepted(b"/f.bin?token=bob&v=2", b"dl.example.com")
    elsewhere = intercepted(b"/f.bin?token=bob&v=2", b"dl.example.com", dst="198.51.100.9")
    assert a.key == b.key == b"http://dl.example.com/f.bin?v=2 @203.0.113.5:80"
    assert elsewhere.key != a.key  # a forged Host still cannot poison another address
    # Only the key changes: the origin still gets the token.
    assert a.path == b"/f.bin?token=alice&v=2"
    assert a.url == b"http://dl.example.com/f.bin?token=alice&v=2"
    assert (a.host, a.port) == ("203.0.113.5", 80)


def test_transparent_service_rule_resolves_the_host_itself() -> None:
    t = intercepted(b"/depot/1/chunk/ab", b"lancache.steamcontent.com")
    assert t.key == b"service:steam/depot/1/chunk/ab"
    # The address the client picked does not decide what is stored under the service key.
    assert (t.host, t.port) == ("lancache.steamcontent.com", 80)
    other = intercepted(b"/depot/1/chunk/ab", b"steam.cache.example", dst="198.51.100.9")
    assert other.key == t.key


def test_explicit_proxy_applies_rules_too() -> None:
    assert proxied(b"http://a.cdn.example.net/x?exp=1&token=2").key == b"http://a.cdn.example.net/x"
    unruled = proxied(b"http://other.example/x?token=2")
    assert unruled.key == unruled.url == b"http://other.example/x?token=2"


_host = st.sampled_from(["dl.example.com", "a.cdn.example.net", "x.steamcontent.com", "o.org"])
_path = st.lists(st.sampled_from([b"token=1", b"v=2", b"exp=3", b"id=4"]), max_size=3).map(
    lambda ps: b"/f" + (b"?" + b"&".join(ps) if ps else b"")
)


@given(_host, _path, st.booleans())
def test_invalidation_keys_match_request_keys(host: str, path: bytes, transparent: bool) -> None:
    target = (
        intercepted(path, host.encode())
        if transparent
        else proxied(b"http://" + host.encode() + path)
    )
    assert key_for_url(target, target.url, RULES) == target.key


# --- configuration -------------------------------------------------------------------------


def test_key_rules_load_from_arrays_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[[cache.key_rules]]\n"
        'hosts = ["*.steamcontent.com"]\n'
        'service = "steam"\n'
        "[[cache.key_rules]]\n"
        'hosts = ["dl.example.com"]\n'
        'ignore_query = "*"\n'
    )
    config = load_config(path)
    assert config.cache.key_rules == (
        KeyRule(hosts=("*.steamcontent.com",), service="steam"),
        KeyRule(hosts=("dl.example.com",), ignore_query=("*",)),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[cache.key_rules]]\nhosts = ["a.com"]\nignore = ["t"]\n', "cache.key_rules[0].ignore"),
        ('[[cache.key_rules]]\nhosts = ["*"]\nservice = "x"\n', "cache.key_rules[0]: hosts"),
        (
            '[[cache.key_rules]]\nhosts = ["a.com"]\nservice = "x"\n'
            '[[cache.key_rules]]\nhosts = ["b.com"]\n',
            "cache.key_rules[1]: a rule needs ignore_query or service",
        ),
        ("[cache]\nkey_rules = 3\n", "cache.key_rules[0]: expected a table"),
        ("[cache]\nfingerprint = 'maybe'\n", "cache.fingerprint: expected sample|full|off"),
        (
            "[cache]\nfingerprint_min_bytes = 1000\n",
            "cache.fingerprint_min_bytes: must be larger",
        ),
        ("[cache]\nfingerprint_samples = 0\n", "cache.fingerprint_samples: must be > 0"),
    ],
)
def test_bad_fingerprint_and_key_rule_config_names_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(path)


def test_defaults_fingerprint_large_bodies_with_samples() -> None:
    cache = Config().validate().cache
    assert cache.fingerprint == "sample"
    assert cache.fingerprint_min_bytes == 1 << 20
    assert cache.fingerprint_prefix_bytes == 64 << 10
    assert cache.key_rules == ()
