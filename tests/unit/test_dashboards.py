"""Every metric a Grafana panel queries is one the daemon really exports.

A renamed metric would otherwise leave a panel silently empty; this catches it without a
running Prometheus (a real-Prometheus check of the expressions belongs to the operations work).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cache.evictor import EvictionFigures
from swarmcache.metrics import Metrics

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
_METRIC = re.compile(r"\bswarmcache_[a-z0-9_]+")


def _exported_names() -> set[str]:
    metrics = Metrics()
    metrics.watch_store(lambda: (0, 0))
    metrics.watch_eviction(lambda: EvictionFigures(0, 0, 0, 0, {}, {}, 0))
    # Readers with one of everything, so labelled families have samples to show.
    metrics.watch_swarm(lambda: {}, lambda: [("00" * 20, "t", 0.5)])
    metrics.watch_sensing(
        lambda: {
            "packets": {"BT_HANDSHAKE": 1},
            "rewritten": 0,
            "handler_errors": 0,
            "stale": 0,
            "overflow": 0,
            "latency": (0.001, 0.002),
            "sightings": {"dht": 1},
            "steered": {},
            "torrents_seen": 1,
        }
    )
    names = set()
    for line in metrics.render().decode().splitlines():
        if not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS, "grafana/dashboards holds no dashboard"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exported = _exported_names()
    provisioned_uid = "swarmcache-prometheus"
    assert provisioned_uid in (GRAFANA / "provisioning/datasources/swarmcache.yaml").read_text()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == provisioned_uid, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            used = set(_METRIC.findall(target["expr"]))
            assert used, f"panel {panel['title']!r} queries no swarmcache metric"
            unknown = used - exported
            assert not unknown, f"panel {panel['title']!r} uses unexported {sorted(unknown)}"
