"""One typed, validated configuration object, loaded from TOML and overridden by flags.

Why it is built this way: a cache that silently ignores a misspelt key (``max_obejct_bytes``)
runs for months with a setting the operator believes is in force. Every section is a frozen
dataclass; the loader walks the TOML table against the dataclass fields, so an unknown key, a
wrong type or an out-of-range value stops start-up with a message naming the key
(``http.proxy_listen: expected HOST:PORT, got '3128'``). Command-line flags are applied on
top with :func:`dataclasses.replace`, so there is exactly one object the daemon reads.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.keyrules import KeyRule

__all__ = [
    "AdminConfig",
    "BittorrentConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "HttpConfig",
    "InterceptConfig",
    "LiveConfig",
    "LogConfig",
    "SocksConfig",
    "load_config",
    "parse_hostport",
    "parse_subscribers",
]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the problem."""


def parse_hostport(text: str, *, key: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too); raise ConfigError naming ``key``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range 0-65535")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    return host, port


def parse_subscribers(items: list[str] | str, *, key: str) -> tuple[ipaddress.IPv4Network, ...]:
    """Parse subscriber prefixes (a list, or one comma-separated string)."""
    if isinstance(items, str):
        items = [part for part in (p.strip() for p in items.split(",")) if part]
    networks: list[ipaddress.IPv4Network] = []
    for item in items:
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ConfigError(f"{key}: {item!r} is not a CIDR prefix ({exc})") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise ConfigError(f"{key}: {item!r}: only IPv4 prefixes are supported")
        networks.append(net)
    if not networks:
        raise ConfigError(f"{key}: at least one subscriber prefix is required")
    return tuple(networks)


def _hostport_or_empty(value: str, key: str) -> None:
    if value:
        parse_hostport(value, key=key)


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: str = "/var/cache/swarmcache"
    # LMDB map size: address space only (the file is sparse), so generous is free.
    index_map_bytes: int = 64 << 30
    # Bodies larger than this are relayed, not stored.
    max_object_bytes: int = 8 << 30
    # Bodies up to this size are read into memory on a hit: one write beats sendfile's setup.
    small_object_bytes: int = 64 << 10
    fsync: bool = True
    # Disk quota for HTTP blobs and torrent pieces together (bytes); 0 = 90 % of the free space
    # of the filesystem holding cache.dir plus what the cache holds, at start-up. Past
    # high_watermark (a fraction of the quota) objects and torrent piece ranges are evicted,
    # coldest first, down to low_watermark.
    quota_bytes: int = 0
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    # Eviction order: "lfu-da" (byte hit ratio), "gdsf" (object hit ratio) or "lru".
    eviction_policy: str = "lfu-da"
    # TinyLFU admission: a new object is stored only if it is likely to be worth the bytes it
    # displaces (one-off giants are relayed, not stored).
    admission: bool = True
    # Content fingerprints (docs/architecture.md): "sample" confirms a match with Range
    # samples from the origin and then cuts the transfer; "full" always reads the whole body
    # (storage is deduplicated, the uplink is not spared); "off" keeps no fingerprint index.
    fingerprint: str = "sample"
    fingerprint_min_bytes: int = 1 << 20
    fingerprint_prefix_bytes: int = 64 << 10
    fingerprint_samples: int = 4
    fingerprint_sample_bytes: int = 16 << 10
    # Whose stored bodies a sampled match may use: "origin" (the same origin address, or the
    # same service of a key rule) or "any" (every origin: more uplink saved, but a crafted
    # near-duplicate stored by one origin can pass the samples for another's file).
    fingerprint_scope: str = "origin"
    # Per-site key rules ([[cache.key_rules]]); the first whose hosts match applies.
    key_rules: tuple[KeyRule, ...] = ()

    def validate(self) -> None:
        if not self.dir:
            raise ConfigError("cache.dir: must not be empty")
        _positive(self.index_map_bytes, "cache.index_map_bytes")
        _positive(self.max_object_bytes, "cache.max_object_bytes")
        if self.small_object_bytes < 0:
            raise ConfigError("cache.small_object_bytes: must be >= 0")
        if self.quota_bytes < 0:
            raise ConfigError("cache.quota_bytes: must be >= 0 (0 = 90 % of the filesystem)")
        if not 0.0 < self.low_watermark <= self.high_watermark <= 1.0:
            raise ConfigError(
                "cache.low_watermark, cache.high_watermark: need 0 < low <= high <= 1, got "
                f"low={self.low_watermark} high={self.high_watermark}"
            )
        if self.eviction_policy not in ("lfu-da", "gdsf", "lru"):
            raise ConfigError(
                f"cache.eviction_policy: expected lfu-da|gdsf|lru, got {self.eviction_policy!r}"
            )
        if self.fingerprint_scope not in ("origin", "any"):
            raise ConfigError(
                f"cache.fingerprint_scope: expected origin|any, got {self.fingerprint_scope!r}"
            )
        if self.fingerprint not in ("sample", "full", "off"):
            raise ConfigError(
                f"cache.fingerprint: expected sample|full|off, got {self.fingerprint!r}"
            )
        for name in ("fingerprint_prefix_bytes", "fingerprint_samples", "fingerprint_sample_bytes"):
            _positive(getattr(self, name), f"cache.{name}")
        if self.fingerprint_min_bytes <= self.fingerprint_prefix_bytes:
            raise ConfigError(
                "cache.fingerprint_min_bytes: must be larger than cache.fingerprint_prefix_bytes"
            )
        for i, rule in enumerate(self.key_rules):
            try:
                rule.check()
            except ValueError as exc:
                raise ConfigError(f"cache.key_rules[{i}]: {exc}") from None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    # Explicit proxy listener; empty string disables it.
    proxy_listen: str = "0.0.0.0:3128"
    via_name: str = "swarmcache"
    upstream_connect_timeout: float = 10.0
    upstream_idle_timeout: float = 60.0
    client_idle_timeout: float = 60.0
    max_head_bytes: int = 65536
    max_headers: int = 100
    max_connections_per_client: int = 256
    relay_buffer_bytes: int = 256 << 10

    def validate(self) -> None:
        _hostport_or_empty(self.proxy_listen, "http.proxy_listen")
        if not self.via_name or any(c.isspace() for c in self.via_name):
            raise ConfigError("http.via_name: must be a non-empty token without spaces")
        for name in (
            "upstream_connect_timeout",
            "upstream_idle_timeout",
            "client_idle_timeout",
            "max_head_bytes",
            "max_headers",
            "max_connections_per_client",
            "relay_buffer_bytes",
        ):
            _positive(getattr(self, name), f"http.{name}")


@dataclass(frozen=True, slots=True)
class InterceptConfig:
    enabled: bool = True
    subscribers: tuple[str, ...] = ("10.0.0.0/8",)
    ports: tuple[int, ...] = (80,)
    # The TPROXY listener; bound on all addresses with IP_TRANSPARENT.
    listen_port: int = 3129
    queue_num: int = 7
    route_table: int = 100
    watchdog_timeout: float = 2.0

    def validate(self) -> None:
        parse_subscribers(list(self.subscribers), key="intercept.subscribers")
        if not self.ports:
            raise ConfigError("intercept.ports: at least one port is required")
        for port in (*self.ports, self.listen_port):
            if not 1 <= port <= 65535:
                raise ConfigError(f"intercept: port {port} is out of range 1-65535")
        if not 0 <= self.queue_num <= 65535:
            raise ConfigError("intercept.queue_num: must be 0-65535")
        if not 1 <= self.route_table <= 252:
            raise ConfigError("intercept.route_table: must be 1-252")
        _positive(self.watchdog_timeout, "intercept.watchdog_timeout")

    @property
    def subscriber_networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        return parse_subscribers(list(self.subscribers), key="intercept.subscribers")


@dataclass(frozen=True, slots=True)
class BittorrentConfig:
    enabled: bool = True
    # The seeder local peers connect to; in production the box's subscriber-side address.
    listen: str = "0.0.0.0:6881"
    # A local tracker (BEP 22 style) that names the box; "" disables it.
    tracker_listen: str = ""
    # Port announced to outside trackers (the box does not upload to outside peers).
    announce_port: int = 6881
    max_peers_per_torrent: int = 50
    # Bytes per second from outside peers; 0 = unlimited.
    download_rate_limit: int = 0
    torrent_rate_limit: int = 0
    # Seconds of data kept in flight per peer (libtorrent's request_queue_time).
    request_queue_time: float = 3.0
    max_request_queue: int = 500
    request_timeout: float = 20.0
    # How often verified pieces are made durable (fdatasync, then the bitfield).
    commit_interval: float = 5.0
    hashing_threads: int = 2
    # Source address for connections to outside peers; "" lets the kernel choose.
    bind: str = ""
    # Sense subscribers' BitTorrent traffic, admit popular torrents, steer local peers to the
    # box (needs intercept.enabled and an address local peers can reach: see steer_address).
    steering: bool = False
    # Address:port put into peer lists going to subscribers; "" = bittorrent.listen.
    steer_address: str = ""
    # TCP ports of HTTP trackers diverted through the box (port 80 is intercepted anyway).
    tracker_ports: tuple[int, ...] = (6969,)
    # Distinct local peers (by IP) that make a torrent worth caching.
    admit_min_local_peers: int = 2
    # NFQUEUE number for the sensing rules (must differ from intercept.queue_num).
    sense_queue: int = 8

    def validate(self) -> None:
        parse_hostport(self.listen, key="bittorrent.listen")
        _hostport_or_empty(self.steer_address, "bittorrent.steer_address")
        if self.steering and self.steer_host_port()[0] == "0.0.0.0":
            raise ConfigError(
                "bittorrent.steer_address: required when bittorrent.listen is a wildcard "
                "address (peers must be given an address they can reach)"
            )
        for port in self.tracker_ports:
            if not 1 <= port <= 65535:
                raise ConfigError(f"bittorrent.tracker_ports: {port} is out of range 1-65535")
        if not 1 <= self.admit_min_local_peers <= 64:
            # The popularity table remembers at most 64 local peers per torrent.
            raise ConfigError("bittorrent.admit_min_local_peers: must be 1-64")
        if not 0 <= self.sense_queue <= 65535:
            raise ConfigError("bittorrent.sense_queue: must be 0-65535")
        _hostport_or_empty(self.tracker_listen, "bittorrent.tracker_listen")
        if not 1 <= self.announce_port <= 65535:
            raise ConfigError("bittorrent.announce_port: must be 1-65535")
        for name in (
            "max_peers_per_torrent",
            "request_queue_time",
            "max_request_queue",
            "request_timeout",
            "commit_interval",
            "hashing_threads",
        ):
            _positive(getattr(self, name), f"bittorrent.{name}")
        for name in ("download_rate_limit", "torrent_rate_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"bittorrent.{name}: must be >= 0 (0 = unlimited)")
        if self.bind:
            try:
                ipaddress.IPv4Address(self.bind)
            except ValueError:
                msg = f"bittorrent.bind: {self.bind!r} is not an IPv4 address"
                raise ConfigError(msg) from None

    def steer_host_port(self) -> tuple[str, int]:
        if self.steer_address:
            return parse_hostport(self.steer_address, key="bittorrent.steer_address")
        return parse_hostport(self.listen, key="bittorrent.listen")


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """Live fan-out: one upstream connection per live stream, its bytes multiplied to clients."""

    # Which responses without a length are live streams: URL globs (or "re:" regexes) and
    # media types (globs allowed); either list matching is enough. Both empty: off.
    url_patterns: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    block_bytes: int = 64 << 10
    # Memory per stream (the FIFO of blocks); also how far a client may fall behind.
    ring_bytes: int = 4 << 20
    # A new client starts this many bytes before the live edge (0: at the edge).
    back_buffer_bytes: int = 0
    # Join and skip positions are multiples of this (188 = MPEG-TS packets).
    align_bytes: int = 1
    # A client that fell behind the ring: "skip" to the live edge or "disconnect".
    lag_policy: str = "skip"
    # Bytes queued in the daemon per client before it waits for the socket to drain.
    client_buffer_bytes: int = 64 << 10
    # A client whose socket has not drained for this long is disconnected.
    stall_timeout: float = 60.0
    # Seconds the upstream stays open after the last client left.
    linger: float = 5.0
    # When the origin ends or fails: "end" every client, or "reconnect" and carry on.
    upstream_end: str = "end"
    reconnect_delay: float = 1.0

    def validate(self) -> None:
        from cache.live import LiveRules

        try:
            LiveRules(self.url_patterns, self.content_types)
        except ValueError as exc:
            raise ConfigError(f"live.url_patterns: {exc}") from None
        for name in ("block_bytes", "ring_bytes", "align_bytes", "client_buffer_bytes"):
            _positive(getattr(self, name), f"live.{name}")
        for name in ("stall_timeout", "reconnect_delay"):
            _positive(getattr(self, name), f"live.{name}")
        if self.ring_bytes < 2 * self.block_bytes:
            raise ConfigError("live.ring_bytes: must hold at least two blocks (2 * block_bytes)")
        if not 0 <= self.back_buffer_bytes <= self.ring_bytes - self.block_bytes:
            raise ConfigError("live.back_buffer_bytes: must be 0 to ring_bytes - block_bytes")
        if self.linger < 0:
            raise ConfigError(f"live.linger: must be >= 0, got {self.linger}")
        if self.lag_policy not in ("skip", "disconnect"):
            raise ConfigError(f"live.lag_policy: expected skip|disconnect, got {self.lag_policy!r}")
        if self.upstream_end not in ("end", "reconnect"):
            raise ConfigError(
                f"live.upstream_end: expected end|reconnect, got {self.upstream_end!r}"
            )


@dataclass(frozen=True, slots=True)
class SocksConfig:
    # SOCKS5 listener for software pointed at the box; "" disables it.
    listen: str = ""
    # "name:password" accounts; empty: no authentication (subscribers only, as everywhere).
    users: tuple[str, ...] = ()

    def validate(self) -> None:
        _hostport_or_empty(self.listen, "socks.listen")
        for i, entry in enumerate(self.users):
            name, sep, password = entry.partition(":")
            if not sep or not name or not password:
                raise ConfigError(f"socks.users[{i}]: expected NAME:PASSWORD")

    def accounts(self) -> dict[str, str]:
        return dict(entry.split(":", 1) for entry in self.users)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = "127.0.0.1:9480"
    # Required when `listen` is not a loopback address.
    token: str = ""

    def validate(self) -> None:
        if not self.listen:
            return
        host, _ = parse_hostport(self.listen, key="admin.listen")
        if not ipaddress.ip_address(host).is_loopback and not self.token:
            raise ConfigError(
                f"admin.token: required because admin.listen {self.listen!r} is not loopback"
            )


@dataclass(frozen=True, slots=True)
class LogConfig:
    # "-" is standard output; empty disables the access log.
    access_log: str = "-"
    level: str = "info"

    def validate(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log.level: expected debug|info|warning|error, got {self.level!r}")


@dataclass(frozen=True, slots=True)
class Config:
    cache: CacheConfig = field(default_factory=CacheConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    intercept: InterceptConfig = field(default_factory=InterceptConfig)
    bittorrent: BittorrentConfig = field(default_factory=BittorrentConfig)
    socks: SocksConfig = field(default_factory=SocksConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> Config:
        if self.bittorrent.steering and self.bittorrent.sense_queue == self.intercept.queue_num:
            raise ConfigError("bittorrent.sense_queue: must differ from intercept.queue_num")
        for section in (
            self.cache,
            self.http,
            self.intercept,
            self.bittorrent,
            self.socks,
            self.live,
            self.admin,
            self.log,
        ):
            section.validate()
        return self

    def override(self, **changes: Mapping[str, Any]) -> Config:
        """Return a copy with ``section={key: value}`` changes applied and validated."""
        updated = self
        for section_name, values in changes.items():
            section = getattr(updated, section_name)
            typed = _coerce_section(type(section), dict(values), section_name)
            updated = dataclasses.replace(
                updated, **{section_name: dataclasses.replace(section, **typed)}
            )
        return updated.validate()


def _coerce_value(expected: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(expected)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(expected)
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_coerce_value(item_type, item, f"{key}[{i}]") for i, item in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{key}: unsupported type")
    if isinstance(expected, type) and dataclasses.is_dataclass(expected):
        # A nested table, e.g. one entry of ``[[cache.key_rules]]``: the same strict walk as a
        # section, then the entry's own checks.
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        entry = typing.cast(Any, expected)(**_coerce_section(expected, value, key))
        check = getattr(entry, "validate", None)
        if check is not None:
            check()
        return entry
    checks: dict[Any, Callable[[Any], bool]] = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if not checks[expected](value):
        raise ConfigError(
            f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return float(value) if expected is float else value


def _coerce_section(cls: type[Any], table: dict[str, Any], name: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        out[key] = _coerce_value(hints[key], value, f"{name}.{key}")
    return out


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML file; ``None`` gives the defaults."""
    config = Config()
    if path is None:
        return config.validate()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(sections))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: expected a table")
    return config.override(**data)
