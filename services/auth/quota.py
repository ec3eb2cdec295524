"""Quota reservations: reserve a request's estimated tokens against its
tenant's plan before it runs, settle with the actual usage when it ends.

Per-minute limits are token buckets (a minute's allowance, refilled evenly);
the monthly budget counts the ledger since the month began plus what is held.
Reservations are leases: one whose gateway died lapses and gives its tokens
back, so nothing leaks. All checks pass before anything is taken, and one
lock per tenant makes check-then-take atomic across concurrent callers.

A request may carry an idempotency key (its caller's x-request-id), claimed
for the tenant in the store before any limit is checked: a second request
with the key is refused (ABORTED while the first runs, ALREADY_EXISTS once it
was committed or lapsed), never given a reservation. Release frees the key;
commit and lapse keep it until the retention period prunes it.

State is in this process's memory: a restart forgets the per-minute buckets
and held leases (erring toward the tenant), never the ledger or the claimed
keys (after a restart a claimed key whose lease is gone counts as billed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from services.auth.models import IdempotencyClaim, Plan
from services.auth.store import AuthStore
from services.common.errors import (
    AbortedError,
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)

MINUTE_S = 60.0
# Claims older than the retention are pruned at most this often: a sweep is a
# DELETE over an index, cheap but not free on every Reserve.
PRUNE_EVERY_S = 60.0


@dataclass
class TokenBucket:
    """`capacity` per minute, refilled continuously."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(
            self.capacity, self.level + (now - self.updated) * self.capacity / MINUTE_S
        )
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is there (0 if it is)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * MINUTE_S / self.capacity


@dataclass(frozen=True, slots=True)
class Held:
    reservation_id: str
    tenant_id: str
    request_id: str
    tokens: int
    expires: float
    expire_time: datetime
    idempotency_key: str = ""


@dataclass
class _TenantState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    held: dict[str, Held] = field(default_factory=dict)


# Restrictions on (tenant, key): raises to refuse, else throttle buckets to take from.
Admission = Callable[[str, str], list[TokenBucket]]


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(at: datetime) -> datetime:
    start = month_start(at)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


class Quotas:
    def __init__(
        self,
        store: AuthStore,
        *,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        admit: Admission = lambda tenant_id, key_id: [],
        idempotency_retention_s: float = 24 * 3600.0,
    ) -> None:
        self._store = store
        self._retention = timedelta(seconds=idempotency_retention_s)
        self._pruned_at: float | None = None
        self._admit = admit
        self._lease_s = lease_s
        self._clock = clock
        self._wall = wall
        self._tenants: dict[str, _TenantState] = {}
        self._by_id: dict[str, Held] = {}

    @property
    def lease_s(self) -> float:
        return self._lease_s

    def held_tokens(self, tenant_id: str) -> int:
        state = self._tenants.get(tenant_id)
        return sum(h.tokens for h in state.held.values()) if state else 0

    async def reserve(
        self,
        tenant_id: str,
        request_id: str,
        model: str,
        estimated_tokens: int,
        key_id: str = "",
        idempotency_key: str = "",
    ) -> Held:
        tenant = await self._store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        plan = tenant.plan
        if plan.allowed_models and model not in plan.allowed_models:
            raise PermissionDeniedError(f"the plan does not include model {model!r}")
        if plan.tokens_per_minute and estimated_tokens > plan.tokens_per_minute:
            raise InvalidArgumentError(
                "max_tokens", "the request's tokens exceed the plan's tokens per minute"
            )
        await self._prune()
        state = self._tenants.setdefault(tenant_id, _TenantState())
        async with state.lock:
            now = self._clock()
            self._expire(state, now)
            for held in state.held.values():
                if held.request_id == request_id:
                    return held  # a retried Reserve: same lease
            if idempotency_key:
                await self._claim(state, tenant_id, idempotency_key, request_id)
            try:
                return await self._take(
                    state, plan, tenant_id, request_id, key_id, estimated_tokens, now,
                    idempotency_key,
                )  # fmt: skip
            except BaseException:
                if idempotency_key:
                    await self._store.free_idempotency_key(tenant_id, idempotency_key, request_id)
                raise

    async def _claim(self, state: _TenantState, tenant_id: str, key: str, request_id: str) -> None:
        claim = await self._store.claim_idempotency_key(
            IdempotencyClaim(tenant_id, key, request_id, self._wall())
        )
        if claim.request_id == request_id:
            return
        holder = {"request_id": claim.request_id}
        if any(h.request_id == claim.request_id for h in state.held.values()):
            raise AbortedError("a request with this x-request-id is running", metadata=holder)
        raise AlreadyExistsError(
            f"a request with this x-request-id ran as {claim.request_id}", metadata=holder
        )

    async def _take(
        self,
        state: _TenantState,
        plan: Plan,
        tenant_id: str,
        request_id: str,
        key_id: str,
        estimated_tokens: int,
        now: float,
        idempotency_key: str,
    ) -> Held:
        throttles = self._admit(tenant_id, key_id)
        self._check(state, plan, estimated_tokens, now)
        if plan.monthly_token_budget:
            wall = self._wall()
            used = await self._store.tokens_used_since(tenant_id, month_start(wall))
            held_now = sum(h.tokens for h in state.held.values())
            if used + held_now + estimated_tokens > plan.monthly_token_budget:
                raise ResourceExhaustedError(
                    "monthly token budget spent",
                    retry_after_s=(next_month_start(wall) - wall).total_seconds(),
                    subject="monthly_token_budget",
                )
        for bucket in throttles:
            bucket.level -= 1
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= estimated_tokens
        held = Held(
            reservation_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            request_id=request_id,
            tokens=estimated_tokens,
            expires=now + self._lease_s,
            expire_time=self._wall() + timedelta(seconds=self._lease_s),
            idempotency_key=idempotency_key,
        )
        state.held[held.reservation_id] = held
        self._by_id[held.reservation_id] = held
        return held

    async def _prune(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        await self._store.prune_idempotency_keys(self._wall() - self._retention)

    def _check(self, state: _TenantState, plan: Plan, estimated: int, now: float) -> None:
        """Raises for the first limit the request would pass; takes nothing."""
        if plan.max_concurrent_requests and len(state.held) >= plan.max_concurrent_requests:
            soonest = min(h.expires for h in state.held.values())
            raise ResourceExhaustedError(
                "too many requests running at once",
                # A running request usually ends well before its lease; come back soon.
                retry_after_s=min(1.0, max(0.0, soonest - now)),
                subject="max_concurrent_requests",
            )
        state.requests = _bucket(state.requests, plan.requests_per_minute, now)
        if state.requests is not None and (wait := state.requests.wait_for(1)) > 0:
            raise ResourceExhaustedError(
                "requests per minute exceeded", retry_after_s=wait, subject="requests_per_minute"
            )
        state.tokens = _bucket(state.tokens, plan.tokens_per_minute, now)
        if state.tokens is not None and (wait := state.tokens.wait_for(estimated)) > 0:
            raise ResourceExhaustedError(
                "tokens per minute exceeded", retry_after_s=wait, subject="tokens_per_minute"
            )

    def renew(self, reservation_id: str) -> Held:
        """Extends the lease by a lease period from now."""
        held = self._by_id.get(reservation_id)
        now = self._clock()
        if held is None or held.expires <= now:
            raise NotFoundError(f"no reservation {reservation_id!r} (settled or lapsed)")
        renewed = replace(
            held,
            expires=now + self._lease_s,
            expire_time=self._wall() + timedelta(seconds=self._lease_s),
        )
        self._by_id[reservation_id] = renewed
        self._tenants[held.tenant_id].held[reservation_id] = renewed
        return renewed

    def commit(self, reservation_id: str, used_tokens: int) -> int:
        """Settles with the actual usage; returns the tokens given back. A
        request that ran past its estimate is charged the overage: the bucket
        may go below zero, and the tenant's next requests wait it out."""
        held = self._pop(reservation_id)
        returned = max(0, held.tokens - used_tokens)
        self._give_back(held.tenant_id, returned - max(0, used_tokens - held.tokens))
        return returned

    async def release(
        self,
        reservation_id: str,
        *,
        tenant_id: str = "",
        request_id: str = "",
        idempotency_key: str = "",
    ) -> None:
        """Gives the reservation back whole, and its idempotency key: nothing ran.
        With the reservation gone (a restart forgot it, or it lapsed), the key
        named is still freed if `request_id` holds it; then NOT_FOUND."""
        try:
            held = self._pop(reservation_id)
        except NotFoundError:
            if tenant_id and request_id and idempotency_key:
                await self._store.free_idempotency_key(tenant_id, idempotency_key, request_id)
            raise
        self._give_back(held.tenant_id, held.tokens)
        if held.idempotency_key:
            await self._store.free_idempotency_key(
                held.tenant_id, held.idempotency_key, held.request_id
            )

    def _pop(self, reservation_id: str) -> Held:
        held = self._by_id.pop(reservation_id, None)
        if held is None:
            raise NotFoundError(f"no reservation {reservation_id!r} (settled or lapsed)")
        self._tenants[held.tenant_id].held.pop(reservation_id, None)
        return held

    def _give_back(self, tenant_id: str, tokens: int) -> None:
        """Returns `tokens` to the tenant's per-minute bucket (takes them when negative)."""
        bucket = self._tenants[tenant_id].tokens
        if bucket is not None:
            bucket.level = min(bucket.capacity, bucket.level + tokens)

    def _expire(self, state: _TenantState, now: float) -> None:
        for held in [h for h in state.held.values() if h.expires <= now]:
            state.held.pop(held.reservation_id)
            self._by_id.pop(held.reservation_id, None)
            # A lapsed lease's request may have run: its tokens stay spent this minute.


def _bucket(bucket: TokenBucket | None, per_minute: int, now: float) -> TokenBucket | None:
    if not per_minute:
        return None
    if bucket is None or bucket.capacity != per_minute:
        bucket = TokenBucket(capacity=per_minute, level=per_minute, updated=now)
    bucket.refill(now)
    return bucket
