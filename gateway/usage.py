"""Usage of one request as it streams, from the running usage on its chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import structlog
from google.protobuf import timestamp_pb2

from maas.v1 import generation_pb2

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
