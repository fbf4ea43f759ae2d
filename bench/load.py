"""Load generator: N concurrent voice sessions, direct to the upstream and through the relay.

    python -m bench.load --sessions 100 --seconds 20
    python -m bench.load --sweep 100,200,300,400 --seconds 15 --policies realistic --recording on

Three kinds of process, all on loopback: the bench upstream (``bench.peer.BenchUpstream``), the
relay (``relay serve``, pinned to CPU 0 when ``taskset`` exists), and the clients (pinned with the
upstream to CPU 1). For each N it runs the clients directly against the upstream, then through
the relay, in the same run, and reports per direction the one-way latency p50/p99 of both and
their difference (what the relay adds), the relay's CPU (fraction of one core) and its RSS per
session. Results print as JSON lines and as a Markdown table for docs/benchmarks.md.

Each phase also reports the load generator's own CPU (``clients_cpu_core_fraction`` and
``upstream_cpu_core_fraction``, both on CPU 1): when their sum nears 1.0 the generator, not the
relay, is what the latencies measure. ``failed`` counts connect/handshake/protocol failures and
``skipped`` the frames a peer did not send because the other side stopped reading.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from bench.peer import BenchClients, BenchUpstream, Latencies

BENCH_KEY = "rr-bench-key-0123456789"
ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK")


def percentiles(samples: list[int] | Any) -> dict[str, float]:
    data = sorted(samples)
    if not data:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}

    def pick(q: float) -> float:
        return float(data[min(len(data) - 1, int(q * len(data)))]) / 1000.0

    return {"count": len(data), "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


# -- child process roles -------------------------------------------------------------------------


async def upstream_main(port_file: Path) -> None:
    up = BenchUpstream()
    await up.start()
    stats_app = web.Application()

    async def window(request: web.Request) -> web.Response:
        action = request.query.get("action")
        if action == "start":
            up.received.samples = type(up.received.samples)("q")
            up.received.recording = True
            up.errors.clear()
            up.skipped = 0
            return web.json_response({})
        up.received.recording = False
        errors = up.errors
        return web.json_response(
            {
                **percentiles(up.received.samples),
                "errors": errors[:5],
                "failed": len(errors),
                "skipped": up.skipped,
            }
        )

    stats_app.router.add_get("/window", window)
    runner = web.AppRunner(stats_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stats_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    port_file.write_text(json.dumps({"ws": up.port, "stats": stats_port}))
    await asyncio.Event().wait()


async def clients_main(url: str, key: str, sessions: int, seconds: float, warmup: float, out: Path) -> None:
    latencies = Latencies()
    clients = BenchClients(url, key, latencies)
    start_at = time.monotonic() + 1.0 + sessions * 0.004
    runner = asyncio.create_task(clients.run(sessions, seconds + warmup, start_at))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()) + warmup)
    latencies.recording = True
    await runner
    latencies.recording = False
    errors = clients.errors
    out.write_text(
        json.dumps(
            {
                **percentiles(latencies.samples),
                "errors": errors[:5],
                "failed": len(errors),
                "skipped": clients.skipped,
            }
        )
    )


# -- orchestration -------------------------------------------------------------------------------


RELAY_CPUS = "0"
"""The CPUs of the relaying process (``--relay-cpus``); the clients and the upstream take CPU 1."""


def pinned(cmd: list[str], cpus: int | str) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpus), *cmd]
    return cmd


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def relay_config(
    tmp: Path, upstream_port: int, port: int, admin_port: int, recording: bool, policies: str
) -> Path:
    pol = tmp / "policies"
    (pol / "tenants").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "bench" / "policies" / f"{policies}.yaml", pol / "default.yaml")
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    (pol / "tenants" / "bench.yaml").write_text(f"version: 1\nkeys:\n  - {{id: bench, sha256: {digest}}}\n")
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "upstream": {"url": f"ws://127.0.0.1:{upstream_port}/v1/realtime", "api_key": "bench-upstream-key"},
        "policies_dir": str(pol),
        "log_level": "warning",
        "recording": {
            "enabled": recording,
            "sink": "local",
            "local_dir": str(tmp / "recordings"),
            "spool_dir": str(tmp / "spool"),
            "queue_size": 8192,
        },
        "budgets": {"store": "memory"},
    }
    path = tmp / "relay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def run_phase(
    tmp: Path,
    url: str,
    key: str,
    sessions: int,
    seconds: float,
    warmup: float,
    stats_url: str,
    upstream_pid: int | None = None,
) -> dict[str, Any]:
    """One phase of the clients; ``upstream_pid`` adds the upstream's CPU over the same window."""
    out = tmp / f"clients-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "bench.load", "clients", "--url", url, "--key", key, "--sessions", str(sessions),
           "--seconds", str(seconds), "--warmup", str(warmup), "--out", str(out)]  # fmt: skip
    clients = subprocess.Popen(pinned(cmd, 1), cwd=ROOT)
    time.sleep(1.0 + sessions * 0.004 + warmup)
    http_json(stats_url + "/window?action=start")
    u0 = proc_cpu_seconds(upstream_pid) if upstream_pid else 0.0
    c0, t0 = proc_cpu_seconds(clients.pid), time.monotonic()
    time.sleep(seconds * 0.8)
    c1, t1 = proc_cpu_seconds(clients.pid), time.monotonic()
    u1 = proc_cpu_seconds(upstream_pid) if upstream_pid else 0.0
    clients.wait(timeout=seconds + warmup + 120)
    up = http_json(stats_url + "/window?action=stop")
    down = json.loads(out.read_text())
    phase = {"c2u": up, "u2c": down, "clients_cpu_core_fraction": round((c1 - c0) / (t1 - t0), 3)}
    if upstream_pid:
        phase["upstream_cpu_core_fraction"] = round((u1 - u0) / (t1 - t0), 3)
    return phase


def measure_process(
    tmp: Path,
    cmd: list[str],
    ready_url: str,
    url: str,
    key: str,
    sessions: int,
    seconds: float,
    warmup: float,
    stats: str,
    upstream_pid: int | None = None,
) -> dict[str, Any]:
    """Start a relaying process on ``RELAY_CPUS``, run the clients through it, measure its cost."""
    log = (tmp / f"proc-{time.monotonic_ns()}.log").open("wb")
    proc = subprocess.Popen(pinned(cmd, RELAY_CPUS), cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_ready(ready_url, proc)
        rss_idle = proc_rss_kb(proc.pid)
        cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        phase = run_phase(tmp, url, key, sessions, seconds, warmup, stats, upstream_pid)
        cpu1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
        rss_peak = proc_rss_kb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    phase["cpu_core_fraction"] = round((cpu1 - cpu0) / (t1 - t0), 3)
    phase["rss_idle_mb"] = round(rss_idle / 1024, 1)
    phase["rss_per_session_kb"] = round((rss_peak - rss_idle) / max(1, sessions), 1)
    return phase


def bench(
    sessions: int, seconds: float, warmup: float, recording: bool, policies: str, baseline: bool = False
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port_file = tmp / "upstream.json"
        procs.append(
            subprocess.Popen(
                pinned([sys.executable, "-m", "bench.load", "upstream", "--port-file", str(port_file)], 1),
                cwd=ROOT,
            )
        )
        while not port_file.exists():
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
        stats = f"http://127.0.0.1:{ports['stats']}"
        direct = run_phase(
            tmp,
            f"ws://127.0.0.1:{ports['ws']}/v1/realtime?model=gpt-realtime",
            "direct",
            sessions,
            seconds,
            warmup,
            stats,
            procs[0].pid,
        )

        port, admin = free_port(), free_port()
        config = relay_config(tmp, ports["ws"], port, admin, recording, policies)
        relayed = measure_process(
            tmp,
            [sys.executable, "-m", "relay", "serve", "--config", str(config)],
            f"http://127.0.0.1:{admin}/readyz",
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            BENCH_KEY,
            sessions,
            seconds,
            warmup,
            stats,
            procs[0].pid,
        )
        result: dict[str, Any] = {
            "sessions": sessions,
            "seconds": seconds,
            "recording": recording,
            "policies": policies,
            "direct": direct,
            "relay": relayed,
            "relay_cpu_core_fraction": relayed["cpu_core_fraction"],
            "relay_rss_idle_mb": relayed["rss_idle_mb"],
            "relay_rss_per_session_kb": relayed["rss_per_session_kb"],
        }
        if baseline:
            fport = free_port()
            forwarded = measure_process(
                tmp,
                [
                    sys.executable,
                    "-m",
                    "bench.forwarder",
                    "--listen",
                    f"127.0.0.1:{fport}",
                    "--upstream",
                    f"ws://127.0.0.1:{ports['ws']}/v1/realtime",
                ],  # fmt: skip
                f"http://127.0.0.1:{fport}/readyz",
                f"ws://127.0.0.1:{fport}/v1/realtime?model=gpt-realtime",
                "none",
                sessions,
                seconds,
                warmup,
                stats,
                procs[0].pid,
            )
            result["forwarder"] = forwarded
            for d in ("c2u", "u2c"):
                result[f"forwarder_added_{d}_p99_ms"] = round(forwarded[d]["p99_ms"] - direct[d]["p99_ms"], 3)
        for d in ("c2u", "u2c"):
            result[f"added_{d}_p50_ms"] = round(relayed[d]["p50_ms"] - direct[d]["p50_ms"], 3)
            result[f"added_{d}_p99_ms"] = round(relayed[d]["p99_ms"] - direct[d]["p99_ms"], 3)
        return result
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| sessions | recording | policies | added p50 c2u / u2c (ms) | added p99 c2u / u2c (ms) | relay CPU (core) "
        "| RSS/session (KB) | forwarder added p99 c2u / u2c (ms) | forwarder CPU (core) | direct p99 c2u / u2c (ms) | failed |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        d, x, f = r["direct"], r["relay"], r.get("forwarder")
        fwd = (
            f"{r['forwarder_added_c2u_p99_ms']:.2f} / {r['forwarder_added_u2c_p99_ms']:.2f} | {f['cpu_core_fraction']:.2f}"
            if f
            else "– | –"
        )
        lines.append(
            f"| {r['sessions']} | {'on' if r['recording'] else 'off'} | {r['policies']} | "
            f"{r['added_c2u_p50_ms']:.2f} / {r['added_u2c_p50_ms']:.2f} | {r['added_c2u_p99_ms']:.2f} / {r['added_u2c_p99_ms']:.2f} | "
            f"{r['relay_cpu_core_fraction']:.2f} | {r['relay_rss_per_session_kb']:.0f} | {fwd} | "
            f"{d['c2u']['p99_ms']:.2f} / {d['u2c']['p99_ms']:.2f} | {x['u2c'].get('failed', 0)} |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    sub = parser.add_subparsers(dest="role")
    up = sub.add_parser("upstream")
    up.add_argument("--port-file", type=Path, required=True)
    cl = sub.add_parser("clients")
    cl.add_argument("--url", required=True)
    cl.add_argument("--key", required=True)
    cl.add_argument("--sessions", type=int, required=True)
    cl.add_argument("--seconds", type=float, required=True)
    cl.add_argument("--warmup", type=float, default=2.0)
    cl.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--sweep", help="comma-separated session counts, e.g. 100,200,400")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--recording", choices=["on", "off"], default="off")
    parser.add_argument("--policies", choices=["none", "realistic"], default="none")
    parser.add_argument(
        "--relay-cpus",
        default="0",
        help="CPUs of the relay (taskset list). Default 0: one core, as the forwarder gets. With "
        "'0,1' the relay's worker threads (syncfs, part building) may use the load generator's core.",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also run a plain aiohttp forwarder (bench.forwarder)"
    )
    parser.add_argument(
        "--recording-pairs",
        type=int,
        default=0,
        metavar="R",
        help="at each count, R pairs of runs (recording off, then on) and the CPU-bound capacity "
        "ratio they imply (see recording_ratio)",
    )
    args = parser.parse_args(argv)
    if args.role == "upstream":
        asyncio.run(upstream_main(args.port_file))
        return 0
    if args.role == "clients":
        asyncio.run(clients_main(args.url, args.key, args.sessions, args.seconds, args.warmup, args.out))
        return 0
    counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.sessions]
    global RELAY_CPUS
    RELAY_CPUS = args.relay_cpus
    rows = []
    for n in counts:
        if args.recording_pairs:
            pairs = []
            for _ in range(args.recording_pairs):
                off = bench(n, args.seconds, args.warmup, False, args.policies)
                on = bench(n, args.seconds, args.warmup, True, args.policies)
                print(json.dumps(off), flush=True)
                print(json.dumps(on), flush=True)
                rows += [off, on]
                pairs.append((off["relay_cpu_core_fraction"], on["relay_cpu_core_fraction"]))
            print(json.dumps(recording_ratio(n, pairs)), flush=True)
            continue
        row = bench(n, args.seconds, args.warmup, args.recording == "on", args.policies, args.baseline)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    return 0


SATURATED = 0.85
"""Relay CPU (fraction of a core) from which a run is taken as saturated: the event loop falls
behind (the backlog grows, RSS per session with it), so its CPU understates what the load costs."""


def recording_ratio(sessions: int, pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """What recording costs at ``sessions`` and the capacity ratio it implies for a CPU-bound relay.

    Each pair is the relay's CPU (fraction of a core) with recording off, then on, in back-to-back
    runs. A relay held to one core serves sessions in inverse proportion to its CPU per session, so
    ``off / on`` is the share of its recording-off capacity it keeps with recording on. Unlike the
    latency threshold, this does not move with the machine's other load from run to run; it
    assumes the relay, not the load generator, is what runs out. A pair with a run at or over
    ``SATURATED`` is left out (a saturated run's CPU is capped, which would flatter the ratio)
    and counted in ``saturated_pairs``: run fewer sessions.
    """
    usable = [(off, on) for off, on in pairs if 0 < on < SATURATED and off < SATURATED]
    ratios = sorted(off / on for off, on in usable)
    return {
        "sessions": sessions,
        "pairs": [{"off": off, "on": on} for off, on in pairs],
        "saturated_pairs": sum(1 for off, on in pairs if on >= SATURATED or off >= SATURATED),
        "recording_core_per_100_sessions": round(
            100 * statistics.median(on - off for off, on in usable) / sessions, 4
        )
        if usable
        else None,
        "cpu_bound_capacity_ratio_median": round(statistics.median(ratios), 3) if ratios else None,
        "cpu_bound_capacity_ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)] if ratios else None,
    }


if __name__ == "__main__":
    raise SystemExit(main())
