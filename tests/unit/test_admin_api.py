"""The admin API's figures: read from the metrics registry, keys of the evictor included once
it publishes them; store keys split into destination and variant."""

from __future__ import annotations

from swarmcache.admin_api import OperatorAPI, _samples, _split_key
from swarmcache.metrics import Metrics


def test_samples_read_labelled_and_plain_counters() -> None:
    metrics = Metrics()
    metrics.requests.labels("hit").inc(3)
    metrics.saved_bytes.inc(1000)
    samples = _samples(metrics.registry)
    assert samples['swarmcache_http_requests_total{result="hit"}'] == 3
    assert samples["swarmcache_http_saved_bytes_total"] == 1000


def test_quota_figures_appear_only_when_the_evictor_publishes_them() -> None:
    assert OperatorAPI._quota({"swarmcache_store_bytes": 5.0}) is None
    quota = OperatorAPI._quota(
        {
            "swarmcache_store_quota_bytes": 1000.0,
            "swarmcache_store_bytes": 600.0,
            "swarmcache_bt_store_bytes": 150.0,
            'swarmcache_evicted_bytes_total{kind="http"}': 70.0,
            "swarmcache_eviction_runs_total": 2.0,
        }
    )
    assert quota is not None
    assert quota["used_bytes"] == 750 and quota["used_ratio"] == 0.75
    assert quota["evicted_bytes"] == {"http": 70, "torrent": 0}
    assert quota["eviction_runs"] == 2


def test_store_keys_name_their_destination_and_variant() -> None:
    url = b"http://example.com/a"
    assert _split_key(url) == (None, False)
    assert _split_key(url + b" @10.0.0.1:80") == ("10.0.0.1:80", False)
    assert _split_key(url + b" @10.0.0.1:80\x001.5\x00gzip") == ("10.0.0.1:80", True)
    assert _split_key(b"service:steam/depot/1\x002.0\x00") == (None, True)
