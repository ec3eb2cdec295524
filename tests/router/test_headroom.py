"""Free slots kept for light tenants: sized by what they hold, never taken by
a flood, and not claimed by a flood's own first requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pydantic import ValidationError

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.router.dispatcher import Dispatcher, FlowPolicy, Lease, Ticket
from services.router.fair_queue import DEFAULT
from services.router.headroom import LightHeadroom
from services.router.limiter import GradientLimiter
from services.router.replicas import ReplicaSet
from services.router.settings import RouterSettings


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def one_replica(telemetry: Telemetry, limit: int) -> ReplicaSet:
    replicas = ReplicaSet(
        ["127.0.0.1:1"], telemetry, limiter=lambda: GradientLimiter(initial=limit, max_limit=limit)
    )
    replica = replicas.replicas[0]
    replica.model = generation_pb2.ModelInfo(name="m")
    replica.serving = True
    return replicas


def ticket(tenant: str) -> Ticket:
    return Ticket(tenant=tenant, priority=DEFAULT, model="m", cost=100)


def test_the_headroom_grows_with_the_square_root_of_the_light_slots() -> None:
    headroom = LightHeadroom(beta=2.0)
    assert headroom.to_keep_free() == 0
    for _ in range(9):
        headroom.started("B")
    assert headroom.to_keep_free() == 6  # 2 x sqrt(9)
    headroom.ended("A")  # none of A's slots is light: nothing changes
    assert headroom.held == 9
    headroom.started("C")
    headroom.flooding("C")  # C holds its share and queues: a flood, not a light tenant
    assert headroom.held == 9 and not headroom.is_light("C")
    headroom.drained("C")
    assert headroom.is_light("C")
    headroom.ended("B")
    assert headroom.held == 8


async def flood_and_burst(
    telemetry: Telemetry, light_headroom: float
) -> tuple[Dispatcher, list[asyncio.Task[Lease]], list[asyncio.Task[Lease]]]:
    """One replica of 40 slots (a reserve of 2): B holds 9, A floods, then B
    sends a burst of 5."""
    replicas = one_replica(telemetry, limit=40)
    policy = FlowPolicy(reserved_share=0.05, light_headroom=light_headroom)
    dispatcher = Dispatcher(replicas, policy)
    for _ in range(9):
        await dispatcher.acquire(ticket("B"))
    flood = [asyncio.create_task(dispatcher.acquire(ticket("A"))) for _ in range(50)]
    await asyncio.sleep(0.01)
    burst = [asyncio.create_task(dispatcher.acquire(ticket("B"))) for _ in range(5)]
    await asyncio.sleep(0.01)
    return dispatcher, flood, burst


async def test_a_flood_leaves_the_light_tenants_headroom_free_for_their_burst(
    telemetry: Telemetry,
) -> None:
    dispatcher, flood, burst = await flood_and_burst(telemetry, light_headroom=2.0)
    # A's first 20 requests, granted before any queued, were under its share;
    # once A queued they stopped counting as light: A stopped at 6 free
    # (2 x sqrt(9)), not at 11 (2 x sqrt(29)).
    assert sum(task.done() for task in flood) == 25
    assert all(task.done() for task in burst)  # B's burst started at once
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    assert dispatcher.waiting() == 0


async def test_without_headroom_the_burst_waits_once_the_reserve_is_used(
    telemetry: Telemetry,
) -> None:
    _, flood, burst = await flood_and_burst(telemetry, light_headroom=0.0)
    assert sum(task.done() for task in flood) == 29  # 40 less the reserve of 2, less B's 9
    assert sum(task.done() for task in burst) == 2  # the reserve; the rest wait for A
    for task in flood + burst:
        task.cancel()
    await asyncio.gather(*flood, *burst, return_exceptions=True)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 1e9])
def test_the_headroom_setting_refuses_values_that_would_starve_or_break_placement(
    value: float,
) -> None:
    with pytest.raises(ValidationError, match="light_headroom"):
        RouterSettings(light_headroom=value)
