"""The ledger semantics, run against both stores: memory and a real redis-server."""

import asyncio
import time

import pytest

from relay.budget.ledger import Check, MemoryLedger, StoreUnavailable
from relay.budget.redis_ledger import RedisLedger
from relay.budget.units import Amounts
from relay.budget.windows import windows

NOW = 1_795_000_000.0
WINS = windows(NOW)
USD_DAY = Check(1, "usd", 1000)
AUDIO_HOUR = Check(0, "audio_seconds", 100)


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        s = MemoryLedger(wall=lambda: NOW)
        yield s
    else:
        server = request.getfixturevalue("redis_server")
        server.flushall()
        s = RedisLedger(server.url)
        yield s
        await s.aclose()


async def test_commit_adds_to_all_three_windows(store):
    used = await store.commit("t", "", Amounts(usd=5, tokens=7, ain=9, aout=11), WINS, NOW)
    assert used == (Amounts(5, 7, 9, 11),) * 3
    used = await store.commit("t", "", Amounts(usd=1), WINS, NOW)
    assert used[0] == Amounts(6, 7, 9, 11)
    later = windows(NOW + 3600)  # next hour, same day and month
    used = await store.commit("t", "", Amounts(tokens=1), later, NOW + 3600)
    assert used == (Amounts(0, 1, 0, 0), Amounts(6, 8, 9, 11), Amounts(6, 8, 9, 11))
    view = await store.view("t", WINS)
    assert view.used[0] == Amounts(6, 7, 9, 11)
    assert (await store.view("other", WINS)).used == (Amounts(),) * 3


async def test_reserve_then_settle(store):
    assert (await store.acquire_slot("t", "s1", None, 30))[0]
    res = await store.reserve("t", "s1", "s1:1", Amounts(usd=600), [USD_DAY], WINS)
    assert res.ok and res.failed == -1
    res = await store.reserve("t", "s1", "s1:2", Amounts(usd=500), [USD_DAY], WINS)
    assert not res.ok and res.failed == 0 and res.view.reserved.usd == 600
    await store.commit("t", "s1:1", Amounts(usd=100), WINS, NOW)  # settled far below the bound
    view = await store.view("t", WINS)
    assert view.reserved == Amounts() and view.used[1].usd == 100
    assert (await store.reserve("t", "s1", "s1:3", Amounts(usd=900), [USD_DAY], WINS)).ok
    assert not (await store.reserve("t", "s1", "s1:4", Amounts(usd=1), [USD_DAY], WINS)).ok
    await store.release("t", "s1:3")
    assert (await store.reserve("t", "s1", "s1:5", Amounts(usd=900), [USD_DAY], WINS)).ok


async def test_exhausted_budget_refuses_even_a_zero_reservation(store):
    await store.acquire_slot("t", "s1", None, 30)
    await store.commit("t", "", Amounts(ain=60, aout=40), WINS, NOW)
    res = await store.reserve("t", "s1", "s1:1", Amounts(), [USD_DAY, AUDIO_HOUR], WINS)
    assert not res.ok and res.failed == 1  # audio_seconds = ain + aout = 100 >= 100


async def test_concurrency_slots(store):
    assert await store.acquire_slot("t", "a", 2, 30) == (True, 1)
    assert await store.acquire_slot("t", "b", 2, 30) == (True, 2)
    assert await store.acquire_slot("t", "c", 2, 30) == (False, 2)
    assert await store.acquire_slot("t", "a", 2, 30) == (True, 2)  # re-taking one's own slot is a renewal
    assert await store.acquire_slot("u", "c", 2, 30) == (True, 1)  # tenants are separate
    await store.release_slot("t", "a")
    assert await store.acquire_slot("t", "c", 2, 30) == (True, 2)
    assert (await store.view("t", WINS)).active == 2


async def test_leases_expire_and_take_their_reservations_along(store):
    assert (await store.acquire_slot("t", "dead", 1, 0.3))[0]
    assert (await store.reserve("t", "dead", "dead:1", Amounts(usd=1000), [USD_DAY], WINS)).ok
    assert not (await store.acquire_slot("t", "b", 1, 30))[0]
    await asyncio.sleep(0.45)
    assert (await store.acquire_slot("t", "b", 1, 30))[0]  # the crashed holder's lease lapsed
    assert (await store.view("t", WINS)).reserved == Amounts()
    assert (await store.reserve("t", "b", "b:1", Amounts(usd=1000), [USD_DAY], WINS)).ok


async def test_renewal_keeps_a_lease_alive(store):
    await store.acquire_slot("t", "a", 1, 0.3)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await store.renew_slots("t", ["a"], 0.3)
    assert not (await store.acquire_slot("t", "b", 1, 0.3))[0]


async def test_odd_tenant_names_stay_separate(store):
    await store.commit("a:b", "", Amounts(usd=1), WINS, NOW)
    await store.commit("a}b", "", Amounts(usd=2), WINS, NOW)
    assert (await store.view("a:b", WINS)).used[0].usd == 1
    assert (await store.view("a}b", WINS)).used[0].usd == 2


async def test_redis_keys_and_expiry(redis_server):
    redis_server.flushall()
    store = RedisLedger(redis_server.url)
    try:
        await store.commit("acme", "", Amounts(usd=3), WINS, NOW)
    finally:
        await store.aclose()
    key = f"relay:budget:{{acme}}:{WINS[1].id}"
    assert b"3" in redis_server.command("HGET", key, "usd")
    ttl = int(redis_server.command("TTL", key)[1:].strip())
    assert ttl > 86400  # the day window's key outlives the day


async def test_unreachable_redis_raises_store_unavailable():
    from tests.support.redis_server import free_port

    store = RedisLedger(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.acquire_slot("t", "a", 1, 30)
    with pytest.raises(StoreUnavailable):
        await store.commit("t", "", Amounts(usd=1), WINS, NOW)
    assert time.monotonic() - started < 3
    await store.aclose()
