"""Quota reservations against plans, on a real store, with a controlled clock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from services.auth.core import AuthCore, MeteringCore
from services.auth.models import Plan, RequestStatus, UsageRecord
from services.auth.quota import Quotas
from services.auth.store import AuthStore
from services.common.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def tenant_with(auth_core: AuthCore, plan: Plan) -> str:
    tenant = await auth_core.create_tenant(f"t-{random.randrange(10**9)}")
    await auth_core.set_plan(tenant.tenant_id, plan, None)
    return tenant.tenant_id


def quotas(store: AuthStore, clock: Clock, lease_s: float = 600.0) -> Quotas:
    return Quotas(store, lease_s=lease_s, clock=clock, wall=lambda: NOW)


async def test_requests_per_minute(auth_core: AuthCore, store: AuthStore) -> None:
    clock = Clock()
    q = quotas(store, clock)
    tenant = await tenant_with(auth_core, Plan(requests_per_minute=2))
    await q.reserve(tenant, "r1", "m", 10)
    await q.reserve(tenant, "r2", "m", 10)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r3", "m", 10)
    assert info.value.subject == "requests_per_minute"
    assert info.value.retry_after_s == pytest.approx(30.0)
    clock.now += 30.0
    await q.reserve(tenant, "r3", "m", 10)


async def test_tokens_per_minute_and_commit_returns_the_rest(
    auth_core: AuthCore, store: AuthStore
) -> None:
    clock = Clock()
    q = quotas(store, clock)
    tenant = await tenant_with(auth_core, Plan(tokens_per_minute=100))
    first = await q.reserve(tenant, "r1", "m", 60)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r2", "m", 60)
    assert info.value.subject == "tokens_per_minute"
    assert info.value.retry_after_s == pytest.approx(12.0)  # 20 tokens at 100/min
    assert q.commit(first.reservation_id, used_tokens=10) == 50
    await q.reserve(tenant, "r2", "m", 60)
    with pytest.raises(InvalidArgumentError) as too_big:
        await q.reserve(tenant, "r3", "m", 101)
    assert too_big.value.field == "max_tokens"


async def test_concurrency_and_leases(auth_core: AuthCore, store: AuthStore) -> None:
    clock = Clock()
    q = quotas(store, clock, lease_s=10.0)
    tenant = await tenant_with(auth_core, Plan(max_concurrent_requests=1))
    held = await q.reserve(tenant, "r1", "m", 5)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r2", "m", 5)
    assert info.value.subject == "max_concurrent_requests"
    q.release(held.reservation_id)
    second = await q.reserve(tenant, "r2", "m", 5)
    # Its gateway dies: the lease lapses and the slot comes back by itself.
    clock.now += 11.0
    await q.reserve(tenant, "r3", "m", 5)
    assert q.held_tokens(tenant) == 5
    with pytest.raises(Exception, match="lapsed"):
        q.commit(second.reservation_id, 5)


async def test_monthly_budget_counts_the_ledger_and_what_is_held(
    auth_core: AuthCore, metering_core: MeteringCore, store: AuthStore
) -> None:
    q = quotas(store, Clock())
    tenant = await tenant_with(auth_core, Plan(monthly_token_budget=100))
    await metering_core.record_usage(
        UsageRecord(
            "old",
            tenant,
            "k",
            "m",
            30,
            40,
            NOW - timedelta(days=40),
            NOW - timedelta(days=40),
            RequestStatus.COMPLETED,
        )
    )
    await metering_core.record_usage(
        UsageRecord(
            "new",
            tenant,
            "k",
            "m",
            20,
            30,
            NOW - timedelta(hours=1),
            NOW - timedelta(hours=1),
            RequestStatus.COMPLETED,
        )
    )
    await q.reserve(tenant, "r1", "m", 30)  # 50 spent this month + 30 held
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r2", "m", 21)
    assert info.value.subject == "monthly_token_budget"
    assert info.value.retry_after_s == (datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()
    await q.reserve(tenant, "r2", "m", 20)


async def test_models_outside_the_plan_are_refused(auth_core: AuthCore, store: AuthStore) -> None:
    q = quotas(store, Clock())
    tenant = await tenant_with(auth_core, Plan(allowed_models=("small",)))
    await q.reserve(tenant, "r1", "small", 5)
    with pytest.raises(PermissionDeniedError):
        await q.reserve(tenant, "r2", "large", 5)


async def test_a_retried_reserve_returns_the_same_lease(
    auth_core: AuthCore, store: AuthStore
) -> None:
    q = quotas(store, Clock())
    tenant = await tenant_with(auth_core, Plan(tokens_per_minute=100))
    first = await q.reserve(tenant, "same", "m", 60)
    again = await q.reserve(tenant, "same", "m", 60)
    assert again == first
    assert q.held_tokens(tenant) == 60


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_reservations_never_overspend(
    auth_core: AuthCore, store: AuthStore, seed: int
) -> None:
    rng = random.Random(seed)
    budget, tpm = 5_000, 3_000
    q = quotas(store, Clock())
    tenant = await tenant_with(auth_core, Plan(monthly_token_budget=budget, tokens_per_minute=tpm))
    sizes = [rng.randrange(1, 400) for _ in range(200)]

    async def one(i: int, size: int) -> int:
        try:
            await q.reserve(tenant, f"r{i}", "m", size)
        except ResourceExhaustedError:
            return 0
        return size

    granted = await asyncio.gather(*(one(i, s) for i, s in enumerate(sizes)))
    assert 0 < sum(granted) <= min(budget, tpm)
    assert q.held_tokens(tenant) == sum(granted)
