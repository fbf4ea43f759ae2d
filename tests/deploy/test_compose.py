"""docker-compose.yml: valid against the compose spec, strictly parsed, and wired consistently.

No Docker engine runs here, so the stack cannot be started; what can be checked is checked for
real: the compose-spec JSON schema (check-jsonschema), the strict compose parser (compose_spec),
every file the stack mounts, and that every host name and port the relay is configured with is a
service of the stack listening there. The relay's own config loader reads the compose relay.yaml,
and promtool checks the Prometheus configuration with the repository's alert rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.config import RelayConfig, load_config, split_hostport
from tests.deploy.chart_support import DEMO_KEY, DEMO_KEY_SHA256, ROOT, promtool

try:
    import compose_spec
except ImportError as exc:  # pragma: no cover
    raise ImportError(f"tests/deploy needs compose-spec (pip install -e '.[dev]'): {exc}") from exc

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR} / ${VAR:-default} substitution, as `docker compose config` applies it."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def stack(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file with every variable at its default (nothing exported on the host)."""
    return interpolate(raw, {})


def service(stack: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in stack["services"], f"service {name} missing"
    return stack["services"][name]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: v for k, v in env.items() if v is not None}


def binds(svc: dict[str, Any]) -> dict[str, str]:
    """Container path → host path for bind mounts (short syntax)."""
    out = {}
    for v in svc.get("volumes", []):
        src, dst, *_ = v.split(":")
        if src.startswith((".", "/")):
            out[dst] = src
    return out


def named_volumes(svc: dict[str, Any]) -> dict[str, str]:
    out = {}
    for v in svc.get("volumes", []):
        src, dst, *_ = v.split(":")
        if not src.startswith((".", "/")):
            out[dst] = src
    return out


def container_ports(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])} | {
        int(p) for p in svc.get("expose", [])
    }


@pytest.fixture(scope="module")
def relay_cfg(stack: dict[str, Any]) -> RelayConfig:
    """deploy/compose/relay.yaml read by the relay's own loader with the relay container's env."""
    relay = service(stack, "relay")
    assert relay["command"][:2] == ["serve", "--config"]
    host_path = binds(relay)[relay["command"][2]]
    return load_config(ROOT / host_path, environ=env_of(relay))


# --- validity ------------------------------------------------------------------------------------


def test_compose_spec_json_schema() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    assert exe.exists(), "check-jsonschema is missing (pip install -e '.[dev]')"
    res = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_strict_compose_parser_accepts_it() -> None:
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE_FILE.read_text())
    parsed.validate()
    assert set(parsed.service_names()) == {
        "relay",
        "sim",
        "redis",
        "minio",
        "minio-init",
        "prometheus",
        "grafana",
    }


def test_strict_parser_is_not_lenient() -> None:
    # Guards the test above: the parser must reject a value outside the spec's enums.
    bad = COMPOSE_FILE.read_text().replace('restart: "no"', "restart: sometimes", 1)
    assert bad != COMPOSE_FILE.read_text()
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml(bad)


def test_images_are_pinned(stack: dict[str, Any]) -> None:
    for name, svc in stack["services"].items():
        image = svc["image"]
        if "build" in svc:
            assert image == "realtime-relay:dev", name
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin {image} to a release"


# --- files ---------------------------------------------------------------------------------------


def test_every_referenced_file_exists(stack: dict[str, Any]) -> None:
    for name, svc in stack["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for dst, src in binds(svc).items():
            assert (ROOT / src).exists(), f"{name}: {src} (mounted at {dst}) does not exist"
        for vol in named_volumes(svc).values():
            assert vol in stack["volumes"], f"{name}: volume {vol} is not declared"


def test_observability_files_are_the_repository_ones(stack: dict[str, Any]) -> None:
    prom = binds(service(stack, "prometheus"))
    graf = binds(service(stack, "grafana"))
    assert prom["/etc/prometheus/rules/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert prom["/etc/prometheus/prometheus.yml"] == "./deploy/compose/prometheus.yml"
    dashboards = {dst: src for dst, src in graf.items() if src.endswith(".json")}
    assert list(dashboards.values()) == ["./deploy/grafana/relay-dashboard.json"]

    # Grafana's file provider reads the directory the dashboard is mounted into...
    provider_dir = graf["/etc/grafana/provisioning/dashboards"]
    (provider,) = yaml.safe_load((ROOT / provider_dir / "realtime-relay.yaml").read_text())["providers"]
    (dashboard_path,) = dashboards
    assert str(Path(dashboard_path).parent) == provider["options"]["path"]
    # ...and the dashboard's data source variable finds the provisioned Prometheus.
    ds_dir = graf["/etc/grafana/provisioning/datasources"]
    (ds,) = yaml.safe_load((ROOT / ds_dir / "prometheus.yaml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    dashboard = json.loads((ROOT / "deploy/grafana/relay-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == ds["type"]
    url = urlsplit(ds["url"])
    assert url.hostname == "prometheus"
    assert url.port in container_ports(service(stack, "prometheus"))


def test_prometheus_config_loads_the_repository_alert_rules(stack: dict[str, Any], tmp_path: Path) -> None:
    """promtool checks the compose prometheus.yml laid out exactly as the container sees it."""
    prom = service(stack, "prometheus")
    mounts = binds(prom)
    config_in_container = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    for dst, src in mounts.items():
        target = tmp_path / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / src, target)
    config = tmp_path / config_in_container.lstrip("/")
    res = subprocess.run(
        [promtool(), "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout + res.stderr


# --- wiring --------------------------------------------------------------------------------------


def test_relay_config_loads_and_uses_stack_services(stack: dict[str, Any], relay_cfg: RelayConfig) -> None:
    relay = service(stack, "relay")
    # Budgets in the stack's Redis.
    store = urlsplit(relay_cfg.budgets.store)
    assert store.scheme == "redis" and store.hostname == "redis"
    assert (store.port or 6379) == 6379  # redis-server's default port; the service sets no other
    assert "--port" not in service(stack, "redis")["command"]
    assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
    # Recordings in MinIO, with credentials of the user minio-init creates.
    s3 = relay_cfg.recording.s3
    assert relay_cfg.recording.enabled and relay_cfg.recording.sink == "s3"
    endpoint = urlsplit(s3.endpoint_url)
    assert endpoint.hostname == "minio" and endpoint.port == 9000
    assert "--address" not in service(stack, "minio")["command"]  # MinIO's S3 API stays on :9000
    assert s3.addressing_style == "path"
    init_env = env_of(service(stack, "minio-init"))
    relay_env = env_of(relay)
    assert relay_env["AWS_ACCESS_KEY_ID"] == init_env["RELAY_S3_ACCESS_KEY"]
    assert relay_env["AWS_SECRET_ACCESS_KEY"] == init_env["RELAY_S3_SECRET_KEY"]
    assert relay["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # Writable paths are volumes (the container's root filesystem is read-only).
    assert relay["read_only"] is True
    assert relay_cfg.recording.spool_dir in named_volumes(relay)
    assert binds(relay)[relay_cfg.policies_dir] == "./deploy/compose/policies"


def test_bucket_is_the_one_minio_init_creates_with_object_lock(relay_cfg: RelayConfig) -> None:
    script = (COMPOSE_DIR / "minio" / "init-bucket.sh").read_text()
    assert re.search(r"^BUCKET=(\S+)$", script, re.M).group(1) == relay_cfg.recording.s3.bucket  # type: ignore[union-attr]
    assert 'mc mb --ignore-existing --with-lock "local/$BUCKET"' in script
    assert "mc retention set --default GOVERNANCE" in script
    policy = json.loads((COMPOSE_DIR / "minio" / "relay-policy.json").read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    bucket = relay_cfg.recording.s3.bucket
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert not {a for a in actions if "Delete" in a or "Bypass" in a or a == "s3:*"}, actions
    res = subprocess.run(
        ["sh", "-n", str(COMPOSE_DIR / "minio" / "init-bucket.sh")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_init_script_and_policy_are_mounted_where_the_entrypoint_reads_them(stack: dict[str, Any]) -> None:
    init = service(stack, "minio-init")
    mounts = binds(init)
    assert init["entrypoint"] == ["/bin/sh", "/init/init-bucket.sh"]
    assert mounts["/init/init-bucket.sh"] == "./deploy/compose/minio/init-bucket.sh"
    assert mounts["/init/relay-policy.json"] == "./deploy/compose/minio/relay-policy.json"
    assert "/init/relay-policy.json" in (COMPOSE_DIR / "minio" / "init-bucket.sh").read_text()
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_demo_profile_simulator_is_the_relay_upstream(stack: dict[str, Any], relay_cfg: RelayConfig) -> None:
    sim = service(stack, "sim")
    assert sim["profiles"] == ["demo"]
    assert "profiles" not in service(stack, "relay")
    up = urlsplit(relay_cfg.upstream.url)
    assert up.scheme == "ws" and up.hostname == "sim" and up.path == "/v1/realtime"
    cmd = sim["command"]
    assert cmd[0] == "sim"
    listen = cmd[cmd.index("--listen") + 1]
    assert split_hostport(listen, key="sim --listen")[1] == up.port
    assert up.port in container_ports(sim)
    # The relay presents the key the simulator expects (same variable, same default).
    assert relay_cfg.upstream.api_key == cmd[cmd.index("--api-key") + 1] != ""


def test_host_overrides_switch_the_relay_to_openai(raw: dict[str, Any]) -> None:
    env = {"RELAY_UPSTREAM_URL": "wss://api.openai.com/v1/realtime", "RELAY_UPSTREAM_API_KEY": "sk-test"}
    relay = interpolate(raw, env)["services"]["relay"]
    # Compose passes a variable listed without a value through from the host when it is set.
    container_env = env_of(relay) | {
        k: env[k] for k, v in relay["environment"].items() if v is None and k in env
    }
    cfg = load_config(ROOT / binds(relay)["/etc/relay/relay.yaml"], environ=container_env)
    assert cfg.upstream.url == "wss://api.openai.com/v1/realtime"
    assert cfg.upstream.api_key == "sk-test"


def test_prometheus_scrapes_the_relay_admin_port(stack: dict[str, Any], relay_cfg: RelayConfig) -> None:
    prom_cfg = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    (job,) = prom_cfg["scrape_configs"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = split_hostport(target, key="target")
    assert host == "relay"
    assert port == split_hostport(relay_cfg.admin_listen, key="admin_listen")[1]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert prom_cfg["rule_files"] == ["rules/alerts.yml"]


def test_published_ports_are_the_configured_ones_on_loopback(
    stack: dict[str, Any], relay_cfg: RelayConfig
) -> None:
    listen = split_hostport(relay_cfg.listen, key="listen")
    admin = split_hostport(relay_cfg.admin_listen, key="admin_listen")
    assert listen[0] == admin[0] == "0.0.0.0"  # reachable from the other containers
    assert container_ports(service(stack, "relay")) == {listen[1], admin[1]}
    for name, svc in stack["services"].items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond the host's loopback"


def test_image_health_check_matches_the_admin_listener(stack: dict[str, Any], relay_cfg: RelayConfig) -> None:
    # The relay service keeps the image's HEALTHCHECK, which probes 127.0.0.1:9464/healthz.
    assert "healthcheck" not in service(stack, "relay")
    dockerfile = (ROOT / "Dockerfile").read_text()
    (port,) = re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", dockerfile)
    assert int(port) == split_hostport(relay_cfg.admin_listen, key="admin_listen")[1]


def test_stop_grace_period_outlasts_the_drain(stack: dict[str, Any], relay_cfg: RelayConfig) -> None:
    grace = service(stack, "relay")["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) >= relay_cfg.drain_seconds + 30 + 5  # drain + final uploads + margin


# --- policies ------------------------------------------------------------------------------------


def test_compose_policies_carry_no_demo_key(relay_cfg: RelayConfig) -> None:
    policies = COMPOSE_DIR / "policies"
    for f in policies.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert DEMO_KEY_SHA256.encode() not in data and DEMO_KEY.encode() not in data, f
    assert [p.name for p in (policies / "tenants").glob("*.yaml")] == []
    assert (policies / "default.yaml").read_bytes() == (ROOT / "policies" / "default.yaml").read_bytes(), (
        "deploy/compose/policies/default.yaml drifted from policies/default.yaml: copy it over"
    )
    # The relay's policy store loads the directory: no tenant, so every key is refused.
    from relay.policy.store import PolicyStore

    store = PolicyStore.load(policies)
    assert store.tenants == []
    assert store.authenticate(DEMO_KEY) is None
