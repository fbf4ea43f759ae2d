"""Fixtures for the policy tests (helpers live in tests/policy/helpers.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from relay.metrics import RelayMetrics


@pytest.fixture
def metrics() -> RelayMetrics:
    return RelayMetrics(CollectorRegistry())


@pytest.fixture
def policy_dir(tmp_path: Path) -> Callable[..., Path]:
    """Write a policy directory: ``policy_dir(default="...", tenants={"acme": "..."})``."""

    def make(
        default: str | None = None, tenants: dict[str, str] | None = None, root: Path | None = None
    ) -> Path:
        d = root or tmp_path / "policies"
        (d / "tenants").mkdir(parents=True, exist_ok=True)
        if default is not None:
            (d / "default.yaml").write_text(textwrap.dedent(default))
        for name, text in (tenants or {}).items():
            (d / "tenants" / f"{name}.yaml").write_text(textwrap.dedent(text))
        return d

    return make
