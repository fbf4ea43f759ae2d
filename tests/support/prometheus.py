"""A real Prometheus (the Debian ``prometheus`` package) and ``promtool`` for tests.

Rules of this module:
- Prometheus listens on 127.0.0.1 only, keeps its TSDB in a directory the caller owns, and is
  stopped by its own PID (SIGTERM, then SIGKILL after a grace period). Nothing else is killed.
- Targets come through a file_sd file, so they can be set after start (``set_targets``); the
  discovery manager forwards changes about every 5 s, which is why the first scrape shows up
  about 6 s after start. Start one Prometheus per test module, not per test.
- Queries are async (aiohttp): a relay under test often runs in the test's own event loop, and a
  blocking HTTP call would stop it from answering the scrapes the test waits for.
- A missing binary is a failure naming the Debian package, never a skip.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

DEBIAN_PACKAGE = "prometheus"


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fails with the package to install."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: install the Debian package {DEBIAN_PACKAGE!r} "
            f"(apt-get install -y --no-install-recommends {DEBIAN_PACKAGE}) or run `make sysdeps`"
        )
    return path


def promtool(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run promtool; returns the completed process (check ``returncode`` yourself)."""
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusError(AssertionError):
    pass


class PrometheusServer:
    """One Prometheus process scraping the given targets every ``scrape_interval``."""

    def __init__(
        self,
        workdir: Path,
        *,
        targets: Sequence[str] = (),
        rule_files: Iterable[Path] = (),
        scrape_interval: str = "1s",
        job: str = "relay",
    ) -> None:
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.job = job
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = []
        for i, path in enumerate(self.rule_files):
            dest = self.workdir / f"rules_{i}_{path.name}"
            shutil.copyfile(path, dest)
            rules.append(dest.name)
        self.set_targets(self.targets)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": rules,
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "file_sd_configs": [{"files": ["targets.json"], "refresh_interval": "1s"}],
                }
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        check = promtool("check", "config", str(self.workdir / "prometheus.yml"))
        if check.returncode != 0:
            raise PrometheusError(f"promtool check config failed:\n{check.stdout}{check.stderr}")
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port()
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            try:
                self._wait_ready(timeout)
                return self
            except PrometheusError as exc:
                last_error = str(exc)
                self.stop()
        raise PrometheusError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise PrometheusError(f"prometheus not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def set_targets(self, targets: Sequence[str]) -> None:
        """Replace the scrape targets (``host:port`` strings); picked up within about 5 s."""
        self.targets = list(targets)
        tmp = self.workdir / "targets.json.tmp"
        tmp.write_text(json.dumps([{"targets": self.targets, "labels": {}}] if self.targets else []))
        tmp.replace(self.workdir / "targets.json")

    # -- HTTP API ------------------------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
                body = await resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = await self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in await self.query(expr)]

    async def value(self, expr: str) -> float:
        """The single value of ``expr``; fails if it returns no sample or several."""
        vals = await self.values(expr)
        if len(vals) != 1:
            raise PrometheusError(f"{expr}: expected one sample, got {len(vals)}")
        return vals[0]

    async def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[float]], bool] = bool,
        within: float = 20.0,
        interval: float = 0.25,
    ) -> list[float]:
        """Poll ``expr`` until ``predicate(values)`` holds (at most ``within`` s); returns the values."""
        import asyncio

        deadline = time.monotonic() + within
        vals: list[float] = []
        while True:
            vals = await self.values(expr)
            if predicate(vals):
                return vals
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"{expr}: condition not met within {within} s (last values {vals});"
                    f" targets: {await self.target_health()}"
                )
            await asyncio.sleep(interval)

    async def target_health(self) -> list[tuple[str, str, str]]:
        data = await self.api("targets")
        return [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in data["activeTargets"]]

    async def wait_scraped(self, within: float = 30.0) -> None:
        """Until every target has been scraped successfully at least once."""
        want = len(self.targets)
        await self.wait_for(f'up{{job="{self.job}"}} == 1', lambda v: len(v) >= want, within=within)

    async def rules(self) -> list[dict[str, Any]]:
        data = await self.api("rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups


def is_number(v: float) -> bool:
    return not math.isnan(v) and not math.isinf(v)
