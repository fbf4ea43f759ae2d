"""The shared ledger in Redis: one atomic Lua script per operation, leases on Redis's own clock.

Rules of this module:
- Every read-check-write is one script (EVALSHA), so replicas never interleave inside a reserve,
  a commit or a slot acquisition. Lease expiry uses ``redis.call('TIME')``: replicas whose clocks
  disagree still agree on when a lease ends.
- Keys of one tenant share the hash tag ``{tenant}`` (Redis Cluster keeps them on one slot):
    <prefix>{T}:slots        ZSET  session id → lease expiry (ms, Redis time)
    <prefix>{T}:res          HASH  reservation id → "session usd tokens ain aout"
    <prefix>{T}:<window id>  HASH  usd, tokens, ain, aout (ledger units); expires after its window
- Counters are integers well under 2^53, so Lua's doubles hold them exactly.
- Any connection or timeout error becomes ``StoreUnavailable``; short timeouts and no retries, so
  a dead Redis is noticed in about a second, not after a backoff.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.budget.ledger import Check, LedgerView, ReserveResult, StoreUnavailable, Used
from relay.budget.units import COUNTERS, Amounts
from relay.budget.windows import Window

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reserved(slots, res, now)
  local sum = {0, 0, 0, 0}
  local all = redis.call('HGETALL', res)
  for i = 1, #all, 2 do
    local sid, a, b, c, d = string.match(all[i + 1], '^(%S+) (%d+) (%d+) (%d+) (%d+)$')
    local score = sid and redis.call('ZSCORE', slots, sid)
    if score and tonumber(score) > now then
      sum[1] = sum[1] + tonumber(a); sum[2] = sum[2] + tonumber(b)
      sum[3] = sum[3] + tonumber(c); sum[4] = sum[4] + tonumber(d)
    else
      redis.call('HDEL', res, all[i])
    end
  end
  return sum
end
local function used(key)
  local v = redis.call('HMGET', key, 'usd', 'tokens', 'ain', 'aout')
  return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0}
end
local function metric(v, m)
  if m == 5 then return v[3] + v[4] end
  return v[m]
end
"""

# KEYS: slots, res, hour, day, month
# ARGV: rid, session, usd, tokens, ain, aout, n, then n × (window 1..3, metric 1..5, limit)
# → {ok, failed index (1-based, 0 if ok), used hour ×4, day ×4, month ×4, reserved ×4, live}
_RESERVE = (
    _COMMON
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local r = reserved(KEYS[1], KEYS[2], now)
local u = {used(KEYS[3]), used(KEYS[4]), used(KEYS[5])}
local amt = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local failed = 0
for i = 0, tonumber(ARGV[7]) - 1 do
  local w, m, lim = tonumber(ARGV[8 + 3 * i]), tonumber(ARGV[9 + 3 * i]), tonumber(ARGV[10 + 3 * i])
  local x = metric(u[w], m)
  if x >= lim or x + metric(r, m) + metric(amt, m) > lim then failed = i + 1; break end
end
if failed == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], table.concat({ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]}, ' '))
end
local out = {failed == 0 and 1 or 0, failed}
for w = 1, 3 do for j = 1, 4 do table.insert(out, u[w][j]) end end
for j = 1, 4 do table.insert(out, r[j]) end
table.insert(out, redis.call('ZCARD', KEYS[1]))
return out
"""
)

# KEYS: res, hour, day, month; ARGV: rid ("" for none), ttl hour, ttl day, ttl month, usd, tokens, ain, aout
# → used after: hour ×4, day ×4, month ×4
_COMMIT = """
if ARGV[1] ~= '' then redis.call('HDEL', KEYS[1], ARGV[1]) end
local fields = {'usd', 'tokens', 'ain', 'aout'}
local out = {}
for w = 1, 3 do
  local key = KEYS[1 + w]
  for j = 1, 4 do
    local a = ARGV[4 + j]
    if a ~= '0' then
      table.insert(out, redis.call('HINCRBY', key, fields[j], a))
    else
      table.insert(out, tonumber(redis.call('HGET', key, fields[j]) or '0'))
    end
  end
  redis.call('EXPIRE', key, ARGV[1 + w])
end
return out
"""

# KEYS: slots; ARGV: session, limit (-1: none), lease ms → {ok, live}
_ACQUIRE = (
    _COMMON
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local exp = now + tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local n = redis.call('ZCARD', KEYS[1])
  local lim = tonumber(ARGV[2])
  if lim >= 0 and n >= lim then return {0, n} end
end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return {1, redis.call('ZCARD', KEYS[1])}
"""
)

# KEYS: slots; ARGV: lease ms, session ids...
_RENEW = (
    _COMMON
    + """
local exp = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], exp, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return {#ARGV - 1}
"""
)

# KEYS: slots, res, hour, day, month → used ×12, reserved ×4, live
_VIEW = (
    _COMMON
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local r = reserved(KEYS[1], KEYS[2], now)
local out = {}
for w = 3, 5 do for _, v in ipairs(used(KEYS[w])) do table.insert(out, v) end end
for j = 1, 4 do table.insert(out, r[j]) end
table.insert(out, redis.call('ZCARD', KEYS[1]))
return out
"""
)

_METRIC_CODE = {"usd": 1, "tokens": 2, "audio_seconds_in": 3, "audio_seconds_out": 4, "audio_seconds": 5}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
assert COUNTERS == ("usd", "tokens", "ain", "aout")  # the scripts' field order


def _tag(tenant: str) -> str:
    # Braces would break the hash tag and ':' the key layout: percent-encode anything unusual.
    return _SAFE.sub(lambda m: "%" + m.group().encode().hex().upper(), tenant)


class RedisLedger:
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "relay:budget:", timeout: float = 1.0) -> None:
        self._redis: Any = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            decode_responses=True,
        )
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._commit = self._redis.register_script(_COMMIT)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._view = self._redis.register_script(_VIEW)

    def _keys(self, tenant: str) -> tuple[str, str]:
        base = f"{self._prefix}{{{_tag(tenant)}}}:"
        return base + "slots", base + "res"

    def _wkeys(self, tenant: str, wins: Sequence[Window]) -> list[str]:
        base = f"{self._prefix}{{{_tag(tenant)}}}:"
        return [base + w.id for w in wins]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        try:
            result = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return [int(x) for x in result]

    async def acquire_slot(
        self, tenant: str, session_id: str, limit: int | None, lease_s: float
    ) -> tuple[bool, int]:
        slots, _ = self._keys(tenant)
        lim = -1 if limit is None else limit
        ok, n = await self._call(self._acquire, [slots], [session_id, lim, _ms(lease_s)])
        return bool(ok), n

    async def renew_slots(self, tenant: str, session_ids: Sequence[str], lease_s: float) -> None:
        if session_ids:
            slots, _ = self._keys(tenant)
            await self._call(self._renew, [slots], [_ms(lease_s), *session_ids])

    async def release_slot(self, tenant: str, session_id: str) -> None:
        slots, _ = self._keys(tenant)
        try:
            await self._redis.zrem(slots, session_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        rid: str,
        amount: Amounts,
        checks: Sequence[Check],
        wins: Sequence[Window],
    ) -> ReserveResult:
        slots, res = self._keys(tenant)
        args: list[Any] = [rid, session_id, *amount.as_list(), len(checks)]
        for c in checks:
            args += [c.window + 1, _METRIC_CODE[c.metric], c.units]
        out = await self._call(self._reserve, [slots, res, *self._wkeys(tenant, wins)], args)
        view = LedgerView(_used(out[2:14]), Amounts.of(out[14:18]), out[18])
        return ReserveResult(bool(out[0]), out[1] - 1, view)

    async def commit(
        self, tenant: str, rid: str, amount: Amounts, wins: Sequence[Window], now: float
    ) -> Used:
        _, res = self._keys(tenant)
        ttls = [w.ttl_seconds(now) for w in wins]
        out = await self._call(
            self._commit, [res, *self._wkeys(tenant, wins)], [rid, *ttls, *amount.as_list()]
        )
        return _used(out)

    async def release(self, tenant: str, rid: str) -> None:
        _, res = self._keys(tenant)
        try:
            await self._redis.hdel(res, rid)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def view(self, tenant: str, wins: Sequence[Window]) -> LedgerView:
        slots, res = self._keys(tenant)
        out = await self._call(self._view, [slots, res, *self._wkeys(tenant, wins)], [])
        return LedgerView(_used(out[0:12]), Amounts.of(out[12:16]), out[16])

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        except (RedisError, OSError):
            pass


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _used(v: list[int]) -> Used:
    return (Amounts.of(v[0:4]), Amounts.of(v[4:8]), Amounts.of(v[8:12]))
