"""The router's side of direct routing, without gRPC: the caller's reports
are method calls, the replicas are the dispatcher's view of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.errors import UnavailableError
from services.inference.spec import ADAPTER_SLOTS_BUSY_REASON
from services.router.dispatcher import Dispatcher, FlowPolicy, Lease, Outcome, Ticket
from services.router.fair_queue import DEFAULT
from services.router.limiter import GradientLimiter
from services.router.replicas import ReplicaSet
from services.router.route_session import RouteSession, status_code

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TICKET = Ticket(tenant="t", priority=DEFAULT, model="m", cost=10)


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def dispatcher(telemetry: Telemetry, clock: list[float]) -> tuple[ReplicaSet, Dispatcher]:
    replicas = ReplicaSet(
        ["10.0.0.1:50054", "10.0.0.2:50054"],
        telemetry,
        limiter=lambda: GradientLimiter(initial=4, max_limit=4),
        clock=lambda: clock[0],
    )
    for r in replicas.replicas:
        replicas.set_model(r, generation_pb2.ModelInfo(name="m"), (), max_num_seqs=0)
        replicas.set_serving(r, True)
    return replicas, Dispatcher(replicas, FlowPolicy(reserved_share=0.0))


def in_flight(replicas: ReplicaSet) -> int:
    return sum(r.limiter.in_flight for r in replicas.replicas)


def test_status_codes_round_trip_by_number() -> None:
    for code in grpc.StatusCode:
        assert status_code(code.value[0]) is code
    assert status_code(999) is grpc.StatusCode.UNKNOWN


async def test_a_finished_stream_gives_its_lease_back_as_a_sample(telemetry: Telemetry) -> None:
    clock = [100.0]
    replicas, d = dispatcher(telemetry, clock)
    session = RouteSession(d, TICKET, lambda: clock[0], max_attempts=2)
    lease = await session.assign()
    assert in_flight(replicas) == 1
    clock[0] += 0.5
    # The caller's measure is kept when it is within what the router saw.
    session.first_chunk(0.2, 0.05)
    assert session.ended(OK, caller_gone=False, finished=True) is False
    assert in_flight(replicas) == 0
    assert lease.released
    assert lease.replica.consecutive_failures == 0
    session.close()  # nothing left to give back
    assert in_flight(replicas) == 0


async def test_a_failure_before_the_first_chunk_is_assigned_elsewhere(
    telemetry: Telemetry,
) -> None:
    retries: list[grpc.StatusCode] = []
    replicas, d = dispatcher(telemetry, [0.0])
    session = RouteSession(d, TICKET, lambda: 0.0, max_attempts=2, on_retry=retries.append)
    first = await session.assign()
    assert session.ended(UNAVAILABLE, caller_gone=False, finished=False) is True
    assert first.replica.consecutive_failures == 1
    second = await session.assign()
    assert (session.attempt, retries) == (2, [UNAVAILABLE])
    assert second.replica is not first.replica  # the failed replica is left out
    # The second fails too: attempts are used up, and the request is refused.
    with pytest.raises(UnavailableError, match="no replica could serve"):
        session.ended(UNAVAILABLE, caller_gone=False, finished=False)
    assert in_flight(replicas) == 0


async def test_a_replica_full_of_adapters_in_use_is_tried_past_but_not_counted(
    telemetry: Telemetry,
) -> None:
    replicas, d = dispatcher(telemetry, [0.0])
    session = RouteSession(d, TICKET, lambda: 0.0, max_attempts=2)
    first = await session.assign()
    busy = ADAPTER_SLOTS_BUSY_REASON
    assert session.ended(UNAVAILABLE, caller_gone=False, finished=False, reason=busy) is True
    assert first.replica.consecutive_failures == 0
    second = await session.assign()
    assert second.replica is not first.replica
    with pytest.raises(UnavailableError, match="no replica could serve"):
        session.ended(UNAVAILABLE, caller_gone=False, finished=False, reason=busy)
    assert all(r.consecutive_failures == 0 for r in replicas.replicas)
    assert in_flight(replicas) == 0


async def test_a_failure_after_text_went_out_is_never_retried(telemetry: Telemetry) -> None:
    replicas, d = dispatcher(telemetry, [0.0])
    session = RouteSession(d, TICKET, lambda: 0.0, max_attempts=2)
    lease = await session.assign()
    session.first_chunk(0.01, 0.0)
    with pytest.raises(UnavailableError, match="mid-stream"):
        session.ended(UNAVAILABLE, caller_gone=False, finished=False)
    assert lease.replica.consecutive_failures == 1
    assert in_flight(replicas) == 0


@pytest.mark.parametrize(
    ("code", "caller_gone"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, False),  # the request's own
        (grpc.StatusCode.INTERNAL, False),  # a request can provoke it
        (grpc.StatusCode.CANCELLED, True),  # the caller's cancel
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),  # the caller's deadline
    ],
)
async def test_failures_that_are_not_the_replicas_neither_retry_nor_count(
    telemetry: Telemetry, code: grpc.StatusCode, caller_gone: bool
) -> None:
    replicas, d = dispatcher(telemetry, [0.0])
    session = RouteSession(d, TICKET, lambda: 0.0, max_attempts=2)
    lease = await session.assign()
    assert session.ended(code, caller_gone=caller_gone, finished=False) is False
    assert lease.replica.consecutive_failures == 0
    assert in_flight(replicas) == 0


async def test_a_caller_gone_without_a_report_gives_the_lease_back(telemetry: Telemetry) -> None:
    replicas, d = dispatcher(telemetry, [0.0])
    session = RouteSession(d, TICKET, lambda: 0.0, max_attempts=2)
    lease = await session.assign()
    session.first_chunk(0.01, 0.0)
    session.close()
    assert lease.released
    assert lease.replica.consecutive_failures == 0
    assert in_flight(replicas) == 0


@pytest.mark.parametrize(
    ("first_token_s", "queued_s"),
    [(float("inf"), float("inf")), (float("nan"), float("nan")), (-5.0, -1.0), (1e300, 1e300)],
)
async def test_a_hostile_report_is_bounded_by_what_the_router_saw(
    telemetry: Telemetry, first_token_s: float, queued_s: float
) -> None:
    clock = [100.0]
    replicas, d = dispatcher(telemetry, clock)
    outcomes: list[Outcome] = []
    release = d.release

    def recording_release(lease: Lease, outcome: Outcome) -> None:
        outcomes.append(outcome)
        release(lease, outcome)

    d.release = recording_release  # type: ignore[method-assign]
    session = RouteSession(d, TICKET, lambda: clock[0], max_attempts=2)
    await session.assign()
    clock[0] += 0.5
    session.first_chunk(first_token_s, queued_s)
    session.ended(OK, caller_gone=False, finished=True)
    (outcome,) = outcomes
    for value in (outcome.first_token_s, outcome.queued_s):
        assert value is not None
        assert 0.0 <= value <= 0.5
    assert in_flight(replicas) == 0
