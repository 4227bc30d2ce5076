"""Every metric the daemon exports is documented in docs/metrics.md, with its real type."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_dashboards import _exported_names

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(swarmcache_[a-z0-9_]+)` \| (counter|gauge) \|", re.M)


def test_every_exported_metric_is_documented() -> None:
    documented = dict(_ROW.findall(DOC.read_text()))
    # prometheus-client adds a `<counter>_created` series per counter: not a metric of ours
    exported = {n for n in _exported_names() if not n.endswith("_created")}
    missing = sorted(exported - set(documented))
    assert not missing, f"exported but not in docs/metrics.md: {missing}"


def test_documented_types_follow_the_suffix_convention() -> None:
    for name, kind in _ROW.findall(DOC.read_text()):
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
