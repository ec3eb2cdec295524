"""One directly routed request at the router (the Route rpc): the router
admits it and leases a replica, the caller streams from that replica itself
and reports back, and the lease is given back with what the report told
about the replica, exactly as the proxied stream's (retry.py) is. Testable
without gRPC: the caller's reports are method calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc

from services.common.errors import UnavailableError
from services.router.dispatcher import Dispatcher, Lease, Outcome, StreamEnd, Ticket
from services.router.reasons import FULL_REASONS
from services.router.retry import is_replica_fault

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _within(reported_s: float, seen_s: float) -> float:
    """A duration the caller reported, bounded by what the router saw (0 to
    `seen_s`); NaN counts as 0."""
    if not reported_s > 0.0:
        return 0.0
    return min(reported_s, seen_s)


def status_code(number: int) -> grpc.StatusCode:
    """The status code numbered `number` (google.rpc.Code); an unknown number is UNKNOWN."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


class RouteSession:
    """Leases for one request, one at a time: `assign` leases a replica,
    `first_chunk` and `ended` are the caller's reports on it, `close` gives
    back whatever is still held (the caller went away)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        ticket: Ticket,
        clock: Callable[[], float],
        *,
        max_attempts: int,
        on_retry: Callable[[grpc.StatusCode], None] = lambda code: None,
    ) -> None:
        self._dispatcher = dispatcher
        self._ticket = ticket
        self._clock = clock
        self._max_attempts = max_attempts
        self._on_retry = on_retry
        self.attempt = 0
        self._lease: Lease | None = None
        self._first_token_s: float | None = None
        self._queued_s = 0.0

    @property
    def lease(self) -> Lease | None:
        """The lease held now, if any."""
        return self._lease

    async def assign(self) -> Lease:
        """A lease on a replica for the next attempt (after its wait in the
        queue); the dispatcher's refusals (shed, full, no replica) propagate."""
        if self._lease is not None:
            raise RuntimeError("the previous attempt's lease is still held")
        self.attempt += 1
        self._first_token_s = None
        self._queued_s = 0.0
        self._lease = await self._dispatcher.acquire(self._ticket)
        return self._lease

    def first_chunk(self, first_token_s: float, queued_s: float) -> None:
        """The replica's first chunk arrived at the caller. The caller's
        measure (replica call to first chunk) is bounded by the router's own
        (dispatch to this report), so a wrong report cannot skew the limiter
        beyond what the router saw."""
        if self._lease is None or self._first_token_s is not None:
            return
        seen_s = self._clock() - self._lease.dispatched_at
        self._first_token_s = _within(first_token_s, seen_s)
        # The engine's queueing is part of the same interval: an infinite or
        # absurd report would otherwise pin the replica's limiter at its floor.
        self._queued_s = _within(queued_s, seen_s)

    def ended(
        self, code: grpc.StatusCode, *, caller_gone: bool, finished: bool, reason: str = ""
    ) -> bool:
        """The replica call ended; gives its lease back. True when the request
        is to be tried on another replica (call `assign` again); raises
        UNAVAILABLE when the replica failed and no retry may follow (text went
        out already, or attempts are used up), as the proxied stream does."""
        lease = self._lease
        if lease is None:
            return False
        self._lease = None
        first_token_s = self._first_token_s
        if code == grpc.StatusCode.OK or not is_replica_fault(code, caller_gone=caller_gone):
            end = StreamEnd.FINISHED if code == grpc.StatusCode.OK and finished else StreamEnd.CUT
            self._dispatcher.release(lease, Outcome(end, first_token_s, self._queued_s))
            return False
        # A replica full of adapters in use is tried past, not counted as failing.
        end = StreamEnd.CUT if reason in FULL_REASONS else StreamEnd.REPLICA_FAILED
        self._dispatcher.release(lease, Outcome(end, first_token_s, self._queued_s))
        if first_token_s is not None:
            # Never retried after text went out (no duplicated output).
            raise UnavailableError(f"the replica failed mid-stream ({code.name})")
        if self.attempt >= self._max_attempts:
            raise UnavailableError(f"no replica could serve the request ({code.name})")
        self._ticket = dataclasses.replace(
            self._ticket, exclude=self._ticket.exclude | {lease.replica.address}
        )
        self._on_retry(code)
        return True

    def close(self) -> None:
        """Gives back a lease still held: the caller closed or lost the call
        before reporting an end (a cancel, a gateway gone)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            self._dispatcher.release(
                lease, Outcome(StreamEnd.CUT, self._first_token_s, self._queued_s)
            )
