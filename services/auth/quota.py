"""Quota reservations: reserve a request's estimated tokens against its
tenant's plan before it runs, settle with the actual usage when it ends.

Per-minute limits are token buckets (a minute's allowance, refilled evenly);
the monthly budget counts what was committed this month (the ledger's figure
or the state's own count of commits, whichever is more, so a commit whose
ledger record is still on its way counts) plus what is held. Reservations are
leases: one whose gateway died lapses and gives its tokens back, so nothing
leaks. The state (quota_state.py: this process's memory, or Redis shared by
every auth replica) checks every limit and takes in one atomic step.

A request may carry an idempotency key (its caller's x-request-id), claimed
for the tenant in the store before any limit is checked: a second request
with the key is refused (ABORTED while the first runs, ALREADY_EXISTS once it
was committed or lapsed), never given a reservation. "Runs" is the state's
word (a live lease, or a Reserve under way), so it holds across replicas.
Release frees the key; commit and lapse keep it until the retention period
prunes it. The store keeps the claims, so a restart never forgets them (after
a restart a claimed key whose lease is gone counts as billed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from services.auth.budgets import (
    BudgetCheck,
    Period,
    Rates,
    Usage,
    check_estimate,
    exact,
    ledger_cost,
    price_at,
    soft_of,
    subject,
)
from services.auth.models import IdempotencyClaim
from services.auth.pricing import in_force
from services.auth.quota_state import (
    Ask,
    Held,
    MemoryQuotaState,
    QuotaState,
    Settled,
    Stale,
    Throttle,
    TokenBucket,
)
from services.auth.store import AuthStore
from services.common.errors import (
    AbortedError,
    AlreadyExistsError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

__all__ = [
    "Admission",
    "Held",
    "Quotas",
    "Settled",
    "TokenBucket",
    "Usage",
    "month_start",
    "next_month_start",
]

# Claims older than the retention are pruned at most this often: a sweep is a
# DELETE over an index, cheap but not free on every Reserve.
PRUNE_EVERY_S = 60.0
# Reloads of a tenant's restrictions one Reserve may do when other replicas
# keep changing them; past it the caller retries (UNAVAILABLE).
STALE_RETRIES = 3


class Admission(Protocol):
    """The restrictions in force, as Reserve checks them (restrictions.py)."""

    def admit(self, tenant_id: str, key_id: str) -> list[Throttle]:
        """Raises when a restriction refuses a generation now; else its throttles."""

    def version(self, tenant_id: str) -> str:
        """The tenant's restrictions version this replica has loaded."""

    async def refresh(self, tenant_id: str, version: str) -> None:
        """Reloads from the store: the shared version moved to `version`."""


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
        restrictions: Admission | None = None,
        idempotency_retention_s: float = 24 * 3600.0,
        state: QuotaState | None = None,
    ) -> None:
        self._store = store
        self._retention = timedelta(seconds=idempotency_retention_s)
        self._pruned_at: float | None = None
        self._restrictions = restrictions
        self._lease_s = lease_s
        self._clock = clock
        self._wall = wall
        self._state: QuotaState = state or MemoryQuotaState(clock=clock, wall=wall)

    @property
    def lease_s(self) -> float:
        return self._lease_s

    async def held_tokens(self, tenant_id: str) -> int:
        return await self._state.held_tokens(tenant_id)

    async def reserve(
        self,
        tenant_id: str,
        request_id: str,
        model: str,
        estimated_tokens: int,
        key_id: str = "",
        idempotency_key: str = "",
        *,
        prompt_tokens: int = 0,
        max_completion_tokens: int = 0,
    ) -> Held:
        """`prompt_tokens` and `max_completion_tokens` split the estimate for
        money budgets (budgets.py); without them every token is held at the
        dearest price."""
        check_estimate(estimated_tokens, prompt_tokens, max_completion_tokens)
        tenant = await self._store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        plan = tenant.plan
        if plan.allowed_models and model not in plan.allowed_models:
            raise PermissionDeniedError(f"the plan does not include model {model!r}")
        if plan.tokens_per_minute and estimated_tokens > plan.tokens_per_minute:
            # Name what the caller must shrink: max_tokens cannot help when
            # the prompt (with its tools) alone is past the plan.
            if prompt_tokens >= plan.tokens_per_minute:
                raise InvalidArgumentError(
                    "prompt", "the prompt's tokens alone exceed the plan's tokens per minute"
                )
            raise InvalidArgumentError(
                "max_tokens", "the request's tokens exceed the plan's tokens per minute"
            )
        await self._prune()
        if idempotency_key:
            await self._state.mark_pending(tenant_id, request_id)
            try:
                await self._claim(tenant_id, idempotency_key, request_id)
            except BaseException:
                await self._state.unmark_pending(tenant_id, request_id)
                raise
        ask = Ask(
            tenant_id=tenant_id,
            request_id=request_id,
            tokens=estimated_tokens,
            plan=plan,
            lease_s=self._lease_s,
            idempotency_key=idempotency_key,
            key_id=key_id,
        )
        try:
            priced = await self._money(ask, model, prompt_tokens, max_completion_tokens)
            return await self._take(priced, key_id)
        except BaseException:
            if idempotency_key:
                await self._store.free_idempotency_key(tenant_id, idempotency_key, request_id)
                await self._state.unmark_pending(tenant_id, request_id)
            raise

    async def _take(self, ask: Ask, key_id: str) -> Held:
        """Admits by the restrictions and takes from the state; reloads the
        restrictions and admits again when another replica changed them."""
        for _ in range(STALE_RETRIES):
            throttles: list[Throttle] = []
            version: str | None = None
            if self._restrictions is not None:
                version = self._restrictions.version(ask.tenant_id)
                try:
                    throttles = self._restrictions.admit(ask.tenant_id, key_id)
                except MeshError:
                    # Refused by what this replica loaded: another may have lifted it.
                    current = await self._state.restrictions_version(ask.tenant_id)
                    if current is None or current == version:
                        raise
                    await self._restrictions.refresh(ask.tenant_id, current)
                    continue
            taking = replace(ask, throttles=tuple(throttles), restrictions_version=version)
            if ask.plan.monthly_token_budget:
                wall = self._wall()
                taking = replace(
                    taking,
                    ledger_spent=await self._store.tokens_used_since(
                        ask.tenant_id, month_start(wall)
                    ),
                    month=_month(wall),
                    budget_retry_after_s=(next_month_start(wall) - wall).total_seconds(),
                )
            outcome = await self._state.reserve(taking)
            if not isinstance(outcome, Stale):
                return outcome
            assert self._restrictions is not None  # only a versioned Ask can be stale
            await self._restrictions.refresh(ask.tenant_id, outcome.version)
        raise UnavailableError("the tenant's restrictions keep changing; retry")

    async def _money(self, ask: Ask, model: str, prompt: int, max_completion: int) -> Ask:
        """The ask with its budgets: each limit of the tenant's and the key's,
        with the ledger's figure for its period, and the worst-case cost at
        the price in force now (0 for an unpriced model)."""
        budgets = await self._store.list_budgets(ask.tenant_id, ask.key_id)
        if not budgets:
            return ask
        wall = self._wall()
        since = month_start(wall)
        # One price list per Reserve: the rates now and every limit's ledger cost.
        prices = await self._store.list_prices()
        book = in_force(prices)
        rates = Rates.of(price_at(prices, model, wall))
        checks: list[BudgetCheck] = []
        for budget in budgets:
            for period in Period:
                limit = budget.limit(period)
                if not limit:
                    continue
                monthly = period is Period.MONTHLY
                checks.append(
                    BudgetCheck(
                        subject=subject(budget.key_id, period),
                        scope=budget.key_id,
                        counter=f"{budget.key_id}|{period}"
                        + (f":{_month(wall)}" if monthly else ""),
                        limit=exact(limit),
                        soft=soft_of(limit, budget.soft_percent),
                        ledger_spent=await ledger_cost(
                            self._store,
                            ask.tenant_id,
                            budget.key_id,
                            since if monthly else None,
                            book=book,
                        ),
                        retry_after_s=(next_month_start(wall) - wall).total_seconds()
                        if monthly
                        else 0.0,
                    )
                )
        return replace(
            ask,
            cost=rates.worst_case(ask.tokens, prompt, max_completion),
            rates=rates,
            budgets=tuple(checks),
        )

    async def _claim(self, tenant_id: str, key: str, request_id: str) -> None:
        claim = await self._store.claim_idempotency_key(
            IdempotencyClaim(tenant_id, key, request_id, self._wall())
        )
        if claim.request_id == request_id:
            return
        holder = {"request_id": claim.request_id}
        if await self._state.running(tenant_id, claim.request_id):
            raise AbortedError("a request with this x-request-id is running", metadata=holder)
        raise AlreadyExistsError(
            f"a request with this x-request-id ran as {claim.request_id}", metadata=holder
        )

    async def _prune(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        await self._store.prune_idempotency_keys(self._wall() - self._retention)

    async def renew(self, reservation_id: str) -> Held:
        """Extends the lease by a lease period from now."""
        return await self._state.renew(reservation_id, self._lease_s)

    async def commit(self, reservation_id: str, used_tokens: int) -> int:
        """Settles with the actual usage; returns the tokens given back. A
        request that ran past its estimate is charged the overage: the bucket
        may go below zero, and the tenant's next requests wait it out."""
        settled = await self.commit_usage(reservation_id, Usage(used_tokens))
        return max(0, settled.held.tokens - used_tokens)

    async def commit_usage(self, reservation_id: str, used: Usage) -> Settled:
        """Settles with the actual usage, charging its exact cost to the
        lease's budgets; says what it charged and which soft thresholds it
        crossed."""
        used.check()
        return await self._state.settle(reservation_id, used, _month(self._wall()))

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
            held = (await self._state.settle(reservation_id, None, _month(self._wall()))).held
        except NotFoundError:
            if tenant_id and request_id and idempotency_key:
                await self._store.free_idempotency_key(tenant_id, idempotency_key, request_id)
            raise
        if held.idempotency_key:
            await self._store.free_idempotency_key(
                held.tenant_id, held.idempotency_key, held.request_id
            )


def _month(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"
