"""Retry before the first token, without gRPC traffic: replica calls are
fakes that fail on demand (a replica going away at a chosen moment is a
failure a real engine cannot produce on demand)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.errors import UnavailableError
from services.router.dispatcher import Dispatcher, FlowPolicy, Lease, Ticket
from services.router.fair_queue import DEFAULT
from services.router.limiter import GradientLimiter
from services.router.replicas import ReplicaSet
from services.router.retry import FirstTokenRetry, ReplicaStream


class FakeReplicaCall:
    """Sends `chunks` chunks, then fails with `fail_with` (or ends)."""

    def __init__(self, chunks: int, fail_with: grpc.StatusCode | None) -> None:
        self._chunks = chunks
        self._fail_with = fail_with
        self.cancelled = False

    async def _stream(self) -> AsyncIterator[generation_pb2.GenerateResponse]:
        for _ in range(self._chunks):
            yield generation_pb2.GenerateResponse(queued_s=0.01)
        if self._fail_with is not None:
            raise grpc.aio.AioRpcError(
                self._fail_with, grpc.aio.Metadata(), grpc.aio.Metadata(), "fake failure"
            )

    def __aiter__(self) -> AsyncIterator[generation_pb2.GenerateResponse]:
        return self._stream()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("router", TelemetrySettings())
    yield tel
    tel.shutdown()


def dispatcher(telemetry: Telemetry) -> tuple[ReplicaSet, Dispatcher]:
    replicas = ReplicaSet(
        ["10.0.0.1:50054", "10.0.0.2:50054"],
        telemetry,
        limiter=lambda: GradientLimiter(initial=4, max_limit=4),
    )
    for r in replicas.replicas:
        replicas.set_model(r, generation_pb2.ModelInfo(name="m"), (), max_num_seqs=0)
        replicas.set_serving(r, True)
    return replicas, Dispatcher(replicas, FlowPolicy(reserved_share=0.0))


TICKET = Ticket(tenant="t", priority=DEFAULT, model="m", cost=10)


async def test_a_failure_before_the_first_chunk_is_retried_on_another_replica(
    telemetry: Telemetry,
) -> None:
    retries: list[grpc.StatusCode] = []
    _, d = dispatcher(telemetry)
    retry = FirstTokenRetry(d, lambda: 0.0, max_attempts=2, on_retry=retries.append)
    calls: list[tuple[str, FakeReplicaCall]] = []

    def open_stream(lease: Lease, attempt: int) -> ReplicaStream:
        first = attempt == 1
        call = FakeReplicaCall(0 if first else 3, grpc.StatusCode.UNAVAILABLE if first else None)
        calls.append((lease.replica.address, call))
        return call

    chunks = [c async for c in retry.stream(TICKET, open_stream, lambda: False)]
    assert len(chunks) == 3  # all from the second attempt
    assert len(calls) == 2
    assert calls[0][0] != calls[1][0]  # the failed replica is left out
    assert retries == [grpc.StatusCode.UNAVAILABLE]
    assert all(call.cancelled for _, call in calls)


async def test_a_failure_after_text_went_out_is_never_retried(telemetry: Telemetry) -> None:
    replicas, d = dispatcher(telemetry)
    retry = FirstTokenRetry(d, lambda: 0.0, max_attempts=2)
    opened = 0

    def open_stream(lease: Lease, attempt: int) -> ReplicaStream:
        nonlocal opened
        opened += 1
        return FakeReplicaCall(2, grpc.StatusCode.UNAVAILABLE)

    received = 0
    with pytest.raises(UnavailableError, match="mid-stream"):
        async for _ in retry.stream(TICKET, open_stream, lambda: False):
            received += 1
    assert (opened, received) == (1, 2)
    failed = [r for r in replicas.replicas if r.consecutive_failures == 1]
    assert len(failed) == 1
    assert all(r.limiter.in_flight == 0 for r in replicas.replicas)


async def test_a_failure_once_the_caller_has_gone_is_neither_retried_nor_counted(
    telemetry: Telemetry,
) -> None:
    replicas, d = dispatcher(telemetry)
    retry = FirstTokenRetry(d, lambda: 0.0, max_attempts=2)

    def open_stream(lease: Lease, attempt: int) -> ReplicaStream:
        return FakeReplicaCall(0, grpc.StatusCode.CANCELLED)

    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in retry.stream(TICKET, open_stream, lambda: True):
            pass
    assert all(r.consecutive_failures == 0 for r in replicas.replicas)
    assert all(r.limiter.in_flight == 0 for r in replicas.replicas)
