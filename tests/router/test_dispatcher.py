"""The dispatcher without gRPC traffic: replicas are marked up by hand (their
channels are never used)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.errors import DeadlineExceededError, ResourceExhaustedError
from services.router.dispatcher import Dispatcher, FlowPolicy, Lease, Outcome, StreamEnd, Ticket
from services.router.fair_queue import BATCH, DEFAULT, INTERACTIVE
from services.router.limiter import GradientLimiter
from services.router.replicas import ReplicaSet
from tests.support import eventually


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def replica_set(telemetry: Telemetry, n: int, limit: int) -> ReplicaSet:
    replicas = ReplicaSet(
        [f"127.0.0.1:{1 + i}" for i in range(n)],
        telemetry,
        limiter=lambda: GradientLimiter(initial=limit, max_limit=limit),
    )
    for r in replicas.replicas:
        r.model = generation_pb2.ModelInfo(name="m")
        r.serving = True
    return replicas


def ticket(tenant: str, deadline: float | None = None) -> Ticket:
    return Ticket(tenant=tenant, priority=DEFAULT, model="m", cost=100, deadline=deadline)


async def test_a_light_tenant_starts_at_once_while_a_flood_holds_every_other_slot(
    telemetry: Telemetry,
) -> None:
    replicas = replica_set(telemetry, 1, limit=20)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.1))
    # B asked a while ago (and is done): A keeps the reserve free for it.
    dispatcher.release(
        await dispatcher.acquire(ticket("B")), Outcome(StreamEnd.CUT, first_token_s=0.01)
    )
    flood = [await dispatcher.acquire(ticket("A")) for _ in range(18)]  # 20 minus a reserve of 2
    queued = [asyncio.create_task(dispatcher.acquire(ticket("A"))) for _ in range(50)]
    await asyncio.sleep(0)
    assert dispatcher.waiting() == 50  # the flood does not get the reserve
    light = await asyncio.wait_for(dispatcher.acquire(ticket("B")), 1.0)
    assert light.replica.limiter.in_flight == 19
    # A's ending request frees a slot A may not take (A would eat into the
    # reserve again); B's ending one frees a slot outside it, which A takes.
    dispatcher.release(flood.pop(), Outcome(StreamEnd.CUT, first_token_s=0.01))
    await asyncio.sleep(0)
    assert dispatcher.waiting() == 50
    dispatcher.release(light, Outcome(StreamEnd.CUT, first_token_s=0.01))
    await asyncio.sleep(0)
    assert dispatcher.waiting() == 49
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    assert dispatcher.waiting() == 0


async def test_the_engine_runs_urgent_classes_then_tenants_under_their_share_first(
    telemetry: Telemetry,
) -> None:
    replicas = replica_set(telemetry, 1, limit=8)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.25))
    dispatcher.release(
        await dispatcher.acquire(ticket("B")), Outcome(StreamEnd.CUT, first_token_s=0.01)
    )
    # Two tenants known: a share is 4 of the 8 slots.
    flood = [await dispatcher.acquire(ticket("A")) for _ in range(6)]
    light = await dispatcher.acquire(ticket("B"))
    under, over = flood[0].engine_priority, flood[-1].engine_priority
    assert [lease.engine_priority for lease in flood] == [under] * 4 + [over] * 2
    assert light.engine_priority == under < over

    def alone(priority: int) -> Ticket:
        return Ticket(tenant="C", priority=priority, model="m", cost=100)

    other = Dispatcher(replica_set(telemetry, 1, limit=8), FlowPolicy(reserved_share=0.25))
    urgent = await other.acquire(alone(INTERACTIVE))
    batch = await other.acquire(alone(BATCH))
    assert urgent.engine_priority < under < over < batch.engine_priority


async def test_a_tenant_alone_may_use_every_slot(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 2, limit=10)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.2))
    leases = [await asyncio.wait_for(dispatcher.acquire(ticket("A")), 1.0) for _ in range(20)]
    assert sorted(r.limiter.in_flight for r in replicas.replicas) == [10, 10]
    assert {lease.replica.address for lease in leases} == {"127.0.0.1:1", "127.0.0.1:2"}


async def test_waiting_requests_go_in_fair_order_as_slots_free(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 1, limit=1)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.0))
    running = await dispatcher.acquire(ticket("A"))
    order: list[str] = []
    granted: list[Lease] = []

    async def wait(tenant: str) -> None:
        granted.append(await dispatcher.acquire(ticket(tenant)))
        order.append(tenant)

    waiting = [asyncio.create_task(wait(t)) for t in ["A", "A", "A", "B"]]
    await asyncio.sleep(0)
    lease = running
    for i in range(4):
        dispatcher.release(lease, Outcome(StreamEnd.CUT, first_token_s=0.01))
        await eventually(lambda: len(granted) > i)  # noqa: B023 - read at once
        lease = granted[i]
    await asyncio.gather(*waiting)
    # B arrived last but is not behind all of A's queue: it goes second.
    assert order[:2] == ["A", "B"]


async def test_full_queue_and_hopeless_deadlines_are_shed(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 1, limit=1)
    clock = replicas.clock
    dispatcher = Dispatcher(replicas, FlowPolicy(max_queue=1, reserved_share=0.0))
    await dispatcher.acquire(ticket("A"))
    waiter = asyncio.create_task(dispatcher.acquire(ticket("A")))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhaustedError) as full:
        await dispatcher.acquire(ticket("B"))
    assert full.value.retry_after_s > 0
    with pytest.raises(DeadlineExceededError):
        await dispatcher.acquire(ticket("B", deadline=clock() + 0.01))
    assert dispatcher.shed == {"queue_full": 1, "deadline": 1}
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


def one_slot_dispatcher(telemetry: Telemetry, now: list[float]) -> Dispatcher:
    replicas = ReplicaSet(
        ["127.0.0.1:1"],
        telemetry,
        limiter=lambda: GradientLimiter(initial=1, max_limit=1),
        clock=lambda: now[0],
    )
    only = replicas.replicas[0]
    only.model = generation_pb2.ModelInfo(name="m")
    only.serving = True
    return Dispatcher(replicas, FlowPolicy(reserved_share=0.0))


async def hold(dispatcher: Dispatcher, now: list[float], seconds: float) -> None:
    """One stream of 100 estimated tokens that ran to its end in `seconds`."""
    lease = await dispatcher.acquire(ticket("A"))
    now[0] += seconds
    dispatcher.release(lease, Outcome(StreamEnd.FINISHED, first_token_s=0.2))


async def test_a_request_that_would_hit_its_deadline_mid_stream_is_shed_before_it_runs(
    telemetry: Telemetry,
) -> None:
    now = [1000.0]
    dispatcher = one_slot_dispatcher(telemetry, now)
    # One stream of 100 estimated tokens held the replica for 10 s: 0.1 s a token.
    await hold(dispatcher, now, 10.0)
    # Streams cut short (a cancel, their own deadline) say nothing of how long
    # one lasts: counted, these twenty would bring the estimate under 5 s.
    for _ in range(20):
        cut = await dispatcher.acquire(ticket("A"))
        now[0] += 0.5
        dispatcher.release(cut, Outcome(StreamEnd.CUT, first_token_s=0.2))
    busy = await dispatcher.acquire(ticket("A"))
    # Its first token could come in time, its last could not: shed, never dispatched.
    with pytest.raises(DeadlineExceededError, match="cannot be met"):
        await dispatcher.acquire(ticket("B", deadline=now[0] + 5.0))
    assert dispatcher.shed == {"deadline": 1}
    # With time to finish, it waits its turn instead.
    patient = asyncio.create_task(dispatcher.acquire(ticket("B", deadline=now[0] + 60.0)))
    await eventually(lambda: dispatcher.waiting() == 1)
    dispatcher.release(busy, Outcome(StreamEnd.CUT, first_token_s=0.2))
    assert (await patient).ticket.tenant == "B"


async def test_run_time_is_judged_by_the_slow_end_of_recent_streams(
    telemetry: Telemetry,
) -> None:
    now = [1000.0]
    dispatcher = one_slot_dispatcher(telemetry, now)
    for seconds in (5.0,) * 8 + (8.0,) * 2:
        await hold(dispatcher, now, seconds)
    # On average a stream takes 5.6 s, but one in five took 8: with 7 s left
    # this one would likely be cut mid-stream, so it never starts.
    with pytest.raises(DeadlineExceededError, match="cannot be met"):
        await dispatcher.acquire(ticket("B", deadline=now[0] + 7.0))
    lease = await dispatcher.acquire(ticket("B", deadline=now[0] + 9.0))
    assert lease.ticket.tenant == "B"


async def test_a_queued_request_whose_deadline_can_no_longer_be_met_is_shed_at_its_turn(
    telemetry: Telemetry,
) -> None:
    now = [1000.0]
    dispatcher = one_slot_dispatcher(telemetry, now)
    await hold(dispatcher, now, 5.0)
    busy = await dispatcher.acquire(ticket("A"))
    # 20 s left and streams take 5 s: it may wait up to 15 s for the slot.
    waiting = asyncio.create_task(dispatcher.acquire(ticket("B", deadline=now[0] + 20.0)))
    await eventually(lambda: dispatcher.waiting() == 1)
    # The stream ahead ends after 12 s: streams now may take that long, and
    # the 8 s left is no longer enough.
    now[0] += 12.0
    dispatcher.release(busy, Outcome(StreamEnd.FINISHED, first_token_s=0.2))
    with pytest.raises(DeadlineExceededError, match="cannot be met"):
        await waiting
    assert dispatcher.shed == {"deadline": 1}
    assert dispatcher.waiting() == 0
