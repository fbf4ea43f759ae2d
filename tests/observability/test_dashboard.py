"""deploy/grafana/relay-dashboard.json: valid Grafana JSON whose every query is PromQL that parses
and names metrics the relay exports (no Grafana server here: promtool parses the queries)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.observability.artefacts import (
    DASHBOARD,
    metric_families,
    metrics_in,
    panel_queries,
    panels,
    series_names,
)
from tests.observability.artefacts import dashboard as load_dashboard
from tests.support.prometheus import promtool

BOARD = load_dashboard()
QUERIES = panel_queries(BOARD)


def test_top_level_fields() -> None:
    assert BOARD["uid"] == "realtime-relay"  # the compose stack and the Helm chart link to it
    assert BOARD["title"]
    assert 36 <= BOARD["schemaVersion"] <= 41
    assert isinstance(BOARD["panels"], list) and BOARD["panels"]
    assert DASHBOARD.read_text(encoding="utf-8").endswith("\n")


def test_template_variables() -> None:
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert set(variables) >= {"datasource", "instance", "tenant"}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("instance", "tenant"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert re.fullmatch(rf"label_values\(relay_[a-z_]+(\{{.*\}})?, {name}\)", query), query
        assert var["definition"] == query
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"


def test_every_panel_is_complete() -> None:
    ids = [p["id"] for p in BOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(BOARD):
        assert p["title"], p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no queries"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"{p['title']} {t['refId']}: no expr"
            assert t["datasource"]["uid"] == "${datasource}"
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]


def test_only_known_variables_are_used() -> None:
    allowed = {"tenant", "instance", "__rate_interval", "__interval", "__range"}
    for q in QUERIES:
        used = set(re.findall(r"\$\{?(\w+)", q.expr))
        assert used <= allowed, f"{q.label}: unknown variables {used - allowed}"


def test_every_query_names_existing_metrics() -> None:
    known = series_names()
    for q in QUERIES:
        names = metrics_in(q.expr)
        assert names, f"{q.label}: no relay_ metric"
        assert names <= known, f"{q.label}: unknown metrics {names - known}"


def test_every_metric_has_a_panel() -> None:
    shown = set().union(*(metrics_in(q.expr) for q in QUERIES))
    missing = [
        name
        for name, kind in metric_families().items()
        if not ({name} | ({f"{name}_bucket"} if kind == "histogram" else set())) & shown
    ]
    assert not missing, f"metrics without a dashboard panel: {missing}"


REQUIRED_PANELS = {
    # brief item → a metric whose panel answers it
    "live sessions per tenant": "relay_sessions_active",
    "audio minutes per tenant per hour": "relay_audio_seconds_total",
    "USD per tenant per hour": "relay_cost_usd_total",
    "first-audio latency": "relay_first_audio_seconds_bucket",
    "relay overhead": "relay_forward_seconds_bucket",
    "close codes": "relay_session_close_codes_total",
    "policy actions": "relay_policy_actions_total",
    "budget used": "relay_budget_used_ratio",
    "budget remaining": "relay_budget_remaining",
    "spool bytes": "relay_recording_spool_bytes",
    "upload lag": "relay_recording_upload_lag_seconds",
    "upload failures": "relay_recording_upload_failures_total",
    "recording dropped": "relay_recording_dropped_total",
    "upstream errors": "relay_upstream_errors_total",
    "handshake rejections": "relay_handshake_rejections_total",
}


@pytest.mark.parametrize("question", sorted(REQUIRED_PANELS))
def test_required_panel_exists(question: str) -> None:
    metric = REQUIRED_PANELS[question]
    assert any(metric in metrics_in(q.expr) for q in QUERIES), question


def test_first_audio_percentiles() -> None:
    exprs = [q.expr for q in QUERIES if "relay_first_audio_seconds_bucket" in q.expr]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}," in e for e in exprs), quantile
    overhead = [q.expr for q in QUERIES if "relay_forward_seconds_bucket" in q.expr]
    assert any("histogram_quantile(0.99," in e for e in overhead)


def test_tenant_filter_on_tenant_metrics() -> None:
    """Panels over tenant-labelled metrics honour the tenant variable; all honour instance."""
    tenant_metrics = {"relay_sessions_active", "relay_audio_seconds_total", "relay_cost_usd_total"}
    for q in QUERIES:
        assert 'instance=~"$instance"' in q.expr, q.label
        if metrics_in(q.expr) & tenant_metrics:
            assert 'tenant=~"$tenant"' in q.expr, q.label


def test_every_query_parses(tmp_path: Path) -> None:
    """Each query, macros substituted, as a recording rule: promtool parses every one."""
    rules = [
        {
            "record": f"dashboard:panel{q.panel_id}_{q.ref_id.lower()}",
            "expr": q.promql({"tenant": "acme|globex"}),
        }
        for q in QUERIES
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_broken_query_would_be_caught(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    bad = {"record": "dashboard:bad", "expr": "sum by (tenant) (rate(relay_sessions_total[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [bad]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0
