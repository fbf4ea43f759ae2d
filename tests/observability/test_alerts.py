"""deploy/prometheus: the alert rules load (promtool check rules), their unit tests pass
(promtool test rules), every alert is tested firing and silent, and each test can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.observability.artefacts import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_EXAMPLE,
    alert_rules,
    metrics_in,
    series_names,
)
from tests.support.prometheus import promtool

REQUIRED_ALERTS = {
    "RelayRecordingUploadsFailing",
    "RelayRecordingSpoolGrowing",
    "RelayRecordingUploadLagHigh",
    "RelayRecordingDropped",
    "RelayOverheadHigh",
    "RelayTenantBudgetNearlyUsed",
    "RelayUpstreamErrorRateHigh",
    "RelayNoSuccessfulSessions",
}


def test_rules_load() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_exist_with_severity_and_text() -> None:
    rules = {r["alert"]: r for r in alert_rules() if "alert" in r}
    assert REQUIRED_ALERTS <= set(rules), REQUIRED_ALERTS - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_name_existing_metrics() -> None:
    known = series_names()
    for rule in alert_rules():
        names = metrics_in(rule["expr"])
        assert names and names <= known, f"{rule.get('alert')}: unknown metrics {names - known}"


def _cases() -> dict[str, tuple[int, int]]:
    """alert name → (evaluations expecting it to fire, evaluations expecting silence)."""
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    seen: dict[str, tuple[int, int]] = {}
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            fire, silent = seen.get(check["alertname"], (0, 0))
            if check.get("exp_alerts"):
                fire += 1
            else:
                silent += 1
            seen[check["alertname"]] = (fire, silent)
    return seen


@pytest.mark.parametrize("alert", sorted(r["alert"] for r in alert_rules() if "alert" in r))
def test_every_alert_is_tested_firing_and_silent(alert: str) -> None:
    fire, silent = _cases().get(alert, (0, 0))
    assert fire >= 1, f"{alert}: no unit test where it fires"
    assert silent >= 1, f"{alert}: no unit test where it stays silent"


@pytest.mark.parametrize("alert", sorted(r["alert"] for r in alert_rules() if "alert" in r))
def test_unit_tests_fail_when_the_alert_is_broken(alert: str, tmp_path: Path) -> None:
    """Mutation check: an alert whose expression never matches must make its unit tests fail."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = f"({rule['expr']}) and on() vector(0) > 1"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copyfile(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0, f"{alert}: the unit tests still pass with the alert disabled"
    assert alert in result.stdout + result.stderr
