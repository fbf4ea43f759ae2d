"""The Dockerfile, checked statically (no Docker engine runs here).

Parses the Dockerfile into stages and instructions and checks what matters for the image: a
builder stage and a slim runtime stage without build tools, a numeric non-root user, the health
check on the admin listener, the baked relay.yaml loading with the relay's own loader and
agreeing with EXPOSE / VOLUME / HEALTHCHECK, and a build context (.dockerignore) that carries
what the COPY lines need and nothing secret (the demo tenant, .venv). The builder's wheel step
is run for real with pip.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.config import load_config, split_hostport
from tests.deploy.chart_support import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cc ", "clang", "python3-dev", "libc6-dev", "git")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]

    def one(self, op: str) -> str:
        found = self.all(op)
        assert len(found) == 1, f"stage {self.name}: expected one {op}, found {len(found)}"
        return found[0]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with line continuations joined and comments dropped."""
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    assert not buf, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def test_multi_stage_on_slim_python(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert final.base == "python:3.11-slim"
    assert all(s.base == final.base for s in stages), "builder and runtime must share the Python build"
    copies_from_builder = [c for c in final.all("COPY") if c.startswith("--from=builder")]
    assert copies_from_builder == ["--from=builder /opt/relay /opt/relay"]


def test_final_stage_installs_nothing_and_has_no_build_tools(final: Stage) -> None:
    for run in final.all("RUN"):
        for word in ("apt-get", "apk ", "pip ", "pip3 ", "curl ", "wget "):
            assert word not in run, f"runtime stage runs {word.strip()}: {run}"
        for tool in BUILD_TOOLS:
            assert tool not in f"{run} ", f"runtime stage mentions {tool.strip()}: {run}"


def test_builder_drops_the_installer_from_the_venv(stages: list[Stage]) -> None:
    runs = " ".join(stages[0].all("RUN"))
    assert "--only-binary=:all:" in runs, (
        "dependencies must come as wheels: no compiler in the builder either"
    )
    assert "pip uninstall --yes pip setuptools" in runs


def test_runs_as_numeric_non_root_user(final: Stage) -> None:
    user = final.one("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == 10001, "numeric uid so Kubernetes runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) != 0
    # USER comes after every RUN: nothing later runs as root.
    ops = [op for op, _ in final.instructions]
    assert max(i for i, op in enumerate(ops) if op == "RUN") < ops.index("USER")
    from tests.deploy.chart_support import chart

    values = chart().values
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["securityContext"]["runAsGroup"] == int(gid)


def test_healthcheck_probes_the_admin_listener(final: Stage) -> None:
    hc = final.one("HEALTHCHECK")
    options, _, cmd = hc.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(cmd)
    assert argv[:2] == ["python", "-c"]
    url = re.search(r"'(http://[^']+)'", argv[2]).group(1)  # type: ignore[union-attr]
    assert url == f"http://127.0.0.1:{baked_admin_port()}/healthz"


def test_exposes_the_public_and_admin_ports(final: Stage) -> None:
    cfg = load_config(ROOT / "deploy/docker/relay.yaml", environ={})
    exposed = {int(p) for p in final.one("EXPOSE").split()}
    assert exposed == {
        split_hostport(cfg.listen, key="listen")[1],
        split_hostport(cfg.admin_listen, key="admin")[1],
    }


def test_entrypoint_serves_the_baked_config(final: Stage) -> None:
    assert exec_form(final.one("ENTRYPOINT")) == ["relay"]
    cmd = exec_form(final.one("CMD"))
    assert cmd[:2] == ["serve", "--config"]
    copies = {shlex.split(c)[-1]: shlex.split(c)[0] for c in final.all("COPY") if not c.startswith("--")}
    assert copies[cmd[2]] == "deploy/docker/relay.yaml"
    assert final.one("STOPSIGNAL") == "SIGTERM"


def baked_admin_port() -> int:
    cfg = load_config(ROOT / "deploy/docker/relay.yaml", environ={})
    return split_hostport(cfg.admin_listen, key="admin_listen")[1]


def test_baked_config_fits_the_read_only_image(final: Stage) -> None:
    cfg = load_config(ROOT / "deploy/docker/relay.yaml", environ={})
    assert cfg.simulated_upstream, "without OPENAI_API_KEY the image is a development relay"
    assert not load_config(
        ROOT / "deploy/docker/relay.yaml", environ={"OPENAI_API_KEY": "sk-x"}
    ).simulated_upstream
    assert split_hostport(cfg.listen, key="listen")[0] == "0.0.0.0"
    volumes = set(exec_form(final.one("VOLUME")))
    assert {cfg.recording.spool_dir, cfg.recording.local_dir} == volumes
    run = " ".join(final.all("RUN"))
    for d in (cfg.recording.spool_dir, cfg.recording.local_dir, cfg.policies_dir):
        assert d in run, f"{d} is not created in the image"
    assert "chown -R 10001:10001 /var/lib/relay" in run
    copies = [shlex.split(c) for c in final.all("COPY") if not c.startswith("--")]
    assert ["policies/default.yaml", f"{cfg.policies_dir}/default.yaml"] in copies


# --- build context -------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern matching a parent
    directory matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").rstrip("/"))))
    return rules


def test_context_has_every_copy_source(
    stages: list[Stage], ignore_rules: list[tuple[bool, re.Pattern[str]]]
) -> None:
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = shlex.split(copy)
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"COPY {src}: missing"
                files = [path] if path.is_file() else [f for f in path.rglob("*.py")]
                assert files
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    assert not excluded(rel, ignore_rules), f"COPY {src}: {rel} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        "policies/tenants/demo.yaml",
        ".venv/bin/python",
        "tests/deploy/test_dockerfile.py",
        ".git/config",
        "relay/__pycache__/config.cpython-311.pyc",
        "deploy/compose/relay.yaml",
        "helm/realtime-relay/values.yaml",
    ],
)
def test_context_leaves_out(path: str, ignore_rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    assert excluded(path, ignore_rules)


def test_builder_wheel_builds_from_the_builder_context(
    tmp_path: Path, stages: list[Stage], ignore_rules: list[tuple[bool, re.Pattern[str]]]
) -> None:
    """The builder's `pip wheel --no-deps .`, run for real on a copy of exactly what the builder
    stage COPYs (after .dockerignore): the package, its data files and the console script end up
    in the wheel."""
    src = tmp_path / "src"
    for copy in stages[0].all("COPY"):
        *sources, dest = shlex.split(copy)
        for source in sources:
            for f in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"):
                rel = f.relative_to(ROOT).as_posix()
                if f.is_file() and not excluded(rel, ignore_rules):
                    target = (
                        src / dest / (f.name if (ROOT / source).is_file() else f.relative_to(ROOT / source))
                    )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, target)
    out = tmp_path / "wheels"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = out.glob("realtime_relay-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "relay = relay.cli:main" in zf.read(entry_points).decode()
    for module in ("relay/cli.py", "relay/server.py", "relay/config.py", "relay/sim/cli.py"):
        assert module in names, module
    packaged_data = {n for n in names if n.startswith("relay/") and n.endswith((".yaml", ".json"))}
    on_disk = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "relay").rglob("*") if p.suffix in (".yaml", ".json")
    }
    assert on_disk <= packaged_data, f"data files missing from the wheel: {sorted(on_disk - packaged_data)}"
    assert not any(n.startswith(("tests/", "policies/")) for n in names)
