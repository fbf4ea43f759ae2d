"""BudgetService: admission, two replicas on one real redis-server, lease expiry, Redis failures."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from relay.budget.service import BudgetService
from relay.budget.units import Amounts
from relay.budget.windows import windows
from relay.config import BudgetsConfig
from relay.contracts import SessionSummary
from relay.errors import HandshakeRejected
from relay.metrics import RelayMetrics

from .helpers import Driver, client, info, response_created, response_done, spec, usage


def summary() -> SessionSummary:
    return SessionSummary(0.0, 0.0, 1000, "", 1000, "", "client_closed", 0, 0)


async def replica(url: str = "memory", **cfg) -> BudgetService:
    options = {"tick_seconds": 0.05, "flush_seconds": 0.2, "reconcile_seconds": 0.1}
    return await BudgetService.create(
        BudgetsConfig(store=url, **cfg), RelayMetrics(CollectorRegistry()), **options
    )


async def open_session(svc, sid, sp, tenant="acme"):
    i = info(sid)
    i.tenant = tenant
    adm = await svc.admit(i, sp)
    return Driver(svc.guard(i, sp, adm))


async def spend(d, rid, audio_out):
    await d.feed(client("response.create"))
    await d.feed(response_created(rid))
    await d.feed(response_done(rid, usage=usage(audio_out=audio_out)))


async def drained(*services):
    for svc in services:
        if svc._tasks:
            await asyncio.wait(list(svc._tasks), timeout=3)


def rejection(exc: pytest.ExceptionInfo) -> tuple[int, str]:
    return exc.value.status, exc.value.code


@pytest.fixture
async def two_replicas(redis_server):
    redis_server.flushall()
    a, b = await replica(redis_server.url), await replica(redis_server.url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_memory_store_works_without_redis():
    svc = await replica()
    sp = spec(limits=[{"name": "d", "metric": "usd", "per": "day", "limit": 1}], concurrent_sessions=1)
    d = await open_session(svc, "rs_1", sp)
    with pytest.raises(HandshakeRejected) as refused:
        await svc.admit(info("rs_2"), sp)
    assert rejection(refused) == (429, "concurrency_limit") and refused.value.headers["Retry-After"] == "2"
    await spend(d, "r1", 1000)  # 0.064 USD
    d.guard.close(summary())
    await drained(svc)
    report = await svc.usage("acme", sp)
    assert report["store"] == "memory" and report["store_available"]
    assert (
        report["budgets"][0]["used"] == pytest.approx(0.064) and report["concurrent_sessions"]["active"] == 0
    )
    await open_session(svc, "rs_2", sp)  # the slot was freed
    await svc.aclose()


async def test_two_replicas_share_one_concurrency_limit(two_replicas):
    a, b = two_replicas
    sp = spec(concurrent_sessions=2)
    s1 = await open_session(a, "rs_1", sp)
    await open_session(b, "rs_2", sp)
    for svc in (a, b):
        with pytest.raises(HandshakeRejected) as refused:
            await svc.admit(info("rs_3"), sp)
        assert rejection(refused) == (429, "concurrency_limit")
        assert "concurrent" in refused.value.message
    await open_session(a, "rs_x", sp, tenant="other")  # another tenant is not affected
    s1.guard.close(summary())
    await drained(a)
    await open_session(b, "rs_3", sp)  # a's session ended: b may take its place
    assert (
        a.metrics.registry.get_sample_value(
            "relay_budget_rejections_total", {"tenant": "acme", "budget": "concurrent_sessions"}
        )
        == 1
    )


async def test_two_replicas_share_one_usd_budget(two_replicas):
    a, b = two_replicas
    sp = spec(
        limits=[{"name": "daily_usd", "metric": "usd", "per": "day", "limit": 0.1}], reserve_output_tokens=200
    )
    da = await open_session(a, "rs_a", sp)
    db = await open_session(b, "rs_b", sp)
    await spend(da, "ra", 1000)  # 0.064 USD on replica a
    await drained(a)
    await db.feed(client("response.create"))  # b's reservation sees a's spend: 0.064 + bound fits under 0.1
    await db.feed(response_created("rb"))
    await db.feed(response_done("rb", usage=usage(audio_out=700)))  # 0.0448: the day is now over 0.1
    await drained(b)
    assert db.closed is not None and db.closed.code == 1008 and db.errors()[-1]["param"] == "daily_usd"
    await da.feed(client("response.create", event_id="late"))
    assert da.closed is not None and da.errors()[-1]["event_id"] == "late"
    for svc in (a, b):
        with pytest.raises(HandshakeRejected) as refused:
            await svc.admit(info("rs_new"), sp)
        assert rejection(refused) == (429, "budget_exceeded") and "daily_usd" in refused.value.message
        assert 0 < int(refused.value.headers["Retry-After"]) <= 86400
    report = await a.usage("acme", sp)
    assert report["budgets"][0]["used"] == pytest.approx(0.1088) and report["budgets"][0]["exhausted"]


async def test_a_crashed_replicas_slot_expires_with_its_lease(redis_server):
    redis_server.flushall()
    a = await replica(redis_server.url, slot_lease_seconds=0.6)
    b = await replica(redis_server.url, slot_lease_seconds=0.6)
    sp = spec(concurrent_sessions=1)
    await open_session(a, "rs_1", sp)
    await asyncio.sleep(1.0)  # longer than the lease: a's heartbeat keeps the slot
    with pytest.raises(HandshakeRejected):
        await b.admit(info("rs_2"), sp)
    for task in a._loops:  # replica a dies: no more heartbeats, nothing released
        task.cancel()
    await asyncio.gather(*a._loops, return_exceptions=True)
    await a.store.aclose()
    await asyncio.sleep(0.7)
    await open_session(b, "rs_2", sp)
    await b.aclose()


async def test_redis_stopped_mid_session_refuse_new(redis_factory):
    server = redis_factory()
    svc = await replica(server.url)
    sp = spec(
        limits=[
            {"name": "call", "metric": "usd", "per": "session", "limit": 0.05},
            {"name": "daily", "metric": "usd", "per": "day", "limit": 10},
        ],
        reserve_output_tokens=100,
    )
    d = await open_session(svc, "rs_live", sp)
    await spend(d, "r1", 200)  # 0.0128 USD, written to redis
    await drained(svc)
    server.stop()
    with pytest.raises(HandshakeRejected) as refused:  # new sessions: 503
        await svc.admit(info("rs_new"), sp)
    assert rejection(refused) == (503, "budget_store_unavailable") and refused.value.headers["Retry-After"]
    await open_session(svc, "rs_free", None)  # a tenant without budgets is not refused
    await spend(d, "r2", 300)  # the live session goes on, decided locally: 0.0192
    await drained(svc)
    assert d.closed is None
    report = await svc.usage("acme", sp)
    assert not report["store_available"] and report["unwritten"] >= 1
    await spend(d, "r3", 400)  # 0.0256: the session budget (local) still ends it
    await drained(svc)
    assert d.closed is not None and d.errors()[-1]["param"] == "call"
    d.guard.close(summary())
    await drained(svc)
    assert svc.metrics.registry.get_sample_value("relay_budget_store_errors_total", {"op": "commit"}) >= 1
    server.start()  # back, empty (no persistence): the queued usage is reconciled into it
    for _ in range(50):
        if not svc._unwritten:
            break
        await asyncio.sleep(0.1)
    assert not svc._unwritten
    view = await svc.store.view("acme", windows(svc.wall()))
    assert view.used[1].usd == (300 + 400) * 64_000  # what was spent while redis was down
    await open_session(svc, "rs_after", sp)  # new sessions are admitted again
    await svc.aclose()


async def test_redis_down_with_allow_admits_degraded(redis_factory):
    server = redis_factory()
    svc = await replica(server.url, on_store_unavailable="allow")
    server.stop()
    sp = spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 10}], concurrent_sessions=1)
    d = await open_session(svc, "rs_1", sp)
    assert d.guard.admission.degraded
    await spend(d, "r1", 100)
    d.guard.close(summary())
    await drained(svc)
    server.start()
    for _ in range(50):
        if not svc._unwritten:
            break
        await asyncio.sleep(0.1)
    assert (await svc.store.view("acme", windows(svc.wall()))).used[2] == Amounts(usd=6_400_000, tokens=100)
    await svc.aclose()
