"""Refusing costs the gateway too: a refused request has been received,
parsed, authenticated and checked, and some refusals (a quota, a duplicate
x-request-id, an unknown key) also cost a call to auth. A caller that keeps
sending what gets refused could spend the event loop every tenant shares on
refusals alone. So each caller has a budget of refusals (a token bucket:
`burst`, refilled at `per_s`); once it is spent, the caller's requests are
refused before they cost a check or a call, with RESOURCE_EXHAUSTED and the
time until the budget has room again; that refusal is answered only once
the time has passed (refusal_holds.py), so a caller that keeps calling
regardless calls at the budget's pace. A caller that backs off as its
refusals tell it to never meets this.

Callers are tenants once authenticated, and peer addresses for failed
authentications (see `Authenticator`)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from services.common.errors import ResourceExhaustedError

# A tenant may cost 50 refusals at once and 20 a second after: far past a
# client that backs off as told, far below what a flood sends.
DEFAULT_REFUSAL_BURST = 50.0
DEFAULT_REFUSALS_PER_S = 20.0
# An address may fail to authenticate 20 times at once and 5 a second after
# (a mistyped key takes one or two); past it, keys never seen accepted here
# are refused without asking auth.
DEFAULT_AUTH_FAILURE_BURST = 20.0
DEFAULT_AUTH_FAILURES_PER_S = 5.0
# Reads that cost auth a query each (usage aggregates, adapter lists, the
# model list with the tenant's adapters) and writes of adapters: 100 at once
# and 20 a second after is far past a console or a script polling, far below
# a loop that would keep auth's store busy for every tenant.
DEFAULT_READ_BURST = 100.0
DEFAULT_READS_PER_S = 20.0
READS_EXHAUSTED = "too many usage, model-list or adapter calls; back off as this says"

# Refusals that the caller's own request caused; a refusal for the mesh's
# sake (UNAVAILABLE, DEADLINE_EXCEEDED while queued) is not held against it.
CALLER_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def read_budget(
    per_s: float = DEFAULT_READS_PER_S, burst: float = DEFAULT_READ_BURST
) -> RefusalBudget:
    """The per-tenant budget of calls that query auth (see DEFAULT_READ_BURST)."""
    return RefusalBudget(per_s=per_s, burst=burst, subject="reads", message=READS_EXHAUSTED)


class RefusalBudget:
    """Per caller, a token bucket. As a refusal budget: how many more
    refusals it may cost (`refused`) before it is refused unread (`check`).
    As a call budget (the gateway's reads): how many more calls it may make,
    each taking a token up front (`spend`)."""

    def __init__(
        self,
        *,
        per_s: float,
        burst: float,
        subject: str,
        message: str = "too many refused requests; back off as each refusal says",
        # Callers remembered at once (least recent forgotten): bounds memory
        # under a flood from many addresses at a few MB.
        max_callers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_s = per_s
        self._burst = burst
        self._subject = subject
        self._message = message
        self._max_callers = max_callers
        self._clock = clock
        # caller -> (tokens left, when last refilled); only callers that took one lately.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, caller: str, now: float) -> float:
        bucket = self._buckets.get(caller)
        if bucket is None:
            return self._burst
        level, at = bucket
        return min(self._burst, level + (now - at) * self._per_s)

    def check(self, caller: str) -> None:
        """Raises RESOURCE_EXHAUSTED while `caller` has spent its refusals."""
        now = self._clock()
        level = self._level(caller, now)
        if level < 1:
            raise ResourceExhaustedError(
                self._message,
                retry_after_s=(1 - level) / self._per_s,
                subject=self._subject,
            )

    def spend(self, caller: str) -> None:
        """Takes one of `caller`'s tokens for a call it makes, or raises
        RESOURCE_EXHAUSTED (with the wait) when none is left."""
        self.check(caller)
        self._take(caller)

    def refused(self, caller: str) -> None:
        """Spends one of `caller`'s refusals (after the fact: never raises)."""
        self._take(caller)

    def _take(self, caller: str) -> None:
        now = self._clock()
        self._buckets[caller] = (self._level(caller, now) - 1, now)
        self._buckets.move_to_end(caller)
        while len(self._buckets) > self._max_callers:
            self._buckets.popitem(last=False)


def peer_host(peer: str) -> str:
    """The address of a gRPC-style peer ("ipv4:10.0.0.7:53122" -> "ipv4:10.0.0.7"),
    so that every connection from one host shares one budget."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer
