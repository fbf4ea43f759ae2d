"""Starting the relay for functional tests: in-process (``running_relay``) or as a real process
(``RelayProcess``), always on 127.0.0.1, with a policies directory written for the test.

Every area's functional tests use these; keep the names stable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.config import RelayConfig, load_config
from relay.metrics import RelayMetrics
from relay.server import Relay
from relay.upstream import UpstreamTarget

ROOT = Path(__file__).resolve().parents[2]
TEST_KEY = "rr-test-key-acme-0123456789"
"""The client key of tenant ``acme`` in every policies directory written by ``write_policies``."""
OTHER_KEY = "rr-test-key-other-0123456789"
"""The client key of tenant ``other``."""


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_policies(
    directory: Path,
    *,
    default: str = "version: 1\n",
    tenants: Mapping[str, str] | None = None,
) -> Path:
    """Write ``default.yaml`` and ``tenants/<t>.yaml``; tenant bodies get their key lines added.

    ``tenants`` maps tenant name to extra YAML (policies, budgets, recording) for that file; the
    tenants ``acme`` (TEST_KEY) and ``other`` (OTHER_KEY) always exist.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tenants").mkdir(exist_ok=True)
    (directory / "default.yaml").write_text(textwrap.dedent(default))
    bodies = {"acme": "", "other": "", **(tenants or {})}
    keys = {"acme": TEST_KEY, "other": OTHER_KEY}
    for name, extra in bodies.items():
        key = keys.get(name, f"rr-test-key-{name}-0123456789")
        text = f"version: 1\nkeys:\n  - {{id: {name}-test, sha256: {sha256(key)}}}\n" + textwrap.dedent(extra)
        (directory / "tenants" / f"{name}.yaml").write_text(text)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A relay.yaml mapping for tests: loopback ports, local recording under ``tmp``, memory budgets."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "policies_dir": str(tmp / "policies"),
        "drain_seconds": 5,
        "log_level": "warning",
        "recording": {
            "sink": "local",
            "local_dir": str(tmp / "recordings"),
            "spool_dir": str(tmp / "spool"),
        },
        "budgets": {"store": "memory"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def config_from(mapping: Mapping[str, Any], tmp: Path) -> RelayConfig:
    path = tmp / f"relay-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(dict(mapping)))
    return load_config(path, {})


@dataclass
class RunningRelay:
    relay: Relay
    key: str = TEST_KEY
    policies_dir: Path = field(default_factory=Path)

    @property
    def port(self) -> int:
        return self.relay.public_port

    @property
    def ws_base(self) -> str:
        """What an openai-python client takes as ``websocket_base_url``."""
        scheme = "wss" if self.relay.cfg.tls_cert else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        return f"{self.ws_base}/realtime"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.relay.admin_port}"

    @property
    def metrics(self) -> RelayMetrics:
        return self.relay.metrics


@contextlib.asynccontextmanager
async def running_relay(
    tmp: Path,
    *,
    upstream: Any = None,
    policies: Mapping[str, str] | None = None,
    default_policy: str = "version: 1\n",
    write_policy_files: bool = True,
    **config: Any,
) -> AsyncIterator[RunningRelay]:
    """An in-process relay. ``upstream`` is a simulator (anything with ``.url`` and
    ``.config.api_key``), an ``UpstreamTarget``, or None for the embedded simulator."""
    if write_policy_files:
        write_policies(tmp / "policies", default=default_policy, tenants=policies)
    cfg = config_from(base_config(tmp, **config), tmp)
    target: UpstreamTarget | None
    if upstream is None or isinstance(upstream, UpstreamTarget):
        target = upstream
    else:
        target = UpstreamTarget(upstream.url, upstream.config.api_key, 5.0)
    relay = Relay(cfg, metrics=RelayMetrics(), upstream=target)
    await relay.start()
    try:
        yield RunningRelay(relay, TEST_KEY, tmp / "policies")
    finally:
        await relay.stop()


class ServedProcess:
    """A relay-like child process with a public port and an admin port: start it, wait for
    ``/readyz``, signal it, stop it by its own PID. Subclasses decide the command and environment."""

    def __init__(
        self, argv: list[str], env: Mapping[str, str], log_path: Path, port: int, admin_port: int
    ) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self.admin_port = admin_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> Any:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.logs()}")
            if self.http_status("/readyz") == 200:
                return self
            time.sleep(0.05)
        self.proc.kill()  # never leave a process behind that the test will not stop
        self.proc.wait(5)
        raise RuntimeError(f"not ready after {timeout}s:\n{self.logs()}")

    def http_status(self, path: str) -> int | None:
        """HTTP status of an admin endpoint (None: no answer), like a kubelet httpGet probe."""
        try:
            with urllib.request.urlopen(self.admin + path, timeout=1) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class RelayProcess(ServedProcess):
    """``relay serve --config F`` as a child process, for signal tests (SIGTERM drain, SIGKILL)."""

    def __init__(self, config: Mapping[str, Any], tmp: Path, env: Mapping[str, str] | None = None) -> None:
        port, admin_port = free_port(), free_port()
        cfg = dict(config)
        cfg["listen"] = f"127.0.0.1:{port}"
        cfg["admin_listen"] = f"127.0.0.1:{admin_port}"
        self.config_path = tmp / f"relay-{port}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        argv = [sys.executable, "-m", "relay", "serve", "--config", str(self.config_path)]
        super().__init__(argv, {**os.environ, **(env or {})}, tmp / f"relay-{port}.log", port, admin_port)

    def start(self, timeout: float = 20.0) -> RelayProcess:
        super().start(timeout)
        return self
