"""The replica set as pure state, with no channel and no gRPC: which replica
serves which model, ejection with its growing back-off, probing of the last
replica of a model, draining and deregistration, readiness. What the links
would report (health, model info, load) is fed in by hand, as they do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.errors import FailedPreconditionError, NotFoundError, UnavailableError
from services.router.limiter import GradientLimiter
from services.router.replica import Replica, ReplicaLoad
from services.router.replicas import EjectionPolicy, ReplicaSet
from tests.support import eventually


class Clock:
    """A clock the test moves by hand (ejections last minutes)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def replica_set(telemetry: Telemetry, n: int, clock: Clock) -> ReplicaSet:
    replicas = ReplicaSet(
        [f"10.0.0.{i}:50054" for i in range(n)],
        telemetry,
        ejection=EjectionPolicy(failures=2, base_s=5.0, max_s=30.0),
        limiter=lambda: GradientLimiter(initial=8, max_limit=64),
        clock=clock,
    )
    for r in replicas.replicas:
        replicas.set_model(r, generation_pb2.ModelInfo(name="m"), ("m-lora",), max_num_seqs=16)
        replicas.set_serving(r, True)
    return replicas


def test_a_replica_serves_its_model_and_adapters() -> None:
    replica = Replica("127.0.0.1:1")
    assert not replica.serves("tiny-llama")  # model not known yet
    replica.model = generation_pb2.ModelInfo(name="tiny-llama")
    replica.adapters = ("tiny-lora",)
    assert replica.serves("tiny-llama")
    assert replica.serves("tiny-lora")
    assert not replica.serves("other")


async def test_model_info_caps_the_limit_and_load_is_a_plain_value(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 1, Clock())
    [only] = replicas.replicas
    assert only.limiter.limit == 16  # the engine's batch size
    assert replicas.candidates("m-lora") == [only]
    assert only.has_room()
    replicas.set_load(only, ReplicaLoad(kv_cache_usage=0.99))
    assert not only.has_room()


async def test_failures_eject_for_a_back_off_that_doubles_up_to_its_cap(
    telemetry: Telemetry,
) -> None:
    clock = Clock()
    replicas = replica_set(telemetry, 2, clock)
    a, b = replicas.replicas
    ejected_for = []
    for _ in range(4):
        replicas.record_failure(a)
        assert a.takes_work(clock())  # one failure is not enough
        replicas.record_failure(a)
        assert not a.takes_work(clock())
        assert replicas.candidates("m") == [b]
        ejected_for.append(a.ejected_until - clock())
        clock.now = a.ejected_until  # back by itself when the time is up
        assert a.takes_work(clock())
    assert ejected_for == [5.0, 10.0, 20.0, 30.0]
    # A success ends the run of ejections: the next one is short again.
    replicas.record_success(a)
    replicas.record_failure(a)
    replicas.record_failure(a)
    assert a.ejected_until - clock() == 5.0


async def test_the_last_serving_replica_of_a_model_is_probed_not_ejected(
    telemetry: Telemetry,
) -> None:
    clock = Clock()
    replicas = replica_set(telemetry, 2, clock)
    a, b = replicas.replicas
    replicas.set_serving(b, False)
    replicas.record_failure(a)
    replicas.record_failure(a)
    assert a.takes_work(clock())
    assert a.probing and a.slots == 1
    a.limiter.acquire()
    assert not a.has_room()  # one request at a time while probed
    a.limiter.release()
    # An operator cannot eject it either.
    with pytest.raises(FailedPreconditionError):
        replicas.eject(a.address, 60.0, "test")
    # Once b is back, a's next failure ejects it.
    replicas.set_serving(b, True)
    replicas.record_failure(a)
    assert not a.probing
    assert not a.takes_work(clock())
    replicas.restore(a.address)
    assert a.takes_work(clock())
    assert a.consecutive_failures == 0


async def test_a_drained_replica_takes_no_work_and_an_undrained_one_does(
    telemetry: Telemetry,
) -> None:
    clock = Clock()
    replicas = replica_set(telemetry, 2, clock)
    a, b = replicas.replicas
    replicas.drain(a.address)
    assert replicas.candidates("m") == [b]
    replicas.drain(b.address)
    with pytest.raises(UnavailableError):
        replicas.candidates("m")
    replicas.drain(a.address, drain=False)
    assert replicas.candidates("m") == [a]
    with pytest.raises(NotFoundError):
        replicas.candidates("other")


async def test_deregistration_waits_for_the_last_stream_then_forgets_the_replica(
    telemetry: Telemetry,
) -> None:
    replicas = replica_set(telemetry, 2, Clock())
    a, b = replicas.replicas
    a.limiter.acquire()
    a.limiter.acquire()
    assert await replicas.deregister(a.address) == 2
    assert replicas.candidates("m") == [b]
    a.limiter.release()
    replicas.released(a)
    await asyncio.sleep(0)
    assert replicas.get(a.address) is a  # one stream still runs
    a.limiter.release()
    replicas.released(a)
    await eventually(lambda: [r.address for r in replicas.replicas] == [b.address])
    assert not a.serving
    assert replicas.register(a.address) is not a  # it can join again, afresh
    await replicas.aclose()


async def test_readiness_follows_whether_any_replica_serves(telemetry: Telemetry) -> None:
    replicas = replica_set(telemetry, 2, Clock())
    a, b = replicas.replicas
    changes = replicas.serving_changes()
    assert await anext(changes) is True
    await replicas.wait_ready(timeout_s=1.0)
    replicas.set_serving(a, False)
    replicas.set_serving(b, False)
    assert await anext(changes) is False
    with pytest.raises(TimeoutError):
        await replicas.wait_ready(timeout_s=0.01)
    waiting = asyncio.create_task(replicas.wait_ready(timeout_s=10.0))
    replicas.set_serving(b, True)
    await waiting
    assert await anext(changes) is True
    await changes.aclose()
