"""Retry before the first token: a request whose replica fails before it sent
anything is tried again on another replica (the failed one left out); once
text went out it never is (no duplicated output). Each attempt holds its own
lease and gives it back with what its stream told about the replica."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Protocol

import grpc

from maas.v1 import generation_pb2
from services.common.errors import UnavailableError
from services.router.dispatcher import Dispatcher, Lease, Outcome, StreamEnd, Ticket
from services.router.reasons import FULL_REASONS, failure_reason

# Codes that say the replica (not the request) failed: worth another replica,
# and counted towards ejecting this one, but only while the caller is still
# waiting (see `is_replica_fault`). INTERNAL and UNKNOWN are not here: a
# request can provoke them (an engine failing on what one caller sent), and
# no caller may take a replica out of rotation; an engine that died answers
# UNAVAILABLE, and its replica turns NOT_SERVING.
REPLICA_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def is_replica_fault(code: grpc.StatusCode, *, caller_gone: bool) -> bool:
    """Whether a failed replica call is the replica's doing.

    Never once the caller has gone: its cancel, or its deadline passing.
    DEADLINE_EXCEEDED is never the replica's: the only deadline on the
    replica call is the caller's own (the router sets none of its own).
    CANCELLED is the replica's only while the caller still waits: the router
    cancels its replica call only after its caller went away, so one that
    comes back while the caller is there came from the replica (its server
    stopping, its handler cancelled)."""
    return not caller_gone and code in REPLICA_FAULTS


class ReplicaStream(Protocol):
    """A replica's Generate call as the retry sees it."""

    def __aiter__(self) -> AsyncIterator[generation_pb2.GenerateResponse]: ...

    def cancel(self) -> bool: ...


class FirstTokenRetry:
    """Streams a request from a leased replica, retrying before its first chunk."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: Callable[[], float],
        *,
        max_attempts: int,
        on_retry: Callable[[grpc.StatusCode], None] = lambda code: None,
    ) -> None:
        self._dispatcher = dispatcher
        self._clock = clock
        self._max_attempts = max_attempts
        self._on_retry = on_retry

    async def stream(
        self,
        ticket: Ticket,
        open_stream: Callable[[Lease, int], ReplicaStream],
        caller_gone: Callable[[], bool],
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        """The chunks of the first attempt that gets one through.
        `open_stream(lease, attempt)` calls the leased replica; `caller_gone`
        tells a caller's cancel or deadline from a replica's failure."""
        for attempt in range(1, self._max_attempts + 1):
            lease = await self._dispatcher.acquire(ticket)
            call: ReplicaStream | None = None
            first_token_s: float | None = None
            engine_queued_s = 0.0
            end = StreamEnd.CUT
            try:
                call = open_stream(lease, attempt)
                last: generation_pb2.GenerateResponse | None = None
                async for chunk in call:
                    if first_token_s is None:
                        first_token_s = self._clock() - lease.dispatched_at
                        engine_queued_s = chunk.queued_s
                    last = chunk
                    # A slow reader holds this yield, and so the replica's stream:
                    # nothing piles up here.
                    yield chunk
                # An aborted stream (the Abort rpc) ran short: not a sample of how long one runs.
                if last is not None and last.finish_reason != generation_pb2.FINISH_REASON_ABORT:
                    end = StreamEnd.FINISHED
                return
            except grpc.aio.AioRpcError as err:
                if not is_replica_fault(err.code(), caller_gone=caller_gone()):
                    raise  # the request's (or its caller's) doing: its status goes back as is
                # Full of adapters in use: tried elsewhere, but no mark against its health.
                full = failure_reason(err) in FULL_REASONS
                end = StreamEnd.CUT if full else StreamEnd.REPLICA_FAILED
                if first_token_s is not None:
                    # Never retried after text went out (no duplicated output).
                    raise UnavailableError(
                        f"the replica failed mid-stream ({err.code().name})"
                    ) from err
                if attempt == self._max_attempts:
                    raise UnavailableError(
                        f"no replica could serve the request ({err.code().name})"
                    ) from err
                ticket = dataclasses.replace(
                    ticket, exclude=ticket.exclude | {lease.replica.address}
                )
                self._on_retry(err.code())
            finally:
                if call is not None:
                    # No-op when the stream ended; on cancellation it aborts the replica's request.
                    call.cancel()
                self._dispatcher.release(lease, Outcome(end, first_token_s, engine_queued_s))
