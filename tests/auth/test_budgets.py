"""Money budgets on a real store, with the quota state in this process and in
a real Redis: holds, exact charges, refusals naming the budget, soft
thresholds, key budgets apart from the tenant's, prices changed mid-month."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from services.auth.billing import BillingCore, Budgets
from services.auth.budgets import MAX_LIMIT_MICROS, Budget, ledger_cost
from services.auth.core import AuthCore, MeteringCore
from services.auth.models import Plan, RequestStatus, Scope, UsageRecord
from services.auth.pricing import NewPrice
from services.auth.quota import Quotas, Usage
from services.auth.store import AuthStore
from services.common.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from tests.auth.conftest import QuotaStates

BOOK_NOW = datetime(2026, 10, 1, tzinfo=UTC)  # the book's clock: prices are set ahead
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
NOV_15 = datetime(2026, 11, 15, tzinfo=UTC)
# Prices in micro-units per million tokens: 1000 prompt tokens cost 100
# micro-units, 1000 cached ones 50, 1000 completion tokens 400.
PROMPT, CACHED, COMPLETION = 100_000, 50_000, 400_000
EXACT = 1_000_000  # the state's exact unit: a millionth of a micro-unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wall:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def cost(
    prompt: int = 0, cached: int = 0, completion: int = 0, completion_price: int = COMPLETION
) -> int:
    """What a usage costs, exact, at the first price version."""
    return (prompt - cached) * PROMPT + cached * CACHED + completion * completion_price


async def priced(store: AuthStore, *later: tuple[datetime, int]) -> None:
    """Prices "tiny" from NOV_1; `later` adds versions (effective time, completion price)."""
    book = BillingCore(store, clock=lambda: BOOK_NOW)
    await book.set_price(NewPrice("tiny", "", "USD", PROMPT, CACHED, COMPLETION, NOV_1))
    for at, completion in later:
        await book.set_price(NewPrice("tiny", "", "USD", PROMPT, CACHED, completion, at))


async def tenant(auth_core: AuthCore) -> str:
    created = await auth_core.create_tenant(f"t-{random.randrange(10**9)}", plan=Plan())
    return created.tenant_id


async def budget(
    store: AuthStore,
    tenant_id: str,
    key_id: str = "",
    monthly: int = 0,
    total: int = 0,
    soft: int = 0,
) -> None:
    await Budgets(store, clock=lambda: NOV_1).set(
        Budget(tenant_id, key_id, monthly, total, soft, NOV_1)
    )


def quotas(store: AuthStore, states: QuotaStates, wall: Wall, clock: Clock | None = None) -> Quotas:
    clock = clock or Clock()
    return Quotas(store, lease_s=600.0, clock=clock, wall=wall, state=states(clock, wall))


async def take(
    q: Quotas,
    tenant_id: str,
    rid: str,
    key_id: str = "",
    prompt: int = 1000,
    completion: int = 1000,
) -> str:
    held = await q.reserve(
        tenant_id,
        rid,
        "tiny",
        prompt + completion,
        key_id,
        prompt_tokens=prompt,
        max_completion_tokens=completion,
    )
    return held.reservation_id


@pytest.mark.parametrize("overrun", [0, 200])
async def test_concurrent_requests_never_spend_past_the_bound(
    auth_core: AuthCore,
    metering_core: MeteringCore,
    store: AuthStore,
    quota_states: QuotaStates,
    overrun: int,
) -> None:
    """The bound: a request is admitted only if its worst case fits beside
    what is spent and every live lease's hold, so spend passes the limit by
    at most what the leases live together (the last admitted and those it
    saw) produced beyond their worst cases: max in flight x the largest
    overrun. With no overrun (the gateway's estimate is an over-estimate and
    max_tokens caps completion) spend never passes the limit. The counter
    charges exactly what the ledger bills: the same usage, the same prices."""
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    t = await tenant(auth_core)
    limit = 10_000  # micro-units: twenty worst cases of 500
    await budget(store, t, monthly=limit)
    # Two auth replicas share one Redis; the memory state is one replica's.
    replicas = [quotas(store, quota_states, wall)]
    if quota_states.kind == "redis":
        replicas.append(quotas(store, quota_states, wall))
    rng = random.Random(21)
    charged: list[int] = []
    refused: list[ResourceExhaustedError] = []
    in_flight = [0, 0]  # now, most

    async def one(i: int) -> None:
        q = replicas[i % len(replicas)]
        try:
            reservation = await take(q, t, f"r{i}")
        except ResourceExhaustedError as err:
            refused.append(err)
            return
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(rng.random() / 100)
        # Past the reserved 1000 completion tokens by up to `overrun`.
        prompt, completion = 1000, rng.randrange(0, 1001 + overrun)
        cached = rng.randrange(0, prompt + 1)
        settled = await q.commit_usage(
            reservation, Usage(prompt + completion, prompt, cached, completion)
        )
        in_flight[0] -= 1
        assert settled.cost == cost(prompt, cached, completion)
        charged.append(settled.cost)
        await metering_core.record_usage(
            UsageRecord(
                f"r{i}", t, "", "tiny", prompt, completion, wall.at, wall.at,
                RequestStatus.COMPLETED, cached_tokens=cached,
            )
        )  # fmt: skip

    await asyncio.gather(*(one(i) for i in range(60)))
    assert refused, "60 worst cases of 500 cannot all fit a budget of 10000"
    assert {e.subject for e in refused} == {"budget:tenant:monthly"}
    assert sum(charged) <= limit * EXACT + in_flight[1] * overrun * COMPLETION
    assert await ledger_cost(store, t, "", NOV_1) == sum(charged)
    [status] = await Budgets(store, clock=lambda: wall.at).list(t)
    # Half up to a whole micro-unit, as the ledger rounds (Python's round()
    # goes to even: 5472.5 would be 5472).
    assert status.month_spent == (sum(charged) + EXACT // 2) // EXACT


async def test_a_cut_stream_is_charged_exactly_what_it_produced(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    q = quotas(store, quota_states, wall)
    t = await tenant(auth_core)
    # Room for the cut stream's cost plus exactly one worst case (500), not two.
    cut = cost(prompt=1000, cached=200, completion=37)
    await budget(store, t, monthly=(cut + 500 * EXACT) // EXACT + 1)
    first = await take(q, t, "cut")
    settled = await q.commit_usage(first, Usage(1037, prompt=1000, cached=200, completion=37))
    assert settled.cost == cut  # 80 + 10 + 14.8 micro-units, never rounded
    # A request that produced nothing is released: charged nothing.
    nothing = await take(q, t, "nothing")
    await q.release(nothing)
    await take(q, t, "fits")
    with pytest.raises(ResourceExhaustedError) as info:
        await take(q, t, "over")
    assert info.value.subject == "budget:tenant:monthly"
    assert info.value.retry_after_s == (datetime(2026, 12, 1, tzinfo=UTC) - wall.at).total_seconds()


async def test_prices_changed_mid_month_charge_each_request_at_its_time(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    await priced(store, (NOV_15, 2 * COMPLETION))
    wall = Wall(NOV_1 + timedelta(days=9))
    q = quotas(store, quota_states, wall)
    t = await tenant(auth_core)
    await budget(store, t, total=10**6)
    before = await take(q, t, "before")
    settled = await q.commit_usage(before, Usage(1500, prompt=1000, completion=500))
    assert settled.cost == cost(prompt=1000, completion=500)
    wall.at = NOV_15 + timedelta(days=5)
    after = await take(q, t, "after")
    settled = await q.commit_usage(after, Usage(1500, prompt=1000, completion=500))
    assert settled.cost == cost(prompt=1000, completion=500, completion_price=2 * COMPLETION)


async def test_a_key_budget_is_apart_from_the_tenant_budget(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    q = quotas(store, quota_states, wall)
    t = await tenant(auth_core)
    capped, _ = await auth_core.create_api_key(t, "capped", [Scope.GENERATE])
    free, _ = await auth_core.create_api_key(t, "free", [Scope.GENERATE])
    await budget(store, t, monthly=1200)  # the tenant's: 2 worst cases of 500
    await budget(store, t, capped.key_id, total=600)  # the key's: 1
    first = await take(q, t, "k1", capped.key_id)
    with pytest.raises(ResourceExhaustedError) as info:
        await take(q, t, "k2", capped.key_id)
    assert info.value.subject == f"budget:key:{capped.key_id}:total"
    assert info.value.retry_after_s == 0  # a lifetime limit never comes back
    # The other key and the tenant's own requests still have the tenant's room...
    await take(q, t, "f1", free.key_id)
    # ...which the capped key's hold counts against too.
    with pytest.raises(ResourceExhaustedError) as info:
        await take(q, t, "t1")
    assert info.value.subject == "budget:tenant:monthly"
    await q.commit_usage(first, Usage(1000, prompt=1000))  # 100 of the key's 600
    await take(q, t, "k3", capped.key_id)


async def test_the_ledger_counts_when_the_state_forgot(
    auth_core: AuthCore, metering_core: MeteringCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    """Spent is the larger of the counter and the ledger: a restarted auth
    (a new state) still refuses what the ledger already spent."""
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    t = await tenant(auth_core)
    await budget(store, t, monthly=1000)
    await metering_core.record_usage(
        UsageRecord("old", t, "", "tiny", 1000, 1000, wall.at, wall.at, RequestStatus.COMPLETED)
    )  # 500 of 1000
    quota_states.forget()
    q = quotas(store, quota_states, wall)
    await take(q, t, "fits")
    with pytest.raises(ResourceExhaustedError):
        await take(q, t, "over")


async def test_a_lapsed_lease_gives_its_hold_back(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    clock = Clock()
    q = quotas(store, quota_states, wall, clock)
    t = await tenant(auth_core)
    await budget(store, t, monthly=500)
    await take(q, t, "dead gateway")
    with pytest.raises(ResourceExhaustedError):
        await take(q, t, "waits")
    clock.now += 601  # past the lease
    await take(q, t, "after the lapse")


async def test_the_soft_threshold_is_crossed_once_per_budget_and_period(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    await priced(store)
    wall = Wall(NOV_1 + timedelta(days=3))
    q = quotas(store, quota_states, wall)
    t = await tenant(auth_core)
    await budget(store, t, monthly=1000, total=100_000, soft=50)
    crossed = []
    for i in range(4):  # 300 micro-units each: the monthly threshold (500) on the second
        reservation = await take(q, t, f"r{i}", completion=500)
        settled = await q.commit_usage(reservation, Usage(1500, prompt=1000, completion=500))
        crossed.append([c.subject for c in settled.crossings])
        if i == 2:
            break
    assert crossed == [[], ["budget:tenant:monthly"], []]
    # Next month the monthly budget starts again, and alerts again.
    wall.at = datetime(2026, 12, 2, tzinfo=UTC)
    for i in range(2):
        reservation = await take(q, t, f"dec{i}", completion=500)
        settled = await q.commit_usage(reservation, Usage(1500, prompt=1000, completion=500))
        crossing = [
            (c.subject, c.spent_micros, c.soft_micros, c.limit_micros) for c in settled.crossings
        ]
    assert crossing == [("budget:tenant:monthly", 600, 500, 1000)]


async def test_an_unpriced_model_costs_nothing(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates
) -> None:
    wall = Wall(NOV_1 + timedelta(days=3))
    q = quotas(store, quota_states, wall)
    t = await tenant(auth_core)
    await budget(store, t, monthly=1)
    for i in range(3):
        reservation = await take(q, t, f"r{i}")
        assert (await q.commit_usage(reservation, Usage(2000, 1000, 0, 1000))).cost == 0


async def test_budgets_are_checked_when_set(auth_core: AuthCore, store: AuthStore) -> None:
    t = await tenant(auth_core)
    other = await tenant(auth_core)
    key, _ = await auth_core.create_api_key(other, "theirs", [Scope.GENERATE])
    with pytest.raises(NotFoundError):
        await budget(store, "0" * 32, monthly=1)
    with pytest.raises(NotFoundError):
        await budget(store, t, key.key_id, monthly=1)
    with pytest.raises(InvalidArgumentError, match="total_limit"):
        await budget(store, t, total=MAX_LIMIT_MICROS + 1)  # past what the counters hold
    with pytest.raises(InvalidArgumentError, match="soft_threshold"):
        await budget(store, t, monthly=5, soft=101)
    await budget(store, t, monthly=5, soft=80)
    [status] = await Budgets(store).list(t)
    assert (status.budget.monthly_limit, status.budget.soft_percent, status.month_spent) == (
        5,
        80,
        0,
    )
    await budget(store, t)  # all limits 0: removed
    assert await Budgets(store).list(t) == []


@pytest.mark.parametrize(
    ("estimated", "prompt", "completion", "field"),
    [
        (2**63 - 1, 0, 0, "estimated_tokens"),
        (2**31, 2**64 - 1, 0, "prompt_tokens"),
        (2000, 1000, 1001, "max_completion_tokens"),  # the split exceeds the estimate
    ],
)
async def test_a_hostile_estimate_is_refused_naming_the_field(
    auth_core: AuthCore,
    store: AuthStore,
    quota_states: QuotaStates,
    estimated: int,
    prompt: int,
    completion: int,
    field: str,
) -> None:
    await priced(store)
    q = quotas(store, quota_states, Wall(NOV_1 + timedelta(days=3)))
    t = await tenant(auth_core)
    await budget(store, t, monthly=10**9)
    with pytest.raises(InvalidArgumentError) as refused:
        await q.reserve(
            t, "r0", "tiny", estimated, prompt_tokens=prompt, max_completion_tokens=completion
        )
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        (Usage(2**63 - 1), "used_tokens"),
        (Usage(2000, 2**64 - 1, 0, 0), "prompt_tokens"),
        (Usage(2000, 1000, 1001, 1000), "cached_tokens"),  # more cached than prompt
        (Usage(2000, 1000, 0, 1001), "completion_tokens"),  # the split exceeds used_tokens
    ],
)
async def test_a_hostile_usage_is_refused_naming_the_field(
    auth_core: AuthCore, store: AuthStore, quota_states: QuotaStates, usage: Usage, field: str
) -> None:
    await priced(store)
    q = quotas(store, quota_states, Wall(NOV_1 + timedelta(days=3)))
    t = await tenant(auth_core)
    await budget(store, t, monthly=10**9)
    reservation = await take(q, t, "r0")
    with pytest.raises(InvalidArgumentError) as refused:
        await q.commit_usage(reservation, usage)
    assert refused.value.field == field
    settled = await q.commit_usage(reservation, Usage(2000, 1000, 0, 1000))
    assert settled.cost == cost(1000, 0, 1000)


async def test_a_hostile_price_is_refused_naming_the_field(store: AuthStore) -> None:
    book = BillingCore(store, clock=lambda: BOOK_NOW)
    with pytest.raises(InvalidArgumentError) as refused:
        await book.set_price(NewPrice("tiny", "", "USD", PROMPT, CACHED, 2**63 - 1, NOV_1))
    assert refused.value.field == "price.completion_micros_per_million"
    with pytest.raises(InvalidArgumentError) as refused:
        await book.set_price(NewPrice("tiny", "a" * 10_000, "USD", PROMPT, CACHED, 1, NOV_1))
    assert refused.value.field == "price.adapter"
