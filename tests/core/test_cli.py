"""The ``relay`` command's own subcommands: keys and serve's configuration errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main
from relay.policy.store import PolicyStore
from tests.support.relay import write_policies


def test_keys_new_prints_a_key_once_and_a_line_that_authenticates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "acme", "--id", "acme-ci"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^\s+(rr-\S+)$", out, re.M)
    line = re.search(r"^\s+- \{id: acme-ci, sha256: ([0-9a-f]{64})\}$", out, re.M)
    assert key and line
    assert hashlib.sha256(key.group(1).encode()).hexdigest() == line.group(1)
    # the pasted line makes the key work, and the file never holds the key itself
    policies = write_policies(tmp_path / "policies")
    tenant_file = policies / "tenants" / "acme.yaml"
    tenant_file.write_text(tenant_file.read_text() + line.group(0).replace("  - ", "  - ", 1) + "\n")
    assert key.group(1) not in tenant_file.read_text()
    assert PolicyStore.load(policies).authenticate(key.group(1)) == ("acme", "acme-ci")


def test_keys_new_refuses_a_bad_tenant_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "../etc"]) == 2
    assert "invalid tenant name" in capsys.readouterr().err


def test_serve_stops_with_a_message_naming_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nupstream: {api_kee: x}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "upstream.'api_kee'" in proc.stderr


def test_serve_stops_on_a_bad_policy_file_naming_file_and_line(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", default="version: 1\npolicies:\n  - use: nosuchpolicy\n")
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\npolicies_dir: {policies}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "default.yaml:3" in proc.stderr and "use" in proc.stderr
