"""Where quota state lives: per-minute buckets, held leases, restriction
throttles and the month's committed tokens, behind one small protocol.

Every check-and-take is one call on the state, atomic where the state lives:
in this process (`MemoryQuotaState`, one auth replica, the embedded default)
or in Redis (`services.auth.redis_quota`, any number of replicas). The caller
(`Quotas`) brings what the state cannot know: the plan, the ledger's figure
for the month, the restrictions' throttles and the version of the
restrictions it admitted them by."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from services.auth.budgets import BudgetCheck, Crossing, Rates, Usage
from services.auth.models import Plan
from services.common.errors import NotFoundError, ResourceExhaustedError

MINUTE_S = 60.0
# An unpriced model's rates, and a lease's without budgets: costs nothing.
NO_RATES = Rates()
# A claimed idempotency key whose Reserve has not finished reads as running
# this long at most: a claim, a ledger read and one state call take far less;
# a crashed replica's claim stops reading as running after it.
PENDING_S = 10.0


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
    key_id: str = ""
    # Money held against the budgets, exact (budgets.py), and what a commit
    # charges: at these prices, to these budgets.
    cost: int = 0
    rates: Rates = NO_RATES
    charges: tuple[BudgetCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Settled:
    """A settled lease: what the commit charged the budgets (exact; 0 for a
    release) and the soft thresholds it crossed."""

    held: Held
    cost: int = 0
    crossings: tuple[Crossing, ...] = ()


@dataclass(frozen=True, slots=True)
class Throttle:
    """An active throttle restriction a Reserve must take one request from."""

    restriction_id: str
    requests_per_minute: int
    message: str

    def refusal(self, wait_s: float) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            self.message, retry_after_s=wait_s, subject=f"restriction:{self.restriction_id}"
        )


@dataclass(frozen=True, slots=True)
class Ask:
    """One Reserve as the state sees it."""

    tenant_id: str
    request_id: str
    tokens: int
    plan: Plan
    lease_s: float
    # Tokens the ledger holds for this month, read by the caller just before.
    ledger_spent: int = 0
    # The month the budget counts (YYYY-MM) and when to come back.
    month: str = ""
    budget_retry_after_s: float = 0.0
    throttles: tuple[Throttle, ...] = ()
    # The tenant's restrictions version the throttles were admitted by ("" before
    # any change was announced; None: the caller checks no restrictions).
    restrictions_version: str | None = None
    idempotency_key: str = ""
    key_id: str = ""
    # Money budgets: the worst-case cost held (exact), the prices a commit
    # charges at, and every budget limit of the tenant and the key.
    cost: int = 0
    rates: Rates = NO_RATES
    budgets: tuple[BudgetCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Stale:
    """The tenant's restrictions changed on another replica: reload, admit again."""

    version: str


class QuotaState(Protocol):
    async def reserve(self, ask: Ask) -> Held | Stale:
        """The request's lease (the same one for a retried request id), or
        ResourceExhaustedError for the first limit it would pass; all or nothing."""

    async def renew(self, reservation_id: str, lease_s: float) -> Held: ...

    async def settle(self, reservation_id: str, used: Usage | None, month: str) -> Settled:
        """Ends the lease: a commit of `used` (its tokens, and its cost at the
        lease's prices to the lease's budgets), or a release (None) giving it
        all back."""

    async def held_tokens(self, tenant_id: str) -> int: ...

    async def mark_pending(self, tenant_id: str, request_id: str) -> None:
        """The request is claiming an idempotency key: it reads as running
        until its Reserve ends (or PENDING_S)."""

    async def unmark_pending(self, tenant_id: str, request_id: str) -> None: ...

    async def running(self, tenant_id: str, request_id: str) -> bool:
        """Whether the request holds a live lease or is still reserving."""

    async def restrictions_changed(self, tenant_id: str) -> None:
        """Tells every replica the tenant's restrictions changed."""

    async def restrictions_version(self, tenant_id: str) -> str | None:
        """The tenant's shared restrictions version; None where nothing is shared."""


def concurrency_refusal(wait_s: float) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "too many requests running at once",
        # A running request usually ends well before its lease; come back soon.
        retry_after_s=min(1.0, max(0.0, wait_s)),
        subject="max_concurrent_requests",
    )


def rate_refusal(wait_s: float) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "requests per minute exceeded", retry_after_s=wait_s, subject="requests_per_minute"
    )


def tokens_refusal(wait_s: float) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "tokens per minute exceeded", retry_after_s=wait_s, subject="tokens_per_minute"
    )


def budget_refusal(retry_after_s: float) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "monthly token budget spent",
        retry_after_s=retry_after_s,
        subject="monthly_token_budget",
    )


def lapsed(reservation_id: str) -> NotFoundError:
    return NotFoundError(f"no reservation {reservation_id!r} (settled or lapsed)")


@dataclass
class _Tenant:
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    held: dict[str, Held] = field(default_factory=dict)
    throttles: dict[str, TokenBucket] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    # Tokens committed per month (YYYY-MM) through this process.
    committed: dict[str, int] = field(default_factory=dict)
    # Money charged per budget counter (BudgetCheck.counter), exact, and the
    # counters whose soft threshold has raised its alert.
    spent: dict[str, int] = field(default_factory=dict)
    alerted: set[str] = field(default_factory=set)


class MemoryQuotaState:
    """This process is the authority: one auth replica. A restart forgets the
    buckets and leases (erring toward the tenant), never the ledger. Each
    method runs without awaiting, so it is atomic on the event loop."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._tenants: dict[str, _Tenant] = {}
        self._by_id: dict[str, Held] = {}

    async def reserve(self, ask: Ask) -> Held:
        state = self._tenants.setdefault(ask.tenant_id, _Tenant())
        now = self._clock()
        self._expire(state, now)
        state.pending.pop(ask.request_id, None)
        for held in state.held.values():
            if held.request_id == ask.request_id:
                return held  # a retried Reserve: same lease
        throttles = [self._throttle(state, t, now) for t in ask.throttles]
        self._check(state, ask, now)
        for bucket in throttles:
            bucket.level -= 1
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= ask.tokens
        held = Held(
            reservation_id=uuid.uuid4().hex,
            tenant_id=ask.tenant_id,
            request_id=ask.request_id,
            tokens=ask.tokens,
            expires=now + ask.lease_s,
            expire_time=self._wall() + timedelta(seconds=ask.lease_s),
            idempotency_key=ask.idempotency_key,
            key_id=ask.key_id,
            cost=ask.cost,
            rates=ask.rates,
            charges=ask.budgets,
        )
        state.held[held.reservation_id] = held
        self._by_id[held.reservation_id] = held
        return held

    def _throttle(self, state: _Tenant, throttle: Throttle, now: float) -> TokenBucket:
        rate = throttle.requests_per_minute
        bucket = state.throttles.get(throttle.restriction_id)
        if bucket is None:
            bucket = state.throttles[throttle.restriction_id] = TokenBucket(rate, rate, now)
        bucket.refill(now)
        if (wait := bucket.wait_for(1)) > 0:
            raise throttle.refusal(wait)
        return bucket

    def _check(self, state: _Tenant, ask: Ask, now: float) -> None:
        """Raises for the first limit the request would pass; takes nothing."""
        plan = ask.plan
        if plan.max_concurrent_requests and len(state.held) >= plan.max_concurrent_requests:
            raise concurrency_refusal(min(h.expires for h in state.held.values()) - now)
        state.requests = _bucket(state.requests, plan.requests_per_minute, now)
        if state.requests is not None and (wait := state.requests.wait_for(1)) > 0:
            raise rate_refusal(wait)
        state.tokens = _bucket(state.tokens, plan.tokens_per_minute, now)
        if state.tokens is not None and (wait := state.tokens.wait_for(ask.tokens)) > 0:
            raise tokens_refusal(wait)
        if plan.monthly_token_budget:
            spent = max(state.committed.get(ask.month, 0), ask.ledger_spent)
            held_now = sum(h.tokens for h in state.held.values())
            if spent + held_now + ask.tokens > plan.monthly_token_budget:
                raise budget_refusal(ask.budget_retry_after_s)
        for budget in ask.budgets:
            spent = max(state.spent.get(budget.counter, 0), budget.ledger_spent)
            held_cost = sum(
                h.cost for h in state.held.values() if not budget.scope or h.key_id == budget.scope
            )
            if spent + held_cost + ask.cost > budget.limit:
                raise budget.refusal()

    async def renew(self, reservation_id: str, lease_s: float) -> Held:
        held = self._by_id.get(reservation_id)
        now = self._clock()
        if held is None or held.expires <= now:
            raise lapsed(reservation_id)
        renewed = replace(
            held,
            expires=now + lease_s,
            expire_time=self._wall() + timedelta(seconds=lease_s),
        )
        self._by_id[reservation_id] = renewed
        self._tenants[held.tenant_id].held[reservation_id] = renewed
        return renewed

    async def settle(self, reservation_id: str, used: Usage | None, month: str) -> Settled:
        held = self._by_id.pop(reservation_id, None)
        if held is None:
            raise lapsed(reservation_id)
        state = self._tenants[held.tenant_id]
        state.held.pop(reservation_id, None)
        back = held.tokens if used is None else held.tokens - used.tokens
        if state.tokens is not None:
            state.tokens.level = min(state.tokens.capacity, state.tokens.level + back)
        if used is None:
            return Settled(held)
        state.committed[month] = state.committed.get(month, 0) + used.tokens
        cost = held.rates.cost(used)
        crossings: list[Crossing] = []
        for charge in held.charges if cost else ():
            before = max(state.spent.get(charge.counter, 0), charge.ledger_spent)
            state.spent[charge.counter] = state.spent.get(charge.counter, 0) + cost
            after = before + cost
            if (
                charge.soft
                and before < charge.soft <= after
                and charge.counter not in state.alerted
            ):
                state.alerted.add(charge.counter)
                crossings.append(
                    Crossing(
                        charge.subject,
                        held.tenant_id,
                        charge.scope,
                        after,
                        charge.soft,
                        charge.limit,
                    )
                )
        return Settled(held, cost, tuple(crossings))

    async def held_tokens(self, tenant_id: str) -> int:
        state = self._tenants.get(tenant_id)
        return sum(h.tokens for h in state.held.values()) if state else 0

    async def mark_pending(self, tenant_id: str, request_id: str) -> None:
        state = self._tenants.setdefault(tenant_id, _Tenant())
        state.pending[request_id] = self._clock() + PENDING_S

    async def unmark_pending(self, tenant_id: str, request_id: str) -> None:
        state = self._tenants.get(tenant_id)
        if state is not None:
            state.pending.pop(request_id, None)

    async def running(self, tenant_id: str, request_id: str) -> bool:
        state = self._tenants.get(tenant_id)
        if state is None:
            return False
        now = self._clock()
        self._expire(state, now)
        if state.pending.get(request_id, now) > now:
            return True
        return any(h.request_id == request_id for h in state.held.values())

    async def restrictions_changed(self, tenant_id: str) -> None:
        """Nothing to tell: this process is the only replica."""

    async def restrictions_version(self, tenant_id: str) -> str | None:
        return None

    def _expire(self, state: _Tenant, now: float) -> None:
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
