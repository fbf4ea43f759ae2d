"""Hot reload: edits take effect for new sessions; a broken edit keeps the old policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.errors import HandshakeRejected
from relay.policy import PolicyStore, PolicyWatcher

from .helpers import info, metric

GOOD = "version: 1\npolicies:\n  - id: models\n    use: models\n    with: {allow: [gpt-realtime]}\n"
NEWER = GOOD.replace("[gpt-realtime]", "[gpt-realtime, gpt-realtime-2]")
BROKEN = "version: 1\npolicies:\n  - id: models\n    use: models\n    with: {allow: []}\n"
TENANT = "keys:\n  - {id: k1, sha256: " + "a" * 64 + "}\n"


async def wait_for(cond: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_poll_reload_and_broken_edit(
    policy_dir: Callable[..., Path], metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = policy_dir(GOOD, {"acme": TENANT})
    seen: list[PolicyStore] = []
    watcher = PolicyWatcher(d, seen.append, metrics, interval=0.05, settle=0.02)
    first = watcher.store
    old_tenant = first.tenant("acme")
    session_chain = old_tenant.bind(info(), None)
    await watcher.start()
    try:
        (d / "default.yaml").write_text(NEWER)
        await wait_for(lambda: len(seen) == 1)
        assert watcher.store is seen[0] and watcher.store.version != first.version
        watcher.store.tenant("acme").check_handshake("gpt-realtime-2", "")  # new sessions: new policy
        with pytest.raises(HandshakeRejected):
            old_tenant.check_handshake("gpt-realtime-2", "")  # a live session keeps its version
        assert session_chain.version == first.version

        caplog.set_level(logging.ERROR, "relay.policy")
        good_store = watcher.store
        (d / "default.yaml").write_text(BROKEN)
        await wait_for(lambda: metric(metrics, "relay_policy_reloads_total", result="error") == 1)
        assert watcher.store is good_store and len(seen) == 1
        assert watcher.last_error is not None and watcher.last_error.line == 5
        assert "default.yaml:5" in caplog.text and "stays in force" in caplog.text
        await asyncio.sleep(0.2)  # not retried while the files stay the same
        assert metric(metrics, "relay_policy_reloads_total", result="error") == 1
    finally:
        await watcher.stop()
    assert metric(metrics, "relay_policy_reloads_total", result="ok") == 1


async def test_reload_on_demand(policy_dir: Callable[..., Path], metrics: Any) -> None:
    d = policy_dir(GOOD, {"acme": TENANT})
    seen: list[PolicyStore] = []
    watcher = PolicyWatcher(d, seen.append, metrics)
    assert watcher.reload() is True and seen == []  # same files: nothing to swap
    (d / "default.yaml").write_text(BROKEN)
    assert watcher.reload() is False
    (d / "tenants" / "beta.yaml").write_text(TENANT.replace("a" * 64, "b" * 64))
    (d / "default.yaml").write_text(GOOD)
    assert watcher.reload() is True
    assert seen[-1].tenants == ["acme", "beta"]
    assert metric(metrics, "relay_policy_reloads_total", result="ok") == 2
    assert metric(metrics, "relay_policy_reloads_total", result="error") == 1
