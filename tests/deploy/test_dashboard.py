"""The Grafana dashboard queries exactly the metrics the processes export."""

from __future__ import annotations

import json
import re

from shared.metrics import GatewayMetrics, WorkerMetrics
from tests.deploy.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "kaldi-stream-cluster.json"


def exported() -> set[str]:
    names: set[str] = set()
    for metrics in (GatewayMetrics(), WorkerMetrics()):
        for metric in metrics.registry.collect():
            # Families, not samples: a labelled counter has no sample before its first use.
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names.update(metric.name + s for s in suffixes.get(metric.type, [""]))
    return names


def test_dashboard_uses_exported_metrics_and_covers_them_all() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bksc_[a-z_]+", e)}
    names = exported()
    assert used <= names, f"not exported: {used - names}"
    families = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in names}
    covered = {re.sub(r"_(bucket|total)$", "", n) for n in used}
    assert families <= covered, f"not on the dashboard: {families - covered}"
