"""Outlier ejection without gRPC traffic: a failing replica is ejected
while another of its model takes work; the last one in rotation is probed
one request at a time instead, until a request succeeds on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.router.dispatcher import Dispatcher, FlowPolicy, Outcome, StreamEnd, Ticket
from services.router.fair_queue import DEFAULT
from services.router.limiter import GradientLimiter
from services.router.replicas import EjectionPolicy, Replica, ReplicaSet
from tests.support import eventually


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def replica_set(telemetry: Telemetry, n: int) -> ReplicaSet:
    replicas = ReplicaSet(
        [f"127.0.0.1:{1 + i}" for i in range(n)],
        telemetry,
        ejection=EjectionPolicy(failures=2, base_s=60.0, max_s=60.0),
        limiter=lambda: GradientLimiter(initial=8, max_limit=8),
    )
    for r in replicas.replicas:
        r.model = generation_pb2.ModelInfo(name="m")
        r.serving = True
    return replicas


def ticket(tenant: str = "t") -> Ticket:
    return Ticket(tenant=tenant, priority=DEFAULT, model="m", cost=10)


async def fail(dispatcher: Dispatcher, replica: Replica, times: int) -> None:
    for _ in range(times):
        lease = await dispatcher.acquire(ticket())
        assert lease.replica is replica
        dispatcher.release(lease, Outcome(StreamEnd.REPLICA_FAILED))


async def test_the_last_replica_in_rotation_is_probed_one_request_at_a_time_not_ejected(
    telemetry: Telemetry,
) -> None:
    replicas = replica_set(telemetry, 1)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.0))
    [only] = replicas.replicas
    await fail(dispatcher, only, 2)
    assert only.takes_work(replicas.clock())
    assert only.probing
    assert only.slots == 1
    probe = await dispatcher.acquire(ticket())
    second = asyncio.create_task(dispatcher.acquire(ticket()))
    await eventually(lambda: dispatcher.waiting() == 1)
    # Another failure keeps it in rotation, still probed.
    dispatcher.release(probe, Outcome(StreamEnd.REPLICA_FAILED))
    probe = await second
    assert only.probing and only.consecutive_failures == 3
    third = asyncio.create_task(dispatcher.acquire(ticket()))
    await eventually(lambda: dispatcher.waiting() == 1)
    # A success ends the probe: its whole limit is back.
    dispatcher.release(probe, Outcome(StreamEnd.CUT, first_token_s=0.1))
    leases = [await third, *[await dispatcher.acquire(ticket()) for _ in range(7)]]
    assert not only.probing
    assert only.consecutive_failures == 0
    assert only.limiter.in_flight == 8
    for lease in leases:
        dispatcher.release(lease, Outcome(StreamEnd.CUT, first_token_s=0.1))


async def test_a_failing_replica_is_ejected_while_another_takes_work(
    telemetry: Telemetry,
) -> None:
    replicas = replica_set(telemetry, 2)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.0))
    a, b = replicas.replicas
    await fail(dispatcher, a, 2)  # both idle: the first one listed is chosen
    assert not a.takes_work(replicas.clock())
    assert not a.probing
    # Now b is the last one in rotation: failing, it is probed, not ejected.
    await fail(dispatcher, b, 2)
    assert b.takes_work(replicas.clock())
    assert b.probing
    # Once another replica takes work again, the probed one can be ejected.
    replicas.restore(a.address)
    replicas.record_failure(b)
    assert not b.takes_work(replicas.clock())
    assert not b.probing
    assert a.takes_work(replicas.clock())


async def test_an_operator_restore_ends_a_probe(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 1)
    dispatcher = Dispatcher(replicas, FlowPolicy(reserved_share=0.0))
    [only] = replicas.replicas
    await fail(dispatcher, only, 2)
    assert only.probing
    replicas.restore(only.address)
    assert not only.probing
    assert only.slots == 8
