"""Loading, validation errors (file, line, key path), the merge rule, sections and keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.contracts import SessionInfo
from relay.errors import HandshakeRejected, PolicyConfigError
from relay.events import Dialect
from relay.policy import PolicyLoadErrors, PolicyStore, hash_key
from relay.policy import store as store_mod

KEY = "rr-test-key-1"
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()

DEFAULT = """\
version: 1
policies:
  - id: models
    use: models
    with: {allow: ["gpt-realtime*"]}
  - id: pii
    use: redact
    with: {targets: [recording]}
  - id: deny
    use: events
    with: {deny: {client_to_upstream: [conversation.item.retrieve]}}
"""

TENANT = f"""\
keys:
  - {{id: k1, sha256: {KEY_HASH}}}
policies:
  - id: pii
    use: redact
    with: {{targets: [upstream]}}
  - id: deny
    enabled: false
  - id: lock
    use: lockdown
    with: {{hide_instructions: true}}
"""


def problems(directory: Path) -> list[tuple[str, int | None, str, str]]:
    with pytest.raises(PolicyConfigError) as info:
        PolicyStore.load(directory)
    err = info.value
    errs = err.errors if isinstance(err, PolicyLoadErrors) else [err]
    return [(Path(e.file).name, e.line, e.key, e.message) for e in errs]


def test_load_authenticate_and_merge(policy_dir: Callable[..., Path]) -> None:
    store = PolicyStore.load(policy_dir(DEFAULT, {"acme": TENANT}))
    assert store.tenants == ["acme"]
    assert store.authenticate(KEY) == ("acme", "k1")
    assert store.authenticate("wrong") is None
    assert store.authenticate("") is None
    tenant = store.tenant("acme")
    # Replaced in place, removed, appended: models, pii (tenant's), lock.
    assert [p.policy_id for p in tenant.policies] == ["models", "pii", "lock"]
    assert tenant.policies[1].targets == frozenset({"upstream"})  # type: ignore[attr-defined]
    assert tenant.version == store.version and len(store.version) >= 12
    with pytest.raises(HandshakeRejected):
        tenant.check_handshake("gpt-5", "")
    eff = tenant.effective()
    assert eff["keys"] == [{"id": "k1", "sha256": KEY_HASH[:8] + "…"}]
    assert KEY_HASH not in repr(eff)
    assert [(p["id"], p["from"]) for p in eff["policies"]] == [
        ("models", "default"),
        ("pii", "tenant"),
        ("lock", "tenant"),
    ]


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key(KEY) == KEY_HASH


def test_bind_sets_the_policy_version(policy_dir: Callable[..., Path]) -> None:
    store = PolicyStore.load(policy_dir(DEFAULT, {"acme": TENANT}))
    info = SessionInfo("s", "acme", "k1", "gpt-realtime", Dialect.GA)
    chain = store.tenant("acme").bind(info, None)
    assert info.policy_version == store.version == chain.version


def test_version_follows_content(policy_dir: Callable[..., Path]) -> None:
    d = policy_dir(DEFAULT, {"acme": TENANT})
    v1 = PolicyStore.load(d).version
    assert PolicyStore.load(d).version == v1
    (d / "default.yaml").write_text(DEFAULT + "\n# a comment\n")
    assert PolicyStore.load(d).version != v1


@pytest.mark.parametrize(
    ("default", "tenant", "expected"),
    [
        (
            "version: 1\npolicies:\n  - use: redact\n    with:\n      detectors: [email, phon]\n",
            None,
            ("default.yaml", 5, "policies[0].with.detectors[1]", "'phon' is not one of"),
        ),
        (
            "version: 1\npolicies:\n  - use: tools\n    with:\n      allow: [a]\n      bogus: 1\n",
            None,
            ("default.yaml", 6, "policies[0].with.bogus", "unknown key 'bogus'"),
        ),
        (
            "policies:\n  - use: redact\n    with:\n      custom:\n        - label: order\n          pattern: 'ORD-(['\n",
            None,
            ("default.yaml", 6, "policies[0].with.custom[0].pattern", "not a valid regular expression"),
        ),
        (
            "policies:\n  - use: models\n    with: {allow: [a]}\n  - use: models\n    with: {allow: [b]}\n",
            None,
            ("default.yaml", 4, "policies[1].id", "duplicate policy id 'models'"),
        ),
        ("version: 2\n", None, ("default.yaml", 1, "version", "must be 1")),
        ("policies: [\n", None, ("default.yaml", 2, "", "not valid YAML")),
        ("a: 1\na: 2\n", None, ("default.yaml", 2, "a", "duplicate key")),
        ("keys: []\n", None, ("default.yaml", 1, "keys", "keys belong in tenants")),
        (
            "version: 1\n",
            "keys:\n  - id: k\n    sha256: ABC\n",
            ("acme.yaml", 3, "keys[0].sha256", "does not match"),
        ),
        (
            "version: 1\n",
            "policies:\n  - id: nope\n    enabled: false\n",
            ("acme.yaml", 2, "policies[0]", "no policy 'nope' in default.yaml"),
        ),
        (
            "policies:\n  - use: tools\n    with:\n      allow:\n        - name: f\n          arguments: {type: 12}\n",
            None,
            ("default.yaml", 6, "policies[0].with.allow[0].arguments", "not a valid JSON Schema"),
        ),
    ],
)
def test_errors_name_file_line_and_key(
    policy_dir: Callable[..., Path], default: str, tenant: str | None, expected: tuple[str, int, str, str]
) -> None:
    d = policy_dir(default, {"acme": tenant} if tenant is not None else {})
    found = problems(d)
    file, line, key, message = found[0]
    assert (file, line, key) == expected[:3], found
    assert expected[3] in message


def test_every_problem_is_reported_at_once(policy_dir: Callable[..., Path]) -> None:
    d = policy_dir(
        "policies:\n  - use: nope\n  - use: redact\n    with: {targets: [moon]}\n",
        {"acme": "keys: [{id: k, sha256: x}]\n"},
    )
    assert len(problems(d)) == 3


def test_duplicate_keys_across_tenants(policy_dir: Callable[..., Path]) -> None:
    line = f"keys:\n  - {{id: k1, sha256: {KEY_HASH}}}\n"
    found = problems(policy_dir("version: 1\n", {"a": line, "b": line}))
    assert found[0][:3] == ("b.yaml", 2, "keys[0].sha256")


def test_file_names(policy_dir: Callable[..., Path]) -> None:
    d = policy_dir("version: 1\n", {"Bad Name": "version: 1\n"})
    assert "tenant name" in problems(d)[0][3]
    d2 = policy_dir("version: 1\n", root=d.parent / "p2")
    (d2 / "tenants" / "x.yml").write_text("version: 1\n")
    assert ".yaml" in problems(d2)[0][3]
    assert "not found" in problems(d.parent / "missing")[0][3]


# -- extra sections -----------------------------------------------------------------------------


def parse_budgets(node: Any, key_path: str) -> Any:
    """A stand-in section parser with the contract of relay.budget.spec.parse_budgets."""
    for name, value in node.items():
        if isinstance(value, int) and value > 100:
            raise ValueError(f"{key_path}.{name}: at most 100 in this test")
    return {"parsed": dict(node)}


def test_sections_merge_one_level_and_are_parsed(
    policy_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        store_mod,
        "SECTIONS",
        {"budgets": f"{__name__}:parse_budgets", "recording": "relay.policy_test_missing.module:parse"},
    )
    d = policy_dir(
        "budgets:\n  concurrent_sessions: 10\n  max_session_seconds: 60\n"
        "recording:\n  enabled: true\n  storage_class: STANDARD\n",
        {"acme": "budgets:\n  concurrent_sessions: 5\nrecording:\n  enabled: false\n"},
    )
    tenant = PolicyStore.load(d).tenant("acme")
    assert tenant.section("budgets") == {"parsed": {"concurrent_sessions": 5, "max_session_seconds": 60}}
    # A parser module that does not exist (yet) leaves the raw merged mapping.
    assert tenant.section("recording") == {"enabled": False, "storage_class": "STANDARD"}
    assert tenant.section("nothing") is None


def test_a_non_mapping_section_replaces_the_default(
    policy_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "SECTIONS", {"recording": "relay.policy_test_missing.module:parse"})
    d = policy_dir("recording:\n  enabled: true\n", {"acme": "recording: false\n"})
    assert PolicyStore.load(d).tenant("acme").section("recording") is False


def test_section_errors_point_at_the_file_that_set_the_key(
    policy_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "SECTIONS", {"budgets": f"{__name__}:parse_budgets"})
    d = policy_dir(
        "budgets:\n  concurrent_sessions: 10\n",
        {"acme": "version: 1\nbudgets:\n  max_session_seconds: 1000\n"},
    )
    assert problems(d)[0][:3] == ("acme.yaml", 3, "budgets.max_session_seconds")
    d2 = policy_dir("budgets:\n  concurrent_sessions: 1000\n", root=d.parent / "p2")
    assert problems(d2)[0][:3] == ("default.yaml", 2, "budgets.concurrent_sessions")


def test_shipped_policies_load() -> None:
    root = Path(__file__).resolve().parents[2]
    store = PolicyStore.load(root / "policies")
    assert "demo" in store.tenants
    assert store.authenticate("rr-demo-key-not-for-production") == ("demo", "demo-dev")


def test_real_section_parsers_are_called(policy_dir: Callable[..., Path]) -> None:
    """The shipped SECTIONS table reaches the budget and recording parsers."""
    from relay.budget.spec import BudgetSpec
    from relay.recording.retention import RecordingPolicy

    d = policy_dir(
        "version: 1\nrecording: {enabled: true}\nbudgets: {concurrent_sessions: 3}\n",
        {"acme": "version: 1\nrecording: false\n"},
    )
    tenant = PolicyStore.load(d).tenant("acme")
    assert isinstance(tenant.section("recording"), RecordingPolicy)
    assert tenant.section("recording").enabled is False
    assert isinstance(tenant.section("budgets"), BudgetSpec)
