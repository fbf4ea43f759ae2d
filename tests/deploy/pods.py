"""Run the relay as the Helm chart runs it, minus Kubernetes: a process per "pod".

``ChartPod`` takes the chart's rendered Deployment and ConfigMaps and starts the container's own
command and args (the ``relay`` console script), with the rendered relay.yaml and the environment
the kubelet would build (``secretKeyRef`` resolved from a dict standing in for the Secrets). The
policies ConfigMap is written the way the kubelet writes a ConfigMap volume. The only changes from
a pod are the ones a test on a shared machine needs: listeners on 127.0.0.1 with free ports, and
the mount paths moved under a temporary directory; both go in as RELAY_* environment variables,
which win over the file exactly as they do in the pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.deploy.chart_support import (
    deployment_container,
    find,
    materialize_configmap_volume,
    rendered_relay_yaml,
)
from tests.support.relay import ServedProcess, free_port

BIN = Path(sys.executable).parent


def pod_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it; a missing Secret key fails like
    CreateContainerConfigError would."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"secret {ref['name']}/{ref['key']} missing for {entry['name']}"
            continue
        env[entry["name"]] = value
    return env


class ChartPod(ServedProcess):
    def __init__(
        self, objs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], workdir: Path, name: str
    ) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        container = deployment_container(objs)
        pod = find(objs, "Deployment")["spec"]["template"]["spec"]
        self.grace = float(pod["terminationGracePeriodSeconds"])
        self.prestop = container["lifecycle"]["preStop"]["exec"]["command"]

        config = self.dir / "relay.yaml"
        config.write_text(rendered_relay_yaml(objs))
        args = list(container["args"])
        args[args.index("/etc/relay/relay.yaml")] = str(config)
        (command,) = container["command"]

        (volume,) = [v for v in pod["volumes"] if v["name"] == "policies"]
        policies = find(objs, "ConfigMap", volume["configMap"]["name"])
        materialize_configmap_volume(
            self.dir / "policies", policies, volume["configMap"]["items"], "2025_01_01.0"
        )

        port, admin_port = free_port(), free_port()
        env = {
            **os.environ,
            **pod_env(container, secrets),
            "RELAY_LISTEN": f"127.0.0.1:{port}",
            "RELAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
            "RELAY_POLICIES_DIR": str(self.dir / "policies"),
            "RELAY_RECORDING_SPOOL_DIR": str(self.dir / "spool"),
            "RELAY_RECORDING_LOCAL_DIR": str(self.dir / "recordings"),
        }
        super().__init__([str(BIN / command), *args], env, self.dir / "relay.log", port, admin_port)

    def start(self, timeout: float = 20.0) -> ChartPod:
        """Start and wait for the readiness probe, as the Service would before routing to it."""
        super().start(timeout)
        return self

    def probe(self, path: str) -> int | None:
        """HTTP status of an admin endpoint, like the kubelet's httpGet probe (None: no answer)."""
        return self.http_status(path)

    def terminate(self) -> None:
        """What the kubelet does after the preStop hook: SIGTERM to the container's process."""
        self.signal(signal.SIGTERM)

    def exit_code(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def kill(self) -> None:
        """Teardown only: SIGKILL by PID if the process is still there (the grace period ran out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class SimProcess:
    """``relay sim`` as its own process: the stand-in for api.openai.com."""

    def __init__(self, workdir: Path, api_key: str) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.log_path = workdir / "sim.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def start(self, timeout: float = 20.0) -> SimProcess:
        argv = [
            str(BIN / "relay"), "sim", "--listen", f"127.0.0.1:{self.port}", "--api-key", self.api_key,
            "--voice-source", "tone", "--reply", "Fine.",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay sim exited:\n{self.log_path.read_text()}")
            if "listening on" in self.log_path.read_text():
                return self
            time.sleep(0.05)
        raise AssertionError(f"relay sim not up after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
