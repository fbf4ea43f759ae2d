"""relay.metrics: the exposition passes ``promtool check metrics``; names, docs and pre-initialisation."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from relay import __version__
from relay.loopmetrics import LoopMetric
from relay.metrics import AUDIO_DIRECTIONS, RelayMetrics
from tests.observability.artefacts import METRICS_DOC, metric_families, series_names
from tests.support.prometheus import promtool


def touch_everything(m: RelayMetrics) -> None:
    """Give every metric a sample, with plausible label values."""
    for collector in vars(m).values():
        if not isinstance(collector, MetricWrapperBase | LoopMetric):
            continue
        names = collector._labelnames  # noqa: SLF001
        child = collector.labels(*[f"sample_{n}" for n in names]) if names else collector
        if hasattr(child, "observe"):
            child.observe(0.0003)
        elif collector._type == "gauge":  # noqa: SLF001
            child.set(1)
        else:
            child.inc()


def test_promtool_check_metrics_is_clean() -> None:
    m = RelayMetrics(CollectorRegistry())
    touch_everything(m)
    m.preinit_tenant("acme")
    text = generate_latest(m.registry).decode()
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )
    # The check is not vacuous: every family is in what promtool read.
    for name in metric_families():
        assert f"# TYPE {name.removesuffix('_total') if name.endswith('_total') else name}" in text


def test_promtool_check_metrics_catches_a_bad_name() -> None:
    """Guards the guard: promtool does flag a convention break in this format."""
    bad = "# HELP relay_bad_counter A counter.\n# TYPE relay_bad_counter counter\nrelay_bad_counter 1\n"
    result = promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0 and "_total" in (result.stdout + result.stderr)


def test_names_follow_the_conventions() -> None:
    for name, kind in metric_families().items():
        assert name.startswith("relay_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here measure durations in seconds"
        assert "_milliseconds" not in name and "_ms" not in name, f"{name}: base units only"


def test_every_metric_is_documented() -> None:
    doc = METRICS_DOC.read_text(encoding="utf-8")
    missing = [name for name in metric_families() if f"`{name}`" not in doc]
    assert not missing, f"docs/metrics.md does not document {missing}"
    unknown = {n for n in re.findall(r"`(relay_[a-z0-9_]+)", doc)} - series_names()
    assert not unknown, f"docs/metrics.md names metrics that do not exist: {sorted(unknown)}"


def test_forward_latency_buckets_see_tens_of_microseconds() -> None:
    m = RelayMetrics(CollectorRegistry())
    m.forward_seconds.labels("client_to_upstream").observe(0.00002)
    text = generate_latest(m.registry).decode()
    assert 'relay_forward_seconds_bucket{direction="client_to_upstream",le="2.5e-05"} 1.0' in text
    assert 'relay_forward_seconds_bucket{direction="client_to_upstream",le="1e-05"} 0.0' in text


def sample(m: RelayMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_series_that_exist_from_the_start() -> None:
    m = RelayMetrics(CollectorRegistry())
    assert sample(m, "relay_build_info", {"version": __version__}) == 1
    for direction in ("client_to_upstream", "upstream_to_client"):
        assert sample(m, "relay_forward_seconds_count", {"direction": direction}) == 0
    assert sample(m, "relay_draining", {}) == 0
    for result in ("ok", "error"):
        assert sample(m, "relay_policy_reloads_total", {"result": result}) == 0
    for status in ("complete", "incomplete"):
        assert sample(m, "relay_recordings_total", {"status": status}) == 0


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("relay_sessions_active", {}),
        ("relay_sessions_total", {"outcome": "ok"}),
        ("relay_session_duration_seconds_count", {}),
        ("relay_first_audio_seconds_count", {}),
        ("relay_tool_call_seconds_count", {}),
        *[("relay_audio_seconds_total", {"direction": d}) for d in AUDIO_DIRECTIONS],
        ("relay_recording_dropped_total", {"policy": "drop"}),
        ("relay_recording_dropped_total", {"policy": "terminate"}),
    ],
)
def test_preinit_tenant_creates_zero_series(name: str, labels: dict[str, str]) -> None:
    m = RelayMetrics(CollectorRegistry())
    assert sample(m, name, {"tenant": "acme", **labels}) is None
    m.preinit_tenant("acme")
    assert sample(m, name, {"tenant": "acme", **labels}) == 0
    m.preinit_tenant("acme")  # idempotent (policy reloads call it again)
    assert sample(m, name, {"tenant": "acme", **labels}) == 0
