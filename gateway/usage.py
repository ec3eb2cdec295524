"""Usage of one request as it streams, and its delivery to the ledger.

Records are written off the request path, retried with backoff (the ledger
is idempotent on request id, so a retry never bills twice), and awaited at
shutdown so a stopping gateway does not drop what it already served."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import structlog
from google.protobuf import timestamp_pb2

from maas.v1 import generation_pb2, metering_pb2, metering_pb2_grpc

log = structlog.get_logger(__name__)

_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)


@dataclass
class StreamUsage:
    """What a stream produced so far, from the running usage on its chunks."""

    start_wall: float = field(default_factory=time.time)
    start: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finished: bool = False

    def observe(self, chunk: generation_pb2.GenerateResponse) -> None:
        if self.first_token_s is None and chunk.token_ids:
            self.first_token_s = time.perf_counter() - self.start
        self.chunks += 1
        self.prompt_tokens = chunk.usage.prompt_tokens
        self.completion_tokens = chunk.usage.completion_tokens
        self.cached_tokens = chunk.usage.cached_tokens
        self.finished = chunk.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class UsageRecorder:
    def __init__(
        self,
        stub: metering_pb2_grpc.MeteringAsyncStub,
        *,
        attempts: int,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._stub = stub
        self._attempts = attempts
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, record: metering_pb2.UsageRecord) -> None:
        """Schedules the write and returns at once."""
        task = asyncio.create_task(self._write(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self, timeout_s: float) -> None:
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=timeout_s)
            for task in late:
                task.cancel()

    async def _write(self, record: metering_pb2.UsageRecord) -> None:
        backoff = self._initial_backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                await self._stub.RecordUsage(
                    metering_pb2.RecordUsageRequest(record=record), timeout=10.0
                )
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in _RETRYABLE or attempt == self._attempts:
                    log.error(
                        "usage record lost",
                        request_id=record.request_id,
                        tenant_id=record.tenant_id,
                        prompt_tokens=record.prompt_tokens,
                        completion_tokens=record.completion_tokens,
                        code=str(err.code()),
                    )
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
