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

Every key has a TTL: a bucket lives until it is full again (the same as
absent), leases as long as the longest lease, the month's counter past the
month's end. Redis unreachable: UNAVAILABLE, never an unchecked admission."""

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

from services.auth.quota_state import (
    PENDING_S,
    Ask,
    Held,
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

_PRELUDE = """
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
-- Drops the leases that lapsed; their tokens stay spent this minute (their
-- request may have run).
local function sweep(held, leases, requests, sum, now)
  local gone = redis.call('ZRANGEBYSCORE', held, '-inf', num(now))
  for _, rid in ipairs(gone) do
    local raw = redis.call('HGET', leases, rid)
    if raw then
      local lease = cjson.decode(raw)
      redis.call('DECRBY', sum, lease.t)
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

# KEYS: held leases requests sum pending version rpm tpm month throttle...
# ARGV: now request_id reservation_id tokens rpm tpm concurrency budget
#       ledger_spent lease_ms version idempotency_key wall_expires throttle_rate...
_RESERVE = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now)
if ARGV[11] ~= '*' then
  local version = redis.call('GET', KEYS[6]) or ''
  if version ~= ARGV[11] then return {'stale', version} end
end
local request_id = ARGV[2]
local existing = redis.call('HGET', KEYS[3], request_id)
if existing then
  redis.call('ZREM', KEYS[5], request_id)
  local lease = redis.call('HGET', KEYS[2], existing)
  return {'ok', existing, lease, redis.call('ZSCORE', KEYS[1], existing)}
end
local tokens = tonumber(ARGV[4])
local throttles = {}
for i = 14, #ARGV do
  local cap, key = tonumber(ARGV[i]), KEYS[i - 4]
  local lvl = level(key, cap, now)
  if lvl < 1 then return {'refused', 'throttle', num((1 - lvl) * 60 / cap), tostring(i - 14)} end
  throttles[#throttles + 1] = {key, cap, lvl}
end
local concurrency = tonumber(ARGV[7])
if concurrency > 0 and redis.call('ZCARD', KEYS[1]) >= concurrency then
  local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'refused', 'max_concurrent_requests', num(tonumber(soonest[2]) - now), ''}
end
local rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local rlvl, tlvl
if rpm > 0 then
  rlvl = level(KEYS[7], rpm, now)
  if rlvl < 1 then return {'refused', 'requests_per_minute', num((1 - rlvl) * 60 / rpm), ''} end
end
if tpm > 0 then
  tlvl = level(KEYS[8], tpm, now)
  if tlvl < tokens then
    return {'refused', 'tokens_per_minute', num((tokens - tlvl) * 60 / tpm), ''}
  end
end
local budget = tonumber(ARGV[8])
if budget > 0 then
  -- The ledger may not have a commit's record yet, and this counter may not
  -- cover the whole month: whichever is more is spent.
  local spent = math.max(tonumber(redis.call('GET', KEYS[9]) or '0'), tonumber(ARGV[9]))
  local held = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + held + tokens > budget then return {'refused', 'monthly_token_budget', '0', ''} end
end
for _, b in ipairs(throttles) do store_level(b[1], b[2], b[3] - 1, now) end
if rpm > 0 then store_level(KEYS[7], rpm, rlvl - 1, now) end
if tpm > 0 then store_level(KEYS[8], tpm, tlvl - tokens, now) end
local lease_ms = tonumber(ARGV[10])
local expires = now + lease_ms / 1000
local wall = ARGV[13]
if wall == '' then wall = num(expires) end
local rid = ARGV[3]
local lease = cjson.encode({t = tokens, r = request_id, k = ARGV[12], c = tpm, w = wall})
redis.call('ZADD', KEYS[1], num(expires), rid)
redis.call('HSET', KEYS[2], rid, lease)
redis.call('HSET', KEYS[3], request_id, rid)
redis.call('INCRBY', KEYS[4], tokens)
redis.call('ZREM', KEYS[5], request_id)
keep({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, lease_ms + 1000)
return {'ok', rid, lease, num(expires)}
"""
)

# KEYS: held leases requests sum; ARGV: now reservation_id lease_ms wall_expires
_RENEW = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now)
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

# KEYS: held leases requests sum tpm month; ARGV: now reservation_id used ('' = release)
_SETTLE = (
    _PRELUDE
    + f"""
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now)
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return false end
local lease = cjson.decode(raw)
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], lease.r) == ARGV[2] then redis.call('HDEL', KEYS[3], lease.r) end
redis.call('DECRBY', KEYS[4], lease.t)
local back = lease.t
if ARGV[3] ~= '' then
  local used = tonumber(ARGV[3])
  back = lease.t - used
  redis.call('INCRBY', KEYS[6], used)
  redis.call('PEXPIRE', KEYS[6], {MONTH_KEEP_MS})
end
if lease.c > 0 then
  -- Gives back what was not used (takes the overage when negative).
  store_level(KEYS[5], lease.c, math.min(lease.c, level(KEYS[5], lease.c, now) + back), now)
end
return {{raw, expires}}
"""
)

# KEYS: held leases requests sum; ARGV: now
_HELD = (
    _PRELUDE
    + """
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_s(ARGV[1]))
return tonumber(redis.call('GET', KEYS[4]) or '0')
"""
)

# KEYS: held leases requests sum pending; ARGV: now request_id
_RUNNING = (
    _PRELUDE
    + """
local now = now_s(ARGV[1])
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now)
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 1 end
local deadline = redis.call('ZSCORE', KEYS[5], ARGV[2])
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
        return [self._key(tenant_id, n) for n in ("held", "leases", "requests", "held_tokens")]

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

    async def settle(self, reservation_id: str, used_tokens: int | None, month: str) -> Held:
        t = _tenant_of(reservation_id)
        if not t:
            raise lapsed(reservation_id)
        reply = await self._call(
            self._settle,
            [*self._leases(t), self._key(t, "tpm"), self._key(t, f"month:{month}")],
            [self._now(), reservation_id, "" if used_tokens is None else used_tokens],
        )
        if reply is None:
            raise lapsed(reservation_id)
        return _held(t, reservation_id, _text(reply[0]), _text(reply[1]))

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
