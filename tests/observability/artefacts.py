"""The observability artefacts under test, and what the tests extract from them.

One place that knows the paths (dashboard JSON, alert rules and their unit tests, docs) and how a
Grafana panel query becomes plain PromQL (Grafana's ``$__`` macros and template variables
substituted), so the static tests and the functional ones check the same thing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from relay.loopmetrics import LoopMetric
from relay.metrics import RelayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "relay-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
METRIC_NAME = re.compile(r"\brelay_[a-z0-9_]+\b")


@dataclass(frozen=True)
class PanelQuery:
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str
    """As written in the dashboard (with ``$__rate_interval``, ``$tenant``...)."""

    def promql(self, variables: dict[str, str] | None = None) -> str:
        """Plain PromQL: macros replaced, template variables set (default: match everything)."""
        out = self.expr
        for macro, value in MACROS.items():
            out = out.replace(macro, value)
        values = {"tenant": ".*", "instance": ".*"} | (variables or {})
        for name in sorted(values, key=len, reverse=True):
            out = out.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
        return out

    @property
    def label(self) -> str:
        return f"panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel except rows, rows' nested panels included."""
    board = board if board is not None else dashboard()
    out: list[dict[str, Any]] = []
    for p in board["panels"]:
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def panel_queries(board: dict[str, Any] | None = None) -> list[PanelQuery]:
    return [
        PanelQuery(p["id"], p.get("title", ""), t.get("refId", ""), t.get("expr", ""))
        for p in panels(board)
        for t in p.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_families() -> dict[str, str]:
    """name → type ("counter", "gauge", "histogram") of every metric RelayMetrics defines."""
    m = RelayMetrics(CollectorRegistry())
    out: dict[str, str] = {}
    for collector in vars(m).values():
        if isinstance(collector, MetricWrapperBase | LoopMetric):
            name = collector._name  # noqa: SLF001
            kind = collector._type  # noqa: SLF001
            out[name + "_total" if kind == "counter" and not name.endswith("_total") else name] = kind
    return out


def series_names() -> set[str]:
    """Every series name the exposition can carry (histogram ``_bucket/_sum/_count`` included)."""
    names: set[str] = set()
    for name, kind in metric_families().items():
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def metrics_in(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))
