"""`relay policy check|explain`, the published schema, and the examples in docs/policies.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

from relay.policy import PolicyStore, cli
from relay.policy.schema import schema

ROOT = Path(__file__).resolve().parents[2]


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(ROOT / "policies")]) == 0
    assert "tenants: demo" in capsys.readouterr().out


def test_check_reports_each_error_with_file_line_and_key(
    policy_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d = policy_dir("policies:\n  - use: redact\n    with:\n      targets: [moon]\n      extra: 1\n")
    assert cli.main(["check", str(d)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(
        "default.yaml:4: policies[0].with.targets[0]: 'moon' is not one of 'upstream', 'client', 'recording'"
    )
    assert "default.yaml:5: policies[0].with.extra: unknown key 'extra'" in err[1]
    assert err[-1].startswith("2 problems")


def test_explain_prints_the_merged_policy_with_masked_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--tenant", "demo", "--dir", str(ROOT / "policies")]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["tenant"] == "demo"
    assert out["keys"][0]["sha256"].endswith("…") and len(out["keys"][0]["sha256"]) < 12
    assert [p["id"] for p in out["policies"]] == ["models", "pii-recording"]
    assert cli.main(["explain", "--tenant", "nobody", "--dir", str(ROOT / "policies")]) == 2


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay.policy.cli", "check", str(ROOT / "policies")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_schema_is_valid_and_the_published_copy_matches() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    shipped = (ROOT / "relay" / "policy" / "policy.schema.json").read_text()
    assert (ROOT / "policies" / "policy.schema.json").read_text() == shipped
    assert json.loads(shipped) == schema()


def test_shipped_files_carry_the_modeline() -> None:
    assert (
        (ROOT / "policies/default.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=policy.schema.json")
    )
    demo = (ROOT / "policies/tenants/demo.yaml").read_text()
    assert demo.startswith("# yaml-language-server: $schema=../policy.schema.json")


def doc_blocks(marker: str) -> list[str]:
    text = (ROOT / "docs" / "policies.md").read_text()
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith(marker)]


def test_every_doc_example_is_a_valid_policy_file(policy_dir: Callable[..., Path]) -> None:
    examples = doc_blocks("# example")
    assert len(examples) >= 6
    for i, example in enumerate(examples):
        d = policy_dir(example, root=policy_dir().parent / f"ex{i}")
        assert cli.main(["check", str(d)]) == 0, example


def test_the_doc_tenant_example_merges_with_the_doc_default(policy_dir: Callable[..., Path]) -> None:
    (default,) = [b for b in doc_blocks("# example") if "realistic default.yaml" in b]
    (tenant,) = doc_blocks("# tenants/acme.yaml")
    d = policy_dir(default, {"acme": tenant}, root=policy_dir().parent / "merge")
    eff = PolicyStore.load(d).tenant("acme").effective()
    assert [(p["id"], p["from"]) for p in eff["policies"]] == [
        ("models", "default"),
        ("lockdown", "default"),
        ("tools", "default"),
        ("pii-upstream", "default"),
        ("pii-recording", "tenant"),
        ("acme-tools", "tenant"),
    ]


def test_schema_files_are_in_step_with_the_section_fragments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "--copy", str(ROOT / "policies" / "policy.schema.json")]) == 0, (
        capsys.readouterr()
    )
    from relay.budget.spec import BUDGETS_SCHEMA
    from relay.recording.retention import RECORDING_SCHEMA

    assert schema()["properties"]["budgets"] == BUDGETS_SCHEMA
    assert schema()["properties"]["recording"] == RECORDING_SCHEMA
