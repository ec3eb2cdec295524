"""A property over random interleavings: 2-3 Quotas (replicas, in one
process) share one Redis and take turns at reserve, commit, release and
renew for one tenant. A simple model of the plan says which Reserve is
admitted; the replicas together admit exactly what it allows, refuse with
the limit it names, and once everything is settled hold nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.auth.core import AuthCore
from services.auth.models import Plan
from services.auth.quota import Held, Quotas
from services.auth.redis_quota import RedisQuotaState, redis_client
from services.auth.sqlite_store import open_sqlite_store
from services.common.errors import ResourceExhaustedError
from tests.auth.conftest import PEPPER

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# The clock stands still: no bucket refills and no lease lapses mid-run, so
# the model needs no time and every admission is decided by the plan alone.
FROZEN = 1000.0
# With the clock still, tokens per minute and the monthly budget count the
# same tokens: which binds first is up to the drawn plan.
plans = st.builds(
    Plan,
    requests_per_minute=st.integers(2, 10),
    tokens_per_minute=st.integers(100, 400),
    max_concurrent_requests=st.integers(1, 3),
    monthly_token_budget=st.integers(100, 400),
)

ops = st.lists(
    st.tuples(
        # Reserve twice as often as anything else, so the limits are reached.
        st.sampled_from(["reserve", "reserve", "reserve", "commit", "release", "renew"]),
        st.integers(0, 2),  # which replica
        st.integers(1, 100),  # tokens to reserve / used at commit
        st.integers(0, 10),  # which held reservation
    ),
    max_size=40,
)


@dataclass
class Model:
    plan: Plan
    requests: int = 0
    tokens: int = 0
    committed: int = 0
    held: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requests = self.plan.requests_per_minute
        self.tokens = self.plan.tokens_per_minute

    def refusal(self, tokens: int) -> str | None:
        """The limit a Reserve of `tokens` passes, in the order auth checks them."""
        if len(self.held) >= self.plan.max_concurrent_requests:
            return "max_concurrent_requests"
        if self.requests < 1:
            return "requests_per_minute"
        if self.tokens < tokens:
            return "tokens_per_minute"
        if self.committed + sum(self.held.values()) + tokens > self.plan.monthly_token_budget:
            return "monthly_token_budget"
        return None

    def settle(self, reservation_id: str, used: int | None) -> None:
        held = self.held.pop(reservation_id)
        back = held if used is None else held - used
        self.tokens = min(self.plan.tokens_per_minute, self.tokens + back)
        self.committed += used or 0


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=plans, program=ops, replicas=st.integers(2, 3))
async def test_replicas_admit_what_the_plan_allows_and_give_everything_back(
    redis_url: str,
    tmp_path: Path,
    plan: Plan,
    program: list[tuple[str, int, int, int]],
    replicas: int,
) -> None:
    client = redis_client(redis_url)
    prefix = f"maas:quota:prop-{uuid.uuid4().hex}"
    try:
        async with open_sqlite_store(tmp_path / f"{uuid.uuid4().hex}.db") as store:
            tenant = await AuthCore(store, PEPPER).create_tenant("t", plan=plan)
            fleet = [
                Quotas(
                    store,
                    clock=lambda: FROZEN,
                    wall=lambda: NOW,
                    state=RedisQuotaState(client, prefix=prefix, clock=lambda: FROZEN),
                )
                for _ in range(replicas)
            ]
            model = Model(plan)
            live: list[Held] = []
            for n, (op, which, amount, pick) in enumerate(program):
                quotas = fleet[which % replicas]
                if op == "reserve":
                    expected = model.refusal(amount)
                    try:
                        held = await quotas.reserve(tenant.tenant_id, f"r{n}", "m", amount)
                    except ResourceExhaustedError as refused:
                        assert refused.subject == expected
                        continue
                    assert expected is None
                    model.requests -= 1
                    model.tokens -= amount
                    model.held[held.reservation_id] = amount
                    live.append(held)
                elif live:
                    held = live[pick % len(live)]
                    if op == "renew":
                        assert (await quotas.renew(held.reservation_id)).tokens == held.tokens
                        continue
                    live.remove(held)
                    if op == "commit":
                        used = min(amount, held.tokens)
                        await quotas.commit(held.reservation_id, used)
                        model.settle(held.reservation_id, used)
                    else:
                        await quotas.release(held.reservation_id)
                        model.settle(held.reservation_id, None)
                assert await quotas.held_tokens(tenant.tenant_id) == sum(model.held.values())
            for held in live:
                await fleet[0].release(held.reservation_id)
            assert await fleet[-1].held_tokens(tenant.tenant_id) == 0
            # Every slot came back: as many reserve at once as the plan runs at once
            # (when the month and the minute still have room for them).
            slots = plan.max_concurrent_requests
            if (
                model.requests >= slots
                and model.tokens >= slots
                and model.committed + slots <= plan.monthly_token_budget
            ):
                for i in range(slots):
                    await fleet[i % replicas].reserve(tenant.tenant_id, f"end{i}", "m", 1)
    finally:
        await client.aclose()
