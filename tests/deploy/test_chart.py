"""The Helm chart: renders, validates strictly, lints clean, and keeps the properties that matter
for a relay carrying live calls (drain on rollout, admin port private, secrets by reference,
non-root read-only pods, policies hot-reloading from a ConfigMap)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from relay import __version__
from relay.config import RelayConfig, load_config, split_hostport
from tests.deploy.chart_support import (
    CHART_DIR,
    DEMO_KEY,
    DEMO_KEY_SHA256,
    KUBE_VERSIONS,
    ROOT,
    chart,
    ci_values,
    deployment_container,
    find,
    kinds,
    materialize_configmap_volume,
    objects,
    promtool_check_rules,
    render,
    rendered_relay_yaml,
    validate_k8s,
)

ALL_OPTIONS = "all-options-values.yaml"
PRODUCTION = "production-values.yaml"
CHART_OWNED = {
    "listen",
    "admin_listen",
    "policies_dir",
    "tls_cert",
    "tls_key",
    "upstream.api_key",
    "recording.local_dir",
    "recording.spool_dir",
}


def _values(name: str) -> dict[str, Any]:
    return {} if name == "defaults" else ci_values(name)


VALUE_SETS = ["defaults", ALL_OPTIONS, PRODUCTION]


# --- renders, validates, lints -------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_every_manifest_validates_strictly(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    assert objs
    for version in KUBE_VERSIONS:
        for obj in objs:
            validate_k8s(obj, version)


def test_default_render_has_the_minimum_set() -> None:
    objs = objects(render())
    assert kinds(objs) == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )


def test_every_option_on_renders_every_kind() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    assert kinds(objs) == sorted(
        [
            "ConfigMap",  # relay.yaml
            "ConfigMap",  # policies
            "ConfigMap",  # Grafana dashboard
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_lint_is_clean(values_name: str) -> None:
    report = helm_python.lint(str(CHART_DIR), _values(values_name), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # Severity 1 is informational; the only one left is the optional chart icon.
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == []
    assert {m["error"] for m in report["messages"]} <= {"icon is recommended"}


def test_chart_app_version_is_the_relay_version() -> None:
    assert chart().metadata["appVersion"] == __version__
    container = deployment_container(objects(render()))
    assert container["image"].endswith(f":{__version__}")


# --- drain on rollout ----------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_grace_period_outlasts_prestop_plus_drain(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    cfg = yaml.safe_load(rendered_relay_yaml(objs))
    container = deployment_container(objs)
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(prestop[1]) + cfg["drain_seconds"]


@pytest.mark.parametrize(
    ("drain", "prestop", "grace"),
    [(30, 5, 35), (30, 5, 30), (30, 0, 30), (120, 5, 60), (0.5, 5, 5)],
)
def test_render_refuses_a_grace_period_that_cuts_calls(drain: float, prestop: int, grace: int) -> None:
    values = {
        "config": {"drain_seconds": drain},
        "lifecycle": {"preStopSleepSeconds": prestop},
        "terminationGracePeriodSeconds": grace,
    }
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(values)


def test_grace_period_just_above_the_sum_renders() -> None:
    values = {
        "config": {"drain_seconds": 30},
        "lifecycle": {"preStopSleepSeconds": 5},
        "terminationGracePeriodSeconds": 36,
    }
    pod = find(objects(render(values)), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 36


def test_rolling_update_starts_new_pods_before_stopping_old_ones() -> None:
    strategy = find(objects(render()), "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_autoscaler_owns_replicas_and_scales_down_gently() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    assert "replicas" not in find(objs, "Deployment")["spec"]
    hpa = find(objs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == find(objs, "Deployment")["metadata"]["name"]
    assert hpa["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert {
        "type": "Pods",
        "pods": {
            "metric": {"name": "relay_sessions_active"},
            "target": {"type": "AverageValue", "averageValue": "300"},
        },
    } in hpa["metrics"]  # noqa: E501


def test_pdb_selects_the_relay_pods() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    pdb = find(objs, "PodDisruptionBudget")["spec"]
    pod_labels = find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["minAvailable"] == "50%" and "maxUnavailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


# --- probes and ports ----------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_probes_hit_the_admin_listener(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    container = deployment_container(objs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cfg = load_config_from_chart(objs)
    assert split_hostport(cfg.admin_listen, key="admin_listen")[1] == ports["admin"]
    assert split_hostport(cfg.listen, key="listen")[1] == ports["http"]
    assert ports["admin"] != ports["http"]
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = container[probe]["httpGet"]
        assert get == {"path": path, "port": "admin"}, probe


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_public_service_never_exposes_the_admin_port(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    name = find(objs, "Deployment")["metadata"]["name"]
    public = find(objs, "Service", name)
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    if values_name == "defaults":
        assert [o for o in objs if o["kind"] == "Service"] == [public]


def test_metrics_service_exists_only_for_the_service_monitor() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    name = find(objs, "Deployment")["metadata"]["name"]
    metrics = find(objs, "Service", f"{name}-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["admin"]
    monitor = find(objs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert (
        not monitor["selector"]["matchLabels"].items()
        <= find(objs, "Service", name)["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["endpoints"]] == ["admin"]

    values = ci_values(ALL_OPTIONS)
    values["metrics"]["serviceMonitor"]["enabled"] = False
    assert [o for o in objects(render(values)) if o["kind"] == "Service"] == [
        o for o in objects(render(values)) if o["kind"] == "Service" and o["metadata"]["name"] == name
    ]


def test_network_policy_keeps_the_admin_port_private() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    rules = find(objs, "NetworkPolicy")["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r for r in rules}
    assert set(by_port) == {"http", "admin"}
    assert by_port["admin"]["from"] == ci_values(ALL_OPTIONS)["networkPolicy"]["adminFrom"]


def test_ingress_keeps_websockets_open() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    ingress = find(objs, "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    # TLS at the relay too: the ingress must speak HTTPS to it.
    assert ann["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(objs, "Service", backend["name"])
    assert backend["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]

    default_on = {"ingress": {"enabled": True}}
    ann = find(objects(render(default_on)), "Ingress")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in ann


# --- configuration -------------------------------------------------------------------------------


def load_config_from_chart(objs: list[dict[str, Any]], tmp: Path | None = None) -> RelayConfig:
    """The rendered relay.yaml read by the relay's own loader, with the pod's secret env vars set."""
    import tempfile

    container = deployment_container(objs)
    env = {e["name"]: "from-secret" for e in container.get("env", []) if "valueFrom" in e}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    if "RELAY_BUDGETS_STORE" in env:
        env["RELAY_BUDGETS_STORE"] = "redis://from-secret:6379/0"
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "relay.yaml"
        p.write_text(rendered_relay_yaml(objs))
        return load_config(p, environ=env)


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_rendered_config_is_accepted_by_the_relay(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    cfg = load_config_from_chart(objs)
    container = deployment_container(objs)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert container["args"] == ["serve", "--config", "/etc/relay/relay.yaml"]
    assert mounts["/etc/relay/relay.yaml"]["subPath"] == "relay.yaml"
    assert cfg.policies_dir in mounts
    assert cfg.recording.spool_dir in mounts
    assert not cfg.simulated_upstream, "the chart must hand the relay an upstream key"
    if cfg.tls_cert:
        assert Path(cfg.tls_cert).parent.as_posix() in mounts
        assert Path(cfg.tls_key).parent.as_posix() in mounts


def test_config_changes_roll_pods_but_policy_changes_do_not() -> None:
    base = ci_values(PRODUCTION)
    template = find(objects(render(base)), "Deployment")["spec"]["template"]

    new_tenant = copy.deepcopy(base)
    new_tenant["policies"]["tenants"]["globex"] = "version: 1\nkeys: []\n"
    assert (
        find(objects(render(new_tenant)), "Deployment")["spec"]["template"]["metadata"]
        == template["metadata"]
    )

    new_config = copy.deepcopy(base)
    new_config["config"]["log_level"] = "debug"
    changed = find(objects(render(new_config)), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/config"] != template["metadata"]["annotations"]["checksum/config"]
    assert [k for k in changed if k.startswith("checksum/")] == ["checksum/config"]


def _schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        if sub.get("type") == "object" and "properties" in sub:
            out |= _schema_paths(sub, path + ".")
    return out


def _config_paths(cls: type[Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.add(path)
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _config_paths(hints[f.name], path + ".")
    return out


def test_values_schema_knows_every_relay_config_key() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    in_schema = _schema_paths(schema["properties"]["config"])
    in_relay = _config_paths(RelayConfig)
    assert in_schema == in_relay - CHART_OWNED, (
        "values.schema.json config keys drifted from relay/config.py: "
        f"missing {sorted(in_relay - CHART_OWNED - in_schema)}, unknown {sorted(in_schema - in_relay)}"
    )


# --- secrets -------------------------------------------------------------------------------------

SENSITIVE_ENV = {
    "RELAY_UPSTREAM_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "RELAY_BUDGETS_STORE",
}


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_secrets_are_referenced_never_inlined(values_name: str) -> None:
    values = _values(values_name)
    rendered = render(values)
    objs = objects(rendered)
    assert "Secret" not in kinds(objs)
    env = {e["name"]: e for e in deployment_container(objs).get("env", [])}
    present = SENSITIVE_ENV & set(env)
    assert "RELAY_UPSTREAM_API_KEY" in present
    for name in present:
        assert set(env[name]) == {"name", "valueFrom"}, env[name]
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}
    cfg_text = rendered_relay_yaml(objs)
    assert "api_key" not in cfg_text
    everything = "\n".join(rendered.values())
    assert "sk-" not in everything.replace("sk-...", "")


def test_each_secret_reference_uses_the_named_secret_and_key() -> None:
    values = ci_values(ALL_OPTIONS)
    env = {e["name"]: e for e in deployment_container(objects(render(values))).get("env", [])}
    refs = {n: env[n]["valueFrom"]["secretKeyRef"] for n in SENSITIVE_ENV}
    s = values["secrets"]
    assert refs["RELAY_UPSTREAM_API_KEY"] == {
        "name": s["openai"]["existingSecret"],
        "key": s["openai"]["key"],
    }
    assert refs["AWS_ACCESS_KEY_ID"] == {
        "name": s["aws"]["existingSecret"],
        "key": s["aws"]["accessKeyIdKey"],
    }
    assert refs["AWS_SECRET_ACCESS_KEY"] == {
        "name": s["aws"]["existingSecret"],
        "key": s["aws"]["secretAccessKeyKey"],
    }
    assert refs["RELAY_BUDGETS_STORE"] == {"name": s["redis"]["existingSecret"], "key": s["redis"]["key"]}


def test_service_account_carries_the_iam_role_and_no_token() -> None:
    objs = objects(render(ci_values(PRODUCTION)))
    sa = find(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert sa["automountServiceAccountToken"] is False
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"] for e in deployment_container(objs)["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_development_mode_runs_without_a_key_only_when_asked() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="secrets.openai.existingSecret"):
        render({"secrets": {"openai": {"existingSecret": ""}}})
    with pytest.raises(helm_python.HelmRenderError, match="devSimulatedUpstream"):
        render({"devSimulatedUpstream": True})
    rendered = render({"devSimulatedUpstream": True, "secrets": {"openai": {"existingSecret": ""}}})
    objs = objects(rendered)
    assert "RELAY_UPSTREAM_API_KEY" not in {e["name"] for e in deployment_container(objs).get("env", [])}
    assert load_config_from_chart(objs).simulated_upstream
    assert "DEVELOPMENT MODE" in rendered["realtime-relay/templates/NOTES.txt"]


# --- pod hardening -------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_pod_runs_non_root_on_a_read_only_root(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    container = deployment_container(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False
    # Every path the relay writes is a volume, not the root filesystem.
    cfg = load_config_from_chart(objs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = ["/tmp", cfg.recording.spool_dir]
    if cfg.recording.enabled and cfg.recording.sink == "local":
        writable.append(cfg.recording.local_dir)
    for path in writable:
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly", False)
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("values_name", [ALL_OPTIONS, PRODUCTION])
def test_spool_limit_stays_below_the_emptydir_limit(values_name: str) -> None:
    objs = objects(render(ci_values(values_name)))
    cfg = load_config_from_chart(objs)
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    spool = next(v for v in pod["volumes"] if v["name"] == "spool")
    assert cfg.recording.spool_max_mb < int(spool["emptyDir"]["sizeLimit"].removesuffix("Mi"))


def test_render_refuses_a_spool_bigger_than_its_volume() -> None:
    values = ci_values(PRODUCTION)
    values["config"]["recording"]["spool_max_mb"] = 4096
    with pytest.raises(helm_python.HelmRenderError, match="spool_max_mb"):
        render(values)


# --- policies ------------------------------------------------------------------------------------


def _policies_volume(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in deployment_container(objs)["volumeMounts"] if m["name"] == "policies"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "policies"]
    return mount, volume


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_policies_are_a_configmap_directory(values_name: str) -> None:
    objs = objects(render(_values(values_name)))
    mount, volume = _policies_volume(objs)
    cfg = load_config_from_chart(objs)
    assert mount["mountPath"] == cfg.policies_dir
    assert "subPath" not in mount and "subPathExpr" not in mount, "subPath mounts never see ConfigMap updates"
    assert mount["readOnly"] is True
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    paths = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert set(paths) == set(cm["data"])
    assert paths["default.yaml"] == "default.yaml"
    tenants = _values(values_name).get("policies", {}).get("tenants", {})
    for tenant, content in tenants.items():
        assert paths[f"tenant.{tenant}.yaml"] == f"tenants/{tenant}.yaml"
        assert cm["data"][f"tenant.{tenant}.yaml"] == content


def test_default_policy_is_the_repository_default() -> None:
    objs = objects(render())
    _, volume = _policies_volume(objs)
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    assert cm["data"] == {"default.yaml": (ROOT / "policies" / "default.yaml").read_text()}


def test_existing_policies_configmap_is_mounted_with_its_items() -> None:
    items = [{"key": "default.yaml", "path": "default.yaml"}, {"key": "acme", "path": "tenants/acme.yaml"}]
    objs = objects(
        render({"policies": {"existingConfigMap": "gitops-policies", "existingConfigMapItems": items}})
    )
    mount, volume = _policies_volume(objs)
    assert volume["configMap"] == {"name": "gitops-policies", "items": items}
    assert "subPath" not in mount
    assert [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-policies")] == []
    with pytest.raises(helm_python.HelmRenderError, match="existingConfigMapItems"):
        render({"policies": {"existingConfigMap": "gitops-policies"}})


async def test_policy_configmap_updates_hot_reload_in_a_running_watcher(tmp_path: Path) -> None:
    """The chart's ConfigMap, written the way the kubelet writes it, then updated in place: the
    relay's own policy watcher sees the swap and the new tenant keys work, with no restart."""
    from relay.policy.store import PolicyStore
    from relay.policy.watcher import PolicyWatcher

    key_a, key_b = "rr-acme-test-key", "rr-globex-test-key"

    def tenant_file(kid: str, key: str) -> str:
        return f"version: 1\nkeys:\n  - {{id: {kid}, sha256: {hashlib.sha256(key.encode()).hexdigest()}}}\n"

    def materialize(values: dict[str, Any], stamp: str) -> None:
        objs = objects(render(values))
        _, volume = _policies_volume(objs)
        cm = find(objs, "ConfigMap", volume["configMap"]["name"])
        materialize_configmap_volume(tmp_path, cm, volume["configMap"]["items"], stamp)

    materialize({"policies": {"tenants": {"acme": tenant_file("acme-1", key_a)}}}, "2025_01_01_00_00_00.1")
    assert (tmp_path / "tenants").is_symlink() and (tmp_path / "..data").is_symlink()
    changes: list[PolicyStore] = []
    watcher = PolicyWatcher(tmp_path, changes.append, interval=0.05, settle=0.05)
    assert watcher.store.authenticate(key_a) == ("acme", "acme-1")
    assert watcher.store.authenticate(key_b) is None
    await watcher.start()
    try:
        materialize(
            {"policies": {"tenants": {"globex": tenant_file("globex-1", key_b)}}}, "2025_01_01_00_01_00.2"
        )
        for _ in range(100):
            if changes:
                break
            await asyncio.sleep(0.05)
        assert changes, "the watcher did not pick up the ConfigMap update"
        store = changes[-1]
        assert store.authenticate(key_b) == ("globex", "globex-1")
        assert store.authenticate(key_a) is None
        assert store.tenants == ["globex"]
    finally:
        await watcher.stop()


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_demo_key_is_never_active(values_name: str) -> None:
    text = "\n".join(render(_values(values_name)).values())
    assert DEMO_KEY_SHA256 not in text
    assert DEMO_KEY not in text
    for f in CHART_DIR.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert DEMO_KEY_SHA256.encode() not in data and DEMO_KEY.encode() not in data, f


def test_demo_key_hash_matches_the_demo_tenant_file() -> None:
    # Guards the test above: the hash it looks for is the one the demo tenant really uses.
    demo = yaml.safe_load((ROOT / "policies" / "tenants" / "demo.yaml").read_text())
    assert DEMO_KEY_SHA256 in {k["sha256"] for k in demo["keys"]}


# --- observability -------------------------------------------------------------------------------

COPIES = {
    "files/alerts.yml": "deploy/prometheus/alerts.yml",
    "files/relay-dashboard.json": "deploy/grafana/relay-dashboard.json",
    "files/policies/default.yaml": "policies/default.yaml",
}


@pytest.mark.parametrize(("copy_path", "original"), sorted(COPIES.items()))
def test_chart_copies_are_identical_to_the_originals(copy_path: str, original: str) -> None:
    """Helm can only read files inside the chart, so it carries copies; they must not drift.
    Fix a failure with: cp <original> helm/realtime-relay/<copy>."""
    assert (ROOT / original).is_file(), f"{original} is missing"
    assert (CHART_DIR / copy_path).read_bytes() == (ROOT / original).read_bytes(), (
        f"helm/realtime-relay/{copy_path} differs from {original}"
    )


def test_prometheus_rule_carries_the_repository_alerts() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    rule = find(objs, "PrometheusRule")
    expected = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    promtool_check_rules(rule["spec"]["groups"])


def test_grafana_dashboard_configmap_for_the_sidecar() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    name = find(objs, "Deployment")["metadata"]["name"]
    cm = find(objs, "ConfigMap", f"{name}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Voice"}
    (payload,) = cm["data"].values()
    assert json.loads(payload) == json.loads((ROOT / "deploy/grafana/relay-dashboard.json").read_text())


def test_service_monitor_names_the_job_like_the_other_prometheus_configs() -> None:
    objs = objects(render(ci_values(ALL_OPTIONS)))
    (endpoint,) = find(objs, "ServiceMonitor")["spec"]["endpoints"]
    (relabel,) = endpoint["relabelings"]
    jobs = {
        c["job_name"]
        for f in ("deploy/compose/prometheus.yml", "deploy/prometheus/prometheus.yml")
        for c in yaml.safe_load((ROOT / f).read_text())["scrape_configs"]
    }
    assert jobs == {relabel["replacement"]}
    assert endpoint["path"] == "/metrics"


# --- schema --------------------------------------------------------------------------------------

BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("negative replicas", {"replicaCount": -1}),
    ("replicas as text", {"replicaCount": "three"}),
    ("zero grace period", {"terminationGracePeriodSeconds": 0}),
    ("negative drain", {"config": {"drain_seconds": -5}}),
    ("inline OpenAI key", {"config": {"upstream": {"api_key": "sk-live-123"}}}),
    ("chart-owned listen", {"config": {"listen": "0.0.0.0:1234"}}),
    ("chart-owned admin_listen", {"config": {"admin_listen": "0.0.0.0:9999"}}),
    ("chart-owned policies_dir", {"config": {"policies_dir": "/tmp"}}),
    ("unknown config key", {"config": {"drain_secs": 30}}),
    ("unknown top-level key", {"replicas": 3}),
    ("bad sink", {"config": {"recording": {"sink": "ftp"}}}),
    ("bad budget store", {"config": {"budgets": {"store": "mysql://db"}}}),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("port out of range", {"service": {"port": 70000}}),
    ("short websocket timeout", {"ingress": {"websocketTimeoutSeconds": 10}}),
    ("bad tenant name", {"policies": {"tenants": {"Acme Corp": "version: 1\n"}}}),
    ("bad secret name", {"secrets": {"openai": {"existingSecret": "Bad_Name"}}}),
    ("cpu target over 100", {"autoscaling": {"targetCPUUtilizationPercentage": 150}}),
    ("plain-text key via extraEnv", {"extraEnv": [{"name": "RELAY_UPSTREAM_API_KEY", "value": "sk-x"}]}),
    ("negative preStop", {"lifecycle": {"preStopSleepSeconds": -1}}),
    ("bad digest", {"image": {"digest": "latest"}}),
]


@pytest.mark.parametrize(("why", "values"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values(why: str, values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart().validate_schema(chart().merge_values(values))
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError)):
        render(values)


def test_schema_accepts_the_shipped_value_files() -> None:
    for values in ({}, ci_values(ALL_OPTIONS), ci_values(PRODUCTION)):
        chart().validate_schema(chart().merge_values(values))


def test_secret_env_through_extra_env_must_be_a_reference() -> None:
    ref = {"name": "RELAY_UPSTREAM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}
    chart().validate_schema(chart().merge_values({"extraEnv": [ref]}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"recording": {"enabled": True, "sink": "s3"}}}, "s3.bucket"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ],
)
def test_render_refuses_inconsistent_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)


def test_notes_warn_about_per_pod_budgets_and_missing_tenants() -> None:
    notes = render()["realtime-relay/templates/NOTES.txt"]
    assert "NO TENANT KEYS" in notes
    assert "each pod keeps its own budget" in notes
    notes = render(ci_values(PRODUCTION))["realtime-relay/templates/NOTES.txt"]
    assert "NO TENANT KEYS" not in notes and "own budget" not in notes
    assert "wss://relay.example.com/v1" in notes


def test_strict_validation_catches_a_misspelt_field() -> None:
    # Guards every validation test above: strict mode must reject fields Kubernetes does not know.
    deployment = copy.deepcopy(find(objects(render()), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(AssertionError, match="readinessProbes"):
        validate_k8s(deployment, "1.30.0")
