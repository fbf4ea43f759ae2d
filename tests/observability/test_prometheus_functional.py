"""A real Prometheus scrapes a real relay while the official ``openai`` SDK runs sessions through it.

Once per module: the simulator (upstream), an in-process relay with two tenants, and Prometheus
(Debian package) scraping the relay's admin ``/metrics`` every second with the alert rules
loaded. The traffic covers what the dashboard shows: GA and beta turns, a push-to-talk audio
turn, a tool call, a malformed frame, a bad key (401), a refused upstream (502), a budget warning
and refusal (429), a policy reload, a redaction. Then:

- every dashboard query (macros substituted) returns data from that Prometheus, except for the
  few series listed in ``EXEMPT`` with the reason they can be legitimately absent here;
- the alert rules load and evaluate without error, and none fires on this healthy run;
- ``relay_first_audio_seconds`` and ``relay_tool_call_seconds`` agree with what the client
  measured itself (the relay's sample is bracketed by the client's timestamps);
- ``relay_forward_seconds`` p99 is bounded by the client-measured RTT difference (through the
  relay minus straight to the simulator), and its sum by the RTTs themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from relay.metrics import FORWARD_BUCKETS
from relay.sim import SimConfig, SimServer
from tests.observability import traffic
from tests.observability.artefacts import ALERTS, alert_rules, metrics_in, panel_queries
from tests.support.audio import speech_pcm16
from tests.support.prometheus import PrometheusServer, is_number, promtool
from tests.support.relay import OTHER_KEY, TEST_KEY, RunningRelay, running_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIM_KEY = "sim-upstream-key-observability"
ACME_POLICY = """
policies:
  - id: pii-upstream
    use: redact
    with: {detectors: [email], targets: [upstream]}
budgets:
  limits:
    - {name: usd-day, metric: usd, per: day, limit: 1000, warn_at: 0.8}
    - {name: audio-hour, metric: audio_seconds, per: hour, limit: 36000}
"""
# "other" may run one session at a time (a second one is refused: 429), and one answer crosses
# the warning threshold of its token budget (0.1 % of 100k tokens).
OTHER_POLICY = """
budgets:
  concurrent_sessions: 1
  reserve_output_tokens: 200
  limits:
    - {name: tokens-day, metric: tokens, per: day, limit: 100000, warn_at: 0.001}
"""
EXEMPT = {
    "relay_budget_store_errors_total": "the in-memory budget store cannot fail; its op label appears on a failure",
    "relay_policy_errors_total": "no built-in policy raises on valid traffic; the policy label appears on an error",
    "relay_recording_upload_failures_total": "the local sink does not fail here; the op label appears on a failure",
}
"""Metrics whose queries may be empty in a healthy short run, and why (a query is exempt when
every relay_ metric it names is listed here)."""

SLACK_S = 0.1
"""Per turn: how much shorter than the client's measurement the relay's sample may be (the
client's own send/receive legs and SDK parsing on a loaded 2-core machine)."""


@dataclass
class Stack:
    relay: RunningRelay
    sim: SimServer
    prom: PrometheusServer
    timings: traffic.ClientTimings
    sessions: int
    """Sessions that reached the relay's session loop (sessions_total must count them all)."""


async def _scraped_total(prom: PrometheusServer, expr: str, want: float) -> None:
    await prom.wait_for(expr, lambda v: len(v) == 1 and v[0] >= want, within=20)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    sim = await SimServer(SimConfig(api_key=SIM_KEY)).start()
    try:
        async with running_relay(
            tmp,
            upstream=sim,
            policies={"acme": ACME_POLICY, "other": OTHER_POLICY},
            recording={"enabled": True},  # local sink: the recording panels need a recorder
        ) as relay:
            prom = PrometheusServer(
                tmp / "prometheus",
                targets=[f"127.0.0.1:{relay.relay.admin_port}"],
                rule_files=[ALERTS],
            ).start()
            try:
                # The first scrape sees the pre-initialised zero series, so rate() sees all traffic.
                await prom.wait_scraped()
                timings, sessions = await _run_traffic(relay, sim, tmp)
                await _scraped_total(prom, "sum(relay_sessions_total)", sessions)
                await _scraped_total(prom, "sum(relay_policy_reloads_total)", 1)
                # Series born during the traffic need two samples before rate() returns anything.
                ended = time.time()
                await prom.wait_for("timestamp(relay_build_info)", lambda v: bool(v) and v[0] > ended + 1.5)
                yield Stack(relay, sim, prom, timings, sessions)
            finally:
                prom.stop()
    finally:
        await sim.stop()


async def _run_traffic(relay: RunningRelay, sim: SimServer, tmp: Path) -> tuple[traffic.ClientTimings, int]:
    base = relay.ws_base
    t = traffic.ClientTimings()
    await traffic.text_turns(base, TEST_KEY, t, turns=3)
    await traffic.text_turns(base, TEST_KEY, t, turns=2, beta=True)
    await traffic.audio_commit_turn(base, TEST_KEY, t, speech_pcm16("What time is it?"))
    await traffic.tool_turn(base, TEST_KEY, t)
    await traffic.tool_turn(base, TEST_KEY, t)
    await traffic.abnormal_close(base, TEST_KEY)  # outcome client_closed, close code 4000
    sessions = 5

    other = traffic.ClientTimings()
    await traffic.malformed_frame(base, OTHER_KEY, other)
    await traffic.text_turns(base, OTHER_KEY, other, turns=1)  # crosses the warning threshold
    await traffic.concurrent_refused(base, OTHER_KEY, other)  # the second one: 429
    sessions += 3
    # Refused before the upgrade: these never reach a session.
    await traffic.refused(base, "rr-not-a-key")  # 401
    sim.faults.refuse_handshake = 503
    try:
        await traffic.refused(base, TEST_KEY)  # the upstream refuses: 5xx, an upstream error
    finally:
        sim.faults.reset()

    # A policy reload (the watcher polls the directory every second).
    tenant_file = relay.policies_dir / "tenants" / "other.yaml"
    tenant_file.write_text(tenant_file.read_text() + "\n# touched by the observability test\n")
    return t, sessions


# -- the exposition ------------------------------------------------------------------------------


async def test_live_exposition_passes_promtool_check_metrics(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.relay.admin}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        async with http.get(f"http://127.0.0.1:{stack.relay.port}/metrics") as resp:
            assert resp.status == 404, "metrics must not be served on the public port"
    assert 'relay_first_audio_seconds_count{tenant="acme"}' in text
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


# -- dashboard -------------------------------------------------------------------------------------


def _exempt(expr: str) -> bool:
    names = metrics_in(expr)
    return bool(names) and names <= set(EXEMPT)


async def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    empty = []
    checked = 0
    for q in panel_queries():
        if _exempt(q.expr):
            continue
        checked += 1
        result = await stack.prom.query(q.promql())
        if not result:
            empty.append(f"{q.label}: {q.promql()}")
    assert checked >= 40
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


async def test_exempt_series_are_really_absent_or_zero(stack: Stack) -> None:
    """The exemptions must not hide a broken query: each exempt metric is absent or all zero."""
    for name in EXEMPT:
        values = await stack.prom.values(name)
        assert all(v == 0 for v in values), f"{name} has data {values}: remove it from EXEMPT"


async def test_latency_panels_show_numbers(stack: Stack) -> None:
    """The quantile panels are not NaN: the histograms grew between two scrapes."""
    for q in panel_queries():
        if "histogram_quantile" not in q.expr:
            continue
        if not metrics_in(q.expr) & {"relay_first_audio_seconds_bucket", "relay_forward_seconds_bucket"}:
            continue
        values = await stack.prom.values(q.promql())
        assert values and any(is_number(v) for v in values), f"{q.label}: {values}"


async def test_tenant_and_instance_variables_resolve(stack: Stack) -> None:
    tenants = await stack.prom.api("label/tenant/values", **{"match[]": "relay_sessions_active"})
    assert {"acme", "other"} <= set(tenants)
    instances = await stack.prom.api("label/instance/values", **{"match[]": "relay_build_info"})
    assert instances == [f"127.0.0.1:{stack.relay.relay.admin_port}"]
    # A panel filtered on one tenant shows that tenant only.
    q = next(q for q in panel_queries() if q.panel_title == "Live sessions per tenant")
    result = await stack.prom.query(q.promql({"tenant": "acme"}))
    assert [r["metric"]["tenant"] for r in result] == ["acme"]


async def test_counts_match_the_traffic(stack: Stack) -> None:
    prom = stack.prom
    assert await prom.value("sum(relay_sessions_total)") == stack.sessions + 1  # + the abnormal close
    assert await prom.value("sum(relay_sessions_active)") == 0
    assert await prom.value('sum(relay_handshake_rejections_total{status="401"})') == 1
    assert await prom.value('sum(relay_handshake_rejections_total{status="429"})') >= 1
    assert await prom.value('sum(relay_handshake_rejections_total{status=~"5.."})') >= 1
    assert await prom.value("sum(relay_upstream_errors_total)") >= 1
    assert await prom.value('sum(relay_client_frame_errors_total{code="invalid_json"})') == 1
    assert await prom.values('relay_events_total{type="other"} > 0') == []  # every type was known
    deltas = await prom.value(
        'sum(relay_events_total{tenant="acme",direction="upstream_to_client",'
        'type=~"response.output_audio.delta|response.audio.delta"})'
    )
    assert deltas == stack.timings.events.get("response.output_audio.delta", 0) + stack.timings.events.get(
        "response.audio.delta", 0
    )
    assert await prom.value('sum(relay_budget_warnings_total{tenant="other"})') >= 1
    assert await prom.value('sum(relay_budget_rejections_total{tenant="other"})') >= 1
    assert await prom.value('sum(relay_policy_reloads_total{result="ok"})') >= 1


async def test_sessions_that_ended_normally_count_as_ok(stack: Stack) -> None:
    """Every session of the traffic that the client closed normally has outcome "ok" (the "no
    successful sessions" alert relies on that value); the one closed with 4000 is
    "client_closed" (the "abnormal ends" panel)."""
    outcomes = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in await stack.prom.query("sum by (outcome) (relay_sessions_total) > 0")
    }
    assert outcomes == {"ok": stack.sessions, "client_closed": 1}, outcomes
    assert await stack.prom.value('sum(relay_session_close_codes_total{side="client",code="4000"})') == 1


# -- alerts ----------------------------------------------------------------------------------------


async def test_alert_rules_load_and_evaluate(stack: Stack) -> None:
    expected = {r["alert"] for r in alert_rules() if "alert" in r}

    async def evaluated() -> dict[str, dict[str, Any]]:
        rules = [r for g in await stack.prom.rules() for r in g["rules"]]
        return {r["name"]: r for r in rules if r.get("lastEvaluation", "").startswith("2")}

    deadline = time.monotonic() + 15
    rules = await evaluated()
    while set(rules) != expected and time.monotonic() < deadline:
        rules = await evaluated()
    assert set(rules) == expected, f"loaded and evaluated: {sorted(rules)}"
    for name, rule in rules.items():
        assert rule["type"] == "alerting", name
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


PENDING_OK = {
    "RelayRecordingSpoolGrowing": "the spool does grow while the traffic records (it fires after 30 min)",
}


async def test_no_alert_fires_on_a_healthy_run(stack: Stack) -> None:
    alerts = [a["metric"] for a in await stack.prom.query("ALERTS")]
    firing = [a for a in alerts if a["alertstate"] == "firing"]
    assert not firing, firing
    pending = [a for a in alerts if a["alertname"] not in PENDING_OK]
    assert not pending, pending


# -- latency against the client's own measurements -------------------------------------------------


async def _histogram(
    prom: PrometheusServer, name: str, selector: str
) -> tuple[float, float, dict[float, float]]:
    count = await prom.value(f"sum({name}_count{{{selector}}})")
    total = await prom.value(f"sum({name}_sum{{{selector}}})")
    buckets = {
        float(r["metric"]["le"]): float(r["value"][1])
        for r in await prom.query(f"sum by (le) ({name}_bucket{{{selector}}})")
    }
    return count, total, buckets


async def test_first_audio_is_bounded_by_what_the_client_measured(stack: Stack) -> None:
    client = sorted(stack.timings.first_audio_s)
    assert len(client) == 3 + 2 + 1 + 2  # text GA, text beta, audio commit, tool turns
    count, total, buckets = await _histogram(stack.prom, "relay_first_audio_seconds", 'tenant="acme"')
    assert count == len(client), "one sample per turn"
    # Each relay sample lies inside its client interval, so sums and every bucket dominate.
    assert total <= sum(client), (total, client)
    for le, relay_le in buckets.items():
        client_le = sum(1 for c in client if c <= le)
        assert relay_le >= client_le, f"le={le}: relay {relay_le} samples, client {client_le}"
    # ... and the relay does not measure something much shorter than the caller's wait.
    assert total >= sum(client) - SLACK_S * len(client), (total, client)


async def test_tool_call_latency_contains_what_the_client_measured(stack: Stack) -> None:
    client = stack.timings.tool_call_s
    assert len(client) == 2
    count, total, _ = await _histogram(stack.prom, "relay_tool_call_seconds", 'tenant="acme"')
    assert count == len(client)
    # The relay stamps the call before the client gets it and the output after the client sent it.
    assert total >= sum(client), (total, client)
    assert total <= sum(client) + SLACK_S * len(client), (total, client)


async def test_forward_latency_is_bounded_by_client_rtt_difference(stack: Stack) -> None:
    prom = stack.prom
    selector = ""
    n = 300

    async def snapshot() -> dict[str, tuple[float, float, dict[float, float]]]:
        out = {}
        for direction in ("client_to_upstream", "upstream_to_client"):
            sel = f'direction="{direction}"'
            buckets = {
                float(r["metric"]["le"]): float(r["value"][1])
                for r in await prom.query(f"sum by (le) (relay_forward_seconds_bucket{{{sel}}})")
            }
            out[direction] = (
                await prom.value(f"sum(relay_forward_seconds_count{{{sel}}})"),
                await prom.value(f"sum(relay_forward_seconds_sum{{{sel}}})"),
                buckets,
            )
        return out

    # Quiet relay: the counters stand still, and Prometheus has the latest value.
    before_local = stack.relay.metrics.registry.get_sample_value(
        "relay_forward_seconds_count", {"direction": "client_to_upstream"}
    )
    await prom.wait_for(
        'sum(relay_forward_seconds_count{direction="client_to_upstream"})',
        lambda v: v == [before_local],
    )
    before = await snapshot()
    start_ts = time.time()
    direct = await traffic.rtt_probes(stack.sim.base_url, SIM_KEY, n)
    relayed = await traffic.rtt_probes(stack.relay.ws_base, TEST_KEY, n)
    # Everything the probe session sent and received is now on /metrics; wait for the scrape.
    after_local = stack.relay.metrics.registry.get_sample_value(
        "relay_forward_seconds_count", {"direction": "client_to_upstream"}
    )
    await prom.wait_for(
        'sum(relay_forward_seconds_count{direction="client_to_upstream"})',
        lambda v: v == [after_local],
    )
    after = await snapshot()
    window = max(2, math.ceil(time.time() - start_ts) + 2)

    # Every probe and every reply was timed.
    c2u = after["client_to_upstream"][0] - before["client_to_upstream"][0]
    u2c = after["upstream_to_client"][0] - before["upstream_to_client"][0]
    assert c2u >= n and u2c >= n, (c2u, u2c)
    # Each probe's two forwards happen inside its client round trip: the sums are bounded.
    fwd_sum = sum(after[d][1] - before[d][1] for d in after)
    assert 0 < fwd_sum <= sum(relayed), (fwd_sum, sum(relayed))

    # Per probe, the relay holds the probe (one direction) and its reply (the other) inside the
    # client's round trip through the relay, and - up to the client's own jitter - inside
    # (RTT through the relay - fastest direct RTT). So, bucket by bucket, the relay cannot count
    # more forwards slower than ``le`` than the client saw probes slower than that, plus the
    # probe session's non-probe frames (session.created and the like). JITTER_S absorbs the
    # client-side noise of the second, tighter bound (a direct round trip that was slower than
    # the fastest one for reasons outside the relay).
    jitter_s = 0.00005
    floor = min(direct)
    overheads = [r - floor for r in relayed]
    counts = {"client_to_upstream": c2u, "upstream_to_client": u2c}
    for direction in ("client_to_upstream", "upstream_to_client"):
        extra = counts[direction] - n
        (count0, _, b0), (count1, _, b1) = before[direction], after[direction]
        for le in FORWARD_BUCKETS:
            slower = (count1 - count0) - (b1[le] - b0[le])
            rtt_slower = sum(1 for r in relayed if r > le)
            assert slower <= rtt_slower + extra, (direction, le, slower, rtt_slower, extra)
            overhead_slower = sum(1 for d in overheads if d > le - jitter_s)
            assert slower <= overhead_slower + extra, (
                f"{direction}: {slower:.0f} forwards slower than {le * 1e6:.0f} µs, but only "
                f"{overhead_slower} probes had more than {(le - jitter_s) * 1e6:.0f} µs of overhead "
                f"(+{extra} non-probe frames)"
            )
        p99 = await prom.value(
            f"histogram_quantile(0.99, sum by (le) (increase(relay_forward_seconds_bucket"
            f'{{direction="{direction}"{selector}}}[{window}s])))'
        )
        assert is_number(p99) and p99 > 0, (direction, p99)
