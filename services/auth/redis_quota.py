"""Quota state in Redis, shared by every auth replica: one truth.

Each reserve, renew, commit and release is one Lua script (EVALSHA), so the
check and the take are atomic in Redis, never read-modify-write across
processes; time is the Redis server's clock (`TIME`), so replicas on
different machines agree. Keys are namespaced (`maas:quota:`) and carry the
tenant as a hash tag (`{tenant}`), so every key a script touches sits in one
Redis Cluster slot. Per tenant:

    {t}:rpm, {t}:tpm            request and token buckets (hash: level, updated, cap)
    {t}:held                    live leases, reservation id -> expiry (zset)
    {t}:leases                  reservation id -> lease (json: tokens, request id, key, ...)
    {t}:requests                request id -> reservation id (a retried Reserve's lease)
    {t}:held_tokens             the sum of the live leases' tokens
    {t}:pending                 request ids claiming an idempotency key -> deadline (zset)
    {t}:restrictions            version of the tenant's restrictions (a random token)
    {t}:throttle:<restriction>  a throttle restriction's bucket
    {t}:month:<YYYY-MM>         tokens committed that month
    {t}:budget                  money budgets (hash, exact amounts, budgets.py):
                                  held|<scope>      the live leases' worst-case cost
                                  spent|<counter>   what commits charged a budget's period
                                  alerted|<counter> its soft threshold raised its alert

Every key has a TTL: a bucket lives until it is full again (the same as
absent), leases as long as the longest lease, the month's counter past the
month's end; the budget hash lives a year past its last charge (the
ledger's figure covers a counter that went). Redis unreachable:
UNAVAILABLE, never an unchecked admission."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.auth.budgets import Crossing, Usage
from services.auth.quota_state import (
    PENDING_S,
    Ask,
    Held,
    Settled,
    Stale,
    budget_refusal,
    concurrency_refusal,
    lapsed,
    rate_refusal,
    tokens_refusal,
)
from services.auth.restrictions import MAX_DURATION
from services.common.errors import UnavailableError

PREFIX = "maas:quota"
# A Reserve waits this long at most for Redis to answer before UNAVAILABLE:
# a healthy local Redis answers in well under a millisecond.
SOCKET_TIMEOUT_S = 2.0
# Connections one auth process opens: each script runs in well under a
# millisecond, so a few dozen keep Redis's single thread busy.
MAX_CONNECTIONS = 32
# The month's counter is read only during its month (at most 31 days): 40
# days after its last commit it can go.
MONTH_KEEP_MS = 40 * 24 * 3600 * 1000
# A restriction lasts at most MAX_DURATION: a version outliving it by a day
# never expires while a restriction it announced is still in force.
VERSION_KEEP_S = int((MAX_DURATION + timedelta(days=1)).total_seconds())
# The budget hash holds lifetime counters: a year idle it may go, since
# spent is never less than the ledger's figure.
BUDGET_KEEP_MS = 366 * 24 * 3600 * 1000

_PRELUDE = """
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
-- Exact money amounts travel as strings (cjson would round big numbers).
local function unhold(budget, lease)
  if lease.m and lease.m ~= '0' then
    redis.call('HINCRBY', budget, 'held|', '-' .. lease.m)
    if lease.s ~= '' then redis.call('HINCRBY', budget, 'held|' .. lease.s, '-' .. lease.m) end
  end
end
-- Drops the leases that lapsed; their tokens stay spent this minute (their
-- request may have run), their money hold goes (nothing was charged).
local function sweep(held, leases, requests, sum, budget, now)
  local gone = redis.call('ZRANGEBYSCORE', held, '-inf', num(now))
  for _, rid in ipairs(gone) do
    local raw = redis.call('HGET', leases, rid)
    if raw then
      local lease = cjson.decode(raw)
      redis.call('DECRBY', sum, lease.t)
      unhold(budget, lease)
      if redis.call('HGET', requests, lease.r) == rid then redis.call('HDEL', requests, lease.r) end
      redis.call('HDEL', leases, rid)
    end
    redis.call('ZREM', held, rid)
  end
end
-- A bucket's level now: absent (or of another capacity) is full.
local function level(key, cap, now)
  local v = redis.call('HMGET', key, 'level', 'updated', 'cap')
  local lvl, updated = tonumber(v[1]), tonumber(v[2])
  if lvl == nil or tonumber(v[3]) ~= cap then return cap end
  return math.min(cap, lvl + (now - updated) * cap / 60)
end
local function store_level(key, cap, lvl, now)
  redis.call('HSET', key, 'level', num(lvl), 'updated', num(now), 'cap', cap)
  -- Once refilled it is full, the same as absent: then it may go.
  redis.call('PEXPIRE', key, math.ceil(math.max(0, cap - lvl) * 60000 / cap) + 1000)
end
-- Extends the keys' TTL to at least ms (another replica may lease longer).
local function keep(keys, ms)
  for _, k in ipairs(keys) do
    if redis.call('PEXPIRE', k, ms, 'GT') == 0 then redis.call('PEXPIRE', k, ms, 'NX') end
  end
end
"""

# KEYS: held leases requests sum budget pending version rpm tpm month throttle...
# ARGV: now request_id reservation_id tokens rpm tpm concurrency budget
#       ledger_spent lease_ms version idempotency_key wall_expires money throttle_rate...
# money (json): cost, key, rates {p, c, o}, checks [{subject, scope, counter,
#               limit, soft, ledger}], amounts as strings
_RESERVE = (
    _PRELUDE
    + f"""
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now)
if ARGV[11] ~= '*' then
  local version = redis.call('GET', KEYS[7]) or ''
  if version ~= ARGV[11] then return {{'stale', version}} end
end
local request_id = ARGV[2]
local existing = redis.call('HGET', KEYS[3], request_id)
if existing then
  redis.call('ZREM', KEYS[6], request_id)
  local lease = redis.call('HGET', KEYS[2], existing)
  return {{'ok', existing, lease, redis.call('ZSCORE', KEYS[1], existing)}}
end
local tokens = tonumber(ARGV[4])
local throttles = {{}}
for i = 15, #ARGV do
  local cap, key = tonumber(ARGV[i]), KEYS[i - 4]
  local lvl = level(key, cap, now)
  if lvl < 1 then return {{'refused', 'throttle', num((1 - lvl) * 60 / cap), tostring(i - 15)}} end
  throttles[#throttles + 1] = {{key, cap, lvl}}
end
local concurrency = tonumber(ARGV[7])
if concurrency > 0 and redis.call('ZCARD', KEYS[1]) >= concurrency then
  local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {{'refused', 'max_concurrent_requests', num(tonumber(soonest[2]) - now), ''}}
end
local rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local rlvl, tlvl
if rpm > 0 then
  rlvl = level(KEYS[8], rpm, now)
  if rlvl < 1 then return {{'refused', 'requests_per_minute', num((1 - rlvl) * 60 / rpm), ''}} end
end
if tpm > 0 then
  tlvl = level(KEYS[9], tpm, now)
  if tlvl < tokens then
    return {{'refused', 'tokens_per_minute', num((tokens - tlvl) * 60 / tpm), ''}}
  end
end
local budget = tonumber(ARGV[8])
if budget > 0 then
  -- The ledger may not have a commit's record yet, and this counter may not
  -- cover the whole month: whichever is more is spent.
  local spent = math.max(tonumber(redis.call('GET', KEYS[10]) or '0'), tonumber(ARGV[9]))
  local held = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + held + tokens > budget then return {{'refused', 'monthly_token_budget', '0', ''}} end
end
local money = cjson.decode(ARGV[14])
local cost = tonumber(money.cost)
for i, b in ipairs(money.checks) do
  -- As for tokens: the larger of this counter and the ledger's figure is spent.
  local spent = math.max(
    tonumber(redis.call('HGET', KEYS[5], 'spent|' .. b.counter) or '0'), tonumber(b.ledger))
  local held = tonumber(redis.call('HGET', KEYS[5], 'held|' .. b.scope) or '0')
  if spent + held + cost > tonumber(b.limit) then
    return {{'refused', 'budget', '0', tostring(i - 1)}}
  end
end
for _, b in ipairs(throttles) do store_level(b[1], b[2], b[3] - 1, now) end
if rpm > 0 then store_level(KEYS[8], rpm, rlvl - 1, now) end
if tpm > 0 then store_level(KEYS[9], tpm, tlvl - tokens, now) end
local lease_ms = tonumber(ARGV[10])
local expires = now + lease_ms / 1000
local wall = ARGV[13]
if wall == '' then wall = num(expires) end
local rid = ARGV[3]
local lease = cjson.encode({{
  t = tokens, r = request_id, k = ARGV[12], c = tpm, w = wall,
  m = money.cost, s = money.key, p = money.rates, b = money.checks}})
redis.call('ZADD', KEYS[1], num(expires), rid)
redis.call('HSET', KEYS[2], rid, lease)
redis.call('HSET', KEYS[3], request_id, rid)
redis.call('INCRBY', KEYS[4], tokens)
redis.call('ZREM', KEYS[6], request_id)
if cost > 0 then
  redis.call('HINCRBY', KEYS[5], 'held|', money.cost)
  if money.key ~= '' then redis.call('HINCRBY', KEYS[5], 'held|' .. money.key, money.cost) end
  keep({{KEYS[5]}}, {BUDGET_KEEP_MS})
end
keep({{KEYS[1], KEYS[2], KEYS[3], KEYS[4]}}, lease_ms + 1000)
return {{'ok', rid, lease, num(expires)}}
"""
)

# KEYS: held leases requests sum budget; ARGV: now reservation_id lease_ms wall_expires
_RENEW = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now)
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return false end
local lease = cjson.decode(raw)
local lease_ms = tonumber(ARGV[3])
local expires = now + lease_ms / 1000
lease.w = ARGV[4]
if lease.w == '' then lease.w = num(expires) end
raw = cjson.encode(lease)
redis.call('HSET', KEYS[2], ARGV[2], raw)
redis.call('ZADD', KEYS[1], 'XX', num(expires), ARGV[2])
keep({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, lease_ms + 1000)
return {raw, num(expires)}
"""
)

# KEYS: held leases requests sum budget tpm month
# ARGV: now reservation_id used ('' = release) prompt cached completion
_SETTLE = (
    _PRELUDE
    + f"""
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now)
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return false end
local lease = cjson.decode(raw)
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], lease.r) == ARGV[2] then redis.call('HDEL', KEYS[3], lease.r) end
redis.call('DECRBY', KEYS[4], lease.t)
unhold(KEYS[5], lease)
local back = lease.t
local charged = '0'
local crossed = {{}}
if ARGV[3] ~= '' then
  local used = tonumber(ARGV[3])
  back = lease.t - used
  redis.call('INCRBY', KEYS[7], used)
  redis.call('PEXPIRE', KEYS[7], {MONTH_KEEP_MS})
  local rates = lease.p
  local cost = 0
  if rates then
    local p, c, o = tonumber(rates.p), tonumber(rates.c), tonumber(rates.o)
    local prompt, cached, completion = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
    if prompt > 0 or completion > 0 then
      cached = math.min(cached, prompt)
      cost = (prompt - cached) * p + cached * c + completion * o
    else
      cost = used * math.max(p, c, o)
    end
  end
  if cost > 0 then
    charged = string.format('%.0f', cost)
    for _, b in ipairs(lease.b) do
      local field = 'spent|' .. b.counter
      local before = math.max(
        tonumber(redis.call('HGET', KEYS[5], field) or '0'), tonumber(b.ledger))
      redis.call('HINCRBY', KEYS[5], field, charged)
      local soft = tonumber(b.soft)
      if soft > 0 and before < soft and before + cost >= soft
          and redis.call('HSETNX', KEYS[5], 'alerted|' .. b.counter, '1') == 1 then
        crossed[#crossed + 1] = {{
          subject = b.subject, scope = b.scope, soft = b.soft, limit = b.limit,
          spent = string.format('%.0f', before + cost)}}
      end
    end
    keep({{KEYS[5]}}, {BUDGET_KEEP_MS})
  end
end
if lease.c > 0 then
  -- Gives back what was not used (takes the overage when negative).
  store_level(KEYS[6], lease.c, math.min(lease.c, level(KEYS[6], lease.c, now) + back), now)
end
return {{raw, expires, charged, cjson.encode(crossed)}}
"""
)

# KEYS: held leases requests sum budget; ARGV: now
_HELD = (
    _PRELUDE
    + """
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now_s(ARGV[1]))
return tonumber(redis.call('GET', KEYS[4]) or '0')
"""
)

# KEYS: held leases requests sum budget pending; ARGV: now request_id
_RUNNING = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], now)
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 1 end
local deadline = redis.call('ZSCORE', KEYS[6], ARGV[2])
if deadline and tonumber(deadline) > now then return 1 end
return 0
"""
)

# KEYS: pending; ARGV: now request_id pending_ms
_MARK = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
redis.call('ZADD', KEYS[1], num(now + tonumber(ARGV[3]) / 1000), ARGV[2])
keep({KEYS[1]}, tonumber(ARGV[3]) + 1000)
return 1
"""
)

_REFUSALS = {
    "max_concurrent_requests": concurrency_refusal,
    "requests_per_minute": rate_refusal,
    "tokens_per_minute": tokens_refusal,
}


def _reservation_id(tenant_id: str) -> str:
    """Carries its tenant, so Renew and Commit find its keys without a lookup
    (tenant ids are auth's own 32 hex digits: the id stays under 128)."""
    return f"{uuid.uuid4().hex}.{tenant_id}"


def _tenant_of(reservation_id: str) -> str:
    _, _, tenant_id = reservation_id.partition(".")
    return tenant_id


class RedisQuotaState:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = PREFIX,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock` and `wall` stand in for the Redis server's clock (tests
        that move time); unset, the server's `TIME` decides."""
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._wall = wall
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)
        self._settle = client.register_script(_SETTLE)
        self._held = client.register_script(_HELD)
        self._running = client.register_script(_RUNNING)
        self._mark = client.register_script(_MARK)

    def _key(self, tenant_id: str, name: str) -> str:
        return f"{self._prefix}:{{{tenant_id}}}:{name}"

    def _leases(self, tenant_id: str) -> list[str]:
        return [
            self._key(tenant_id, n) for n in ("held", "leases", "requests", "held_tokens", "budget")
        ]

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    def _wall_expires(self, lease_s: float) -> str:
        if self._wall is None:
            return ""
        return repr((self._wall() + timedelta(seconds=lease_s)).timestamp())

    async def _call(self, script: Any, keys: list[str], args: list[str | int | float]) -> Any:
        try:
            return await cast(Awaitable[Any], script(keys=keys, args=args))
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise UnavailableError("quota state (Redis) unreachable; retry") from err

    async def reserve(self, ask: Ask) -> Held | Stale:
        t = ask.tenant_id
        plan = ask.plan
        keys = [
            *self._leases(t),
            self._key(t, "pending"),
            self._key(t, "restrictions"),
            self._key(t, "rpm"),
            self._key(t, "tpm"),
            self._key(t, f"month:{ask.month}"),
            *(self._key(t, f"throttle:{th.restriction_id}") for th in ask.throttles),
        ]
        args: list[str | int | float] = [
            self._now(),
            ask.request_id,
            _reservation_id(t),
            ask.tokens,
            plan.requests_per_minute,
            plan.tokens_per_minute,
            plan.max_concurrent_requests,
            plan.monthly_token_budget,
            ask.ledger_spent,
            math.ceil(ask.lease_s * 1000),
            "*" if ask.restrictions_version is None else ask.restrictions_version,
            ask.idempotency_key,
            self._wall_expires(ask.lease_s),
            _money(ask),
            *(th.requests_per_minute for th in ask.throttles),
        ]
        reply = [_text(v) for v in await self._call(self._reserve, keys, args)]
        if reply[0] == "stale":
            return Stale(reply[1])
        if reply[0] == "refused":
            subject, wait = reply[1], float(reply[2])
            if subject == "throttle":
                raise ask.throttles[int(reply[3])].refusal(wait)
            if subject == "monthly_token_budget":
                raise budget_refusal(ask.budget_retry_after_s)
            if subject == "budget":
                raise ask.budgets[int(reply[3])].refusal()
            raise _REFUSALS[subject](wait)
        return _held(t, reply[1], reply[2], reply[3])

    async def renew(self, reservation_id: str, lease_s: float) -> Held:
        t = _tenant_of(reservation_id)
        if not t:
            raise lapsed(reservation_id)
        reply = await self._call(
            self._renew,
            self._leases(t),
            [self._now(), reservation_id, math.ceil(lease_s * 1000), self._wall_expires(lease_s)],
        )
        if reply is None:
            raise lapsed(reservation_id)
        return _held(t, reservation_id, _text(reply[0]), _text(reply[1]))

    async def settle(self, reservation_id: str, used: Usage | None, month: str) -> Settled:
        t = _tenant_of(reservation_id)
        if not t:
            raise lapsed(reservation_id)
        split = (0, 0, 0) if used is None else (used.prompt, used.cached, used.completion)
        reply = await self._call(
            self._settle,
            [*self._leases(t), self._key(t, "tpm"), self._key(t, f"month:{month}")],
            [self._now(), reservation_id, "" if used is None else used.tokens, *split],
        )
        if reply is None:
            raise lapsed(reservation_id)
        held = _held(t, reservation_id, _text(reply[0]), _text(reply[1]))
        found = json.loads(_text(reply[3]))
        # cjson encodes an empty table as an object: {} is no crossing.
        crossings = tuple(
            Crossing(c["subject"], t, c["scope"], int(c["spent"]), int(c["soft"]), int(c["limit"]))
            for c in (found if isinstance(found, list) else [])
        )
        return Settled(held, int(_text(reply[2])), crossings)

    async def held_tokens(self, tenant_id: str) -> int:
        return int(await self._call(self._held, self._leases(tenant_id), [self._now()]))

    async def mark_pending(self, tenant_id: str, request_id: str) -> None:
        await self._call(
            self._mark,
            [self._key(tenant_id, "pending")],
            [self._now(), request_id, int(PENDING_S * 1000)],
        )

    async def unmark_pending(self, tenant_id: str, request_id: str) -> None:
        try:
            await self._redis.zrem(self._key(tenant_id, "pending"), request_id)
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise UnavailableError("quota state (Redis) unreachable; retry") from err

    async def running(self, tenant_id: str, request_id: str) -> bool:
        keys = [*self._leases(tenant_id), self._key(tenant_id, "pending")]
        return bool(await self._call(self._running, keys, [self._now(), request_id]))

    async def restrictions_changed(self, tenant_id: str) -> None:
        """A fresh random version (not a counter: a counter whose key expired
        could come back to a number a stale replica already holds)."""
        try:
            await self._redis.set(
                self._key(tenant_id, "restrictions"), uuid.uuid4().hex, ex=VERSION_KEEP_S
            )
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise UnavailableError("quota state (Redis) unreachable; retry") from err

    async def restrictions_version(self, tenant_id: str) -> str | None:
        try:
            value = await self._redis.get(self._key(tenant_id, "restrictions"))
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise UnavailableError("quota state (Redis) unreachable; retry") from err
        return _text(value)


def _text(value: bytes | str | int | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _money(ask: Ask) -> str:
    """The ask's budgets for the reserve script; amounts as strings, exact."""
    return json.dumps(
        {
            "cost": str(ask.cost),
            "key": ask.key_id,
            "rates": {
                "p": str(ask.rates.prompt),
                "c": str(ask.rates.cached_prompt),
                "o": str(ask.rates.completion),
            },
            "checks": [
                {
                    "subject": b.subject,
                    "scope": b.scope,
                    "counter": b.counter,
                    "limit": str(b.limit),
                    "soft": str(b.soft),
                    "ledger": str(b.ledger_spent),
                }
                for b in ask.budgets
            ],
        }
    )


def _held(tenant_id: str, reservation_id: str, raw: str, expires: str) -> Held:
    lease = json.loads(raw)
    return Held(
        reservation_id=reservation_id,
        tenant_id=tenant_id,
        request_id=lease["r"],
        tokens=int(lease["t"]),
        expires=float(expires),
        expire_time=datetime.fromtimestamp(float(lease["w"]), UTC),
        idempotency_key=lease["k"],
        key_id=lease.get("s", ""),
        cost=int(lease.get("m", "0")),
    )


def redis_client(url: str) -> aioredis.Redis:
    """A client for `url` (redis://host:port/db) whose callers wait their turn
    for a connection (up to SOCKET_TIMEOUT_S) rather than fail when all are busy."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    return aioredis.Redis.from_pool(pool)


@asynccontextmanager
async def open_redis_quota_state(url: str, **options: Any) -> AsyncIterator[RedisQuotaState]:
    """A client for `url`; `options` go to RedisQuotaState."""
    client = redis_client(url)
    try:
        yield RedisQuotaState(client, **options)
    finally:
        await client.aclose()
