"""The metric catalogue, the Grafana dashboard and the README agree."""

import json
import re
from pathlib import Path

from raytf.observe.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]


def exported_name(name: str, kind: str) -> str:
    # Ray prefixes `ray_`; Prometheus adds `_total` to counters and `_bucket` to histograms.
    return "ray_" + name + {"counter": "_total", "histogram": "_bucket", "gauge": ""}[kind]


def test_every_metric_has_a_grafana_panel():
    dashboard = json.loads((ROOT / "cluster-configs" / "grafana-raytf.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name, (kind, _, _) in METRICS.items():
        assert re.search(rf"\b{exported_name(name, kind)}\b", exprs), f"{name} has no panel"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "run"}


def test_every_metric_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in METRICS:
        assert f"`{name}`" in readme, f"{name} missing from README's metrics table"
