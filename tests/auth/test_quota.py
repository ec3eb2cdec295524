"""Quota reservations against plans, on a real store, with a controlled clock,
with the quota state in this process and in a real Redis."""

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
    AbortedError,
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from tests.auth.conftest import QuotaStates

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


def quotas(store: AuthStore, clock: Clock, states: QuotaStates, lease_s: float = 600.0) -> Quotas:
    return Quotas(store, lease_s=lease_s, clock=clock, wall=now_wall, state=states(clock, now_wall))


def now_wall() -> datetime:
    return NOW


async def test_requests_per_minute(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states)
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
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states)
    tenant = await tenant_with(auth_core, Plan(tokens_per_minute=100))
    first = await q.reserve(tenant, "r1", "m", 60)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r2", "m", 60)
    assert info.value.subject == "tokens_per_minute"
    assert info.value.retry_after_s == pytest.approx(12.0)  # 20 tokens at 100/min
    assert await q.commit(first.reservation_id, used_tokens=10) == 50
    await q.reserve(tenant, "r2", "m", 60)
    with pytest.raises(InvalidArgumentError) as too_big:
        await q.reserve(tenant, "r3", "m", 101)
    assert too_big.value.field == "max_tokens"
    # A prompt past the plan by itself: shrinking max_tokens cannot help.
    with pytest.raises(InvalidArgumentError) as prompt_too_big:
        await q.reserve(tenant, "r4", "m", 150, prompt_tokens=120, max_completion_tokens=30)
    assert prompt_too_big.value.field == "prompt"


async def test_concurrency_and_leases(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states, lease_s=10.0)
    tenant = await tenant_with(auth_core, Plan(max_concurrent_requests=1))
    held = await q.reserve(tenant, "r1", "m", 5)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r2", "m", 5)
    assert info.value.subject == "max_concurrent_requests"
    await q.release(held.reservation_id)
    second = await q.reserve(tenant, "r2", "m", 5)
    # Its gateway dies: the lease lapses and the slot comes back by itself.
    clock.now += 11.0
    await q.reserve(tenant, "r3", "m", 5)
    assert await q.held_tokens(tenant) == 5
    with pytest.raises(Exception, match="lapsed"):
        await q.commit(second.reservation_id, 5)


async def test_monthly_budget_counts_the_ledger_and_what_is_held(
    auth_core: AuthCore, metering_core: MeteringCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
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


async def test_models_outside_the_plan_are_refused(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
    tenant = await tenant_with(auth_core, Plan(allowed_models=("small",)))
    await q.reserve(tenant, "r1", "small", 5)
    with pytest.raises(PermissionDeniedError):
        await q.reserve(tenant, "r2", "large", 5)


async def test_a_retried_reserve_returns_the_same_lease(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
    tenant = await tenant_with(auth_core, Plan(tokens_per_minute=100))
    first = await q.reserve(tenant, "same", "m", 60)
    again = await q.reserve(tenant, "same", "m", 60)
    assert again == first
    assert await q.held_tokens(tenant) == 60


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_reservations_never_overspend(
    auth_core: AuthCore, store: AuthStore, seed: int, quota_states: QuotaStates
) -> None:
    rng = random.Random(seed)
    budget, tpm = 5_000, 3_000
    q = quotas(store, Clock(), quota_states)
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
    assert await q.held_tokens(tenant) == sum(granted)


async def test_an_idempotency_key_is_refused_while_running_and_after_it_was_billed(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
    tenant = await tenant_with(auth_core, Plan())
    first = await q.reserve(tenant, "mesh-1", "m", 5, idempotency_key="order-7")
    with pytest.raises(AbortedError) as running:
        await q.reserve(tenant, "mesh-2", "m", 5, idempotency_key="order-7")
    assert running.value.metadata["request_id"] == "mesh-1"
    assert await q.held_tokens(tenant) == 5  # the duplicate holds nothing
    await q.commit(first.reservation_id, 5)
    with pytest.raises(AlreadyExistsError) as billed:
        await q.reserve(tenant, "mesh-3", "m", 5, idempotency_key="order-7")
    assert billed.value.metadata["request_id"] == "mesh-1"
    assert "mesh-1" in billed.value.message


async def test_a_released_or_refused_request_frees_its_key(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states)
    tenant = await tenant_with(auth_core, Plan(requests_per_minute=1))
    shed = await q.reserve(tenant, "mesh-1", "m", 5, idempotency_key="k")
    await q.release(shed.reservation_id)  # refused downstream: nothing ran
    with pytest.raises(ResourceExhaustedError):
        await q.reserve(tenant, "mesh-2", "m", 5, idempotency_key="k")  # over the rate
    clock.now += 60.0
    retried = await q.reserve(tenant, "mesh-3", "m", 5, idempotency_key="k")
    assert retried.request_id == "mesh-3"


async def test_a_lapsed_lease_keeps_its_key_billed(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states, lease_s=10.0)
    tenant = await tenant_with(auth_core, Plan())
    await q.reserve(tenant, "mesh-1", "m", 5, idempotency_key="k")
    clock.now += 11.0  # its gateway died mid-stream: what it streamed is billed
    with pytest.raises(AlreadyExistsError):
        await q.reserve(tenant, "mesh-2", "m", 5, idempotency_key="k")


async def test_keys_of_different_tenants_never_collide(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
    one, two = await tenant_with(auth_core, Plan()), await tenant_with(auth_core, Plan())
    await q.reserve(one, "mesh-1", "m", 5, idempotency_key="same")
    await q.reserve(two, "mesh-2", "m", 5, idempotency_key="same")
    assert await q.held_tokens(one) == await q.held_tokens(two) == 5


async def test_concurrent_duplicates_get_one_reservation(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    q = quotas(store, Clock(), quota_states)
    tenant = await tenant_with(auth_core, Plan())
    outcomes = await asyncio.gather(
        *(q.reserve(tenant, f"mesh-{i}", "m", 5, idempotency_key="k") for i in range(6)),
        return_exceptions=True,
    )
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(granted) == 1
    assert all(isinstance(o, AbortedError) for o in outcomes if o not in granted)


async def test_a_claim_survives_a_restart_and_is_pruned_after_the_retention(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    tenant = await tenant_with(auth_core, Plan())
    wall = [NOW]

    def restarted() -> Quotas:
        """Auth restarted: the quota state is lost, the store is not."""
        quota_states.forget()
        clock = Clock()
        return Quotas(
            store, clock=clock, wall=lambda: wall[0], state=quota_states(clock, lambda: wall[0])
        )

    before = restarted()
    held = await before.reserve(tenant, "mesh-1", "m", 5, idempotency_key="k")
    await before.commit(held.reservation_id, 5)
    after = restarted()  # auth restarted
    with pytest.raises(AlreadyExistsError):
        await after.reserve(tenant, "mesh-2", "m", 5, idempotency_key="k")
    wall[0] += timedelta(hours=25)
    later = restarted()
    await later.reserve(tenant, "mesh-3", "m", 5, idempotency_key="k")


async def test_a_release_after_a_restart_still_frees_the_key_of_a_request_that_never_ran(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    tenant = await tenant_with(auth_core, Plan())

    def restarted() -> Quotas:
        quota_states.forget()
        clock = Clock()
        return Quotas(store, clock=clock, wall=lambda: NOW, state=quota_states(clock, lambda: NOW))

    before = restarted()
    held = await before.reserve(tenant, "mesh-1", "m", 5, idempotency_key="k")
    after = restarted()  # auth restarted: lease forgotten
    with pytest.raises(NotFoundError):
        await after.release(
            held.reservation_id, tenant_id=tenant, request_id="mesh-1", idempotency_key="k"
        )
    # Nothing ran under the key, so a retry with it runs.
    await after.reserve(tenant, "mesh-2", "m", 5, idempotency_key="k")
    # A release naming another request's key frees nothing.
    with pytest.raises(NotFoundError):
        await after.release("gone", tenant_id=tenant, request_id="mesh-9", idempotency_key="k")
    with pytest.raises(AbortedError):
        await after.reserve(tenant, "mesh-3", "m", 5, idempotency_key="k")


async def test_a_request_past_its_estimate_is_charged_what_it_used(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states)
    tenant = await tenant_with(auth_core, Plan(tokens_per_minute=100))
    held = await q.reserve(tenant, "r1", "m", 10)
    assert await q.commit(held.reservation_id, used_tokens=70) == 0  # 60 over its estimate
    # 100 - 70 used: 30 left, not the 90 the estimate alone would leave.
    await q.reserve(tenant, "r2", "m", 30)
    with pytest.raises(ResourceExhaustedError) as info:
        await q.reserve(tenant, "r3", "m", 1)
    assert info.value.subject == "tokens_per_minute"


async def test_a_renewed_lease_keeps_its_slot_and_an_unrenewed_one_lapses(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    clock = Clock()
    q = quotas(store, clock, quota_states, lease_s=30.0)
    tenant = await tenant_with(auth_core, Plan(max_concurrent_requests=1))
    held = await q.reserve(tenant, "r1", "m", 5)
    for _ in range(5):  # a stream running five leases long, renewed every third of one
        clock.now += 10.0
        await q.renew(held.reservation_id)
        with pytest.raises(ResourceExhaustedError):
            await q.reserve(tenant, "r2", "m", 5)
    clock.now += 30.0  # its gateway died: no more renewals
    await q.reserve(tenant, "r2", "m", 5)
    with pytest.raises(NotFoundError):
        await q.renew(held.reservation_id)
