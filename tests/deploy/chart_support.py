"""Rendering and validating the Helm chart offline (helm-python-sdk + kubernetes-validate).

No helm binary or Kubernetes API exists on these machines: the chart is rendered by Helm's own
engine through helm-python-sdk, and every manifest is checked against the Kubernetes OpenAPI
schemas (strict: unknown fields are errors) shipped with kubernetes-validate.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

try:
    import helm_python
    import kubernetes_validate
except ImportError as exc:  # pragma: no cover - a missing dev dependency must fail, not skip
    raise ImportError(
        f"tests/deploy needs helm-python-sdk and kubernetes-validate (pip install -e '.[dev]'): {exc}"
    ) from exc

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "realtime-relay"
CI_VALUES = CHART_DIR / "ci"
KUBE_VERSIONS = ("1.25.0", "1.30.0", kubernetes_validate.latest_version() + ".0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
RELEASE = "rel"
NAMESPACE = "voice"

DEMO_KEY = "rr-demo-key-not-for-production"
DEMO_KEY_SHA256 = hashlib.sha256(DEMO_KEY.encode()).hexdigest()

_chart: Any = None


def chart() -> Any:
    global _chart
    if _chart is None:
        _chart = helm_python.Chart.load(str(CHART_DIR))
    return _chart


def ci_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CI_VALUES / name).read_text())
    assert isinstance(data, dict)
    return data


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> dict[str, str]:
    """Template path → rendered text, exactly as `helm template` would produce."""
    return chart().render(values or {}, name=name, namespace=NAMESPACE)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered output (NOTES.txt and empty templates left out)."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                out.append(doc)
    return out


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def validate_k8s(obj: dict[str, Any], version: str) -> None:
    """Strict OpenAPI validation; CRD kinds have no schema there and get structural checks instead."""
    if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            check_crd_shape(obj)
            return
        raise AssertionError(f"unexpected schema for CRD kind {obj['kind']}")  # pragma: no cover
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(
            f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {exc.message}"
        ) from None


def check_crd_shape(obj: dict[str, Any]) -> None:
    """The fields the Prometheus Operator requires (its CRD schemas are not available offline)."""
    meta = obj["metadata"]
    assert meta["name"] and meta["namespace"], obj
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"], spec
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"}, ep
            assert isinstance(ep["port"], str)
    else:
        assert spec["groups"], spec
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str | int)


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install the Debian package 'prometheus' (make sysdeps)"
    return path


def promtool_check_rules(groups: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "rules.yml")
        Path(f).write_text(yaml.safe_dump({"groups": groups}))
        res = subprocess.run([promtool(), "check", "rules", f], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def deployment_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def rendered_relay_yaml(objs: list[dict[str, Any]]) -> str:
    cms = [o for o in objs if o["kind"] == "ConfigMap" and "relay.yaml" in o.get("data", {})]
    assert len(cms) == 1
    return cms[0]["data"]["relay.yaml"]


def materialize_configmap_volume(
    target: Path, configmap: dict[str, Any], items: list[dict[str, str]] | None, stamp: str
) -> None:
    """Write a ConfigMap volume the way the kubelet's atomic writer does, or update it in place.

    Layout: a timestamped directory ``..<stamp>`` with the payload, a ``..data`` symlink to it
    swapped atomically by rename, and top-level symlinks ``<first path component>`` →
    ``..data/<component>``. An update writes a new timestamped directory and renames a fresh
    ``..data`` link over the old one, exactly the change a pod sees when its ConfigMap is edited.
    """
    data: dict[str, str] = configmap.get("data", {})
    payload = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
    target.mkdir(parents=True, exist_ok=True)
    stamped = target / f"..{stamp}"
    for rel, content in payload.items():
        f = stamped / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    tmp = target / "..data_tmp"
    os.symlink(stamped.name, tmp)
    os.rename(tmp, target / "..data")
    for top in {rel.split("/", 1)[0] for rel in payload}:
        link = target / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    for entry in list(target.iterdir()):
        if entry.is_symlink() and entry.name != "..data" and not entry.exists():
            entry.unlink()
    if old is not None:
        shutil.rmtree(target / old)
