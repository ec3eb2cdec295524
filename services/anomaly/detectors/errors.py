"""Error-rate bursts per replica and per tenant.

A tenant's series counts every failure; a replica's only the server's own
(a tenant sending bad requests is not the replica's fault).

A binomial test of the errors in the current bucket, in the last few
buckets and in the last couple of minutes, against the series' baseline
error rate: 1 failure in 2 requests is not evidence of anything, 100 in 200
is, and a quiet tenant's 10 in 25 over two minutes is too (its 30 seconds
hold too few requests to tell). The baseline is a Beta posterior over
decayed counts of the buckets that did not fire, taken in only once they
leave the long window: a burst never raises its own bar, not even before it
has fired. A young series, with no history to wait for, learns each bucket
at once and is judged against a sane prior."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.series import CountsSeries, SeriesTable
from services.anomaly.detectors.stats import log_binomial_tail, neg_log10
from services.anomaly.events import REQUEST, RequestEvent
from services.anomaly.settings import ErrorSettings


@dataclass(slots=True)
class _ErrorSeries:
    bucket: int
    tenant_id: str
    # The last closed buckets' requests and errors, a ring, and their sums
    # over the short window's buckets and over the whole ring.
    ring_requests: list[int]
    ring_errors: list[int]
    # Whether a slot's bucket stays out of the baseline when it leaves the
    # ring: it fired, or it was learnt at once while the series was young.
    ring_skip: list[bool]
    window_requests: int = 0
    window_errors: int = 0
    long_requests: int = 0
    long_errors: int = 0
    pos: int = 0
    requests: int = 0
    errors: int = 0
    fired: bool = False
    seen: int = 0
    base_requests: float = 0.0
    base_errors: float = 0.0


class ErrorBurstDetector(CountsSeries[_ErrorSeries]):
    KIND = "error_burst"

    def __init__(
        self, settings: ErrorSettings, *, bucket_s: float, max_series: int, idle_buckets: int
    ) -> None:
        self._s = settings
        self._bucket_s = bucket_s
        self._log_max_p = math.log(settings.max_p)
        self._short = settings.window_buckets - 1
        window = max(settings.long_window_buckets, settings.window_buckets) - 1
        self._table: SeriesTable[_ErrorSeries] = SeriesTable(
            max_series,
            idle_buckets,
            lambda b: _ErrorSeries(
                bucket=b,
                tenant_id="",
                ring_requests=[0] * window,
                ring_errors=[0] * window,
                ring_skip=[False] * window,
            ),
        )

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != REQUEST:
            return []
        code = event.status_code
        findings: list[Finding] = []
        if event.replica:
            failed = code in self._s.replica_codes
            self._count(f"replica:{event.replica}", "", failed, at, bucket, findings)
        if event.tenant_id:
            failed = bool(code) and code not in self._s.ignored_codes
            self._count(f"tenant:{event.tenant_id}", event.tenant_id, failed, at, bucket, findings)
        return findings

    def advance(self, bucket: int) -> list[Finding]:
        self._table.close_before(bucket, lambda _, state: self._close(state, bucket))
        return []

    def _count(
        self, series: str, tenant_id: str, failed: bool, at: float, bucket: int, out: list[Finding]
    ) -> None:
        state = self._table.get(series, bucket)
        state.tenant_id = tenant_id
        if state.bucket < bucket:
            self._close(state, bucket)
        state.requests += 1
        if not failed:
            return
        state.errors += 1
        if state.fired or state.seen < self._s.warmup_buckets:
            return
        rate = self._baseline(state)
        best: tuple[float, int, int] | None = None
        for errors, requests in (
            (state.errors, state.requests),
            (state.errors + state.window_errors, state.requests + state.window_requests),
            (state.errors + state.long_errors, state.requests + state.long_requests),
        ):
            if errors < self._s.min_errors or errors < self._s.min_ratio * rate * requests:
                continue
            log_p = log_binomial_tail(errors, requests, rate)
            if log_p < self._log_max_p and (best is None or log_p < best[0]):
                best = (log_p, errors, requests)
        if best is None:
            return
        state.fired = True
        log_p, errors, requests = best
        out.append(
            Finding(
                kind=self.KIND,
                series=series,
                tenant_id=tenant_id,
                at=at,
                score=neg_log10(log_p),
                observed=errors / requests,
                expected=rate,
                detail=f"{errors} of {requests} requests failed, {rate:.2%} expected",
            )
        )

    def _baseline(self, state: _ErrorSeries) -> float:
        s = self._s
        prior_errors = s.prior_rate * s.prior_requests
        return (state.base_errors + prior_errors) / (state.base_requests + s.prior_requests)

    def _close(self, state: _ErrorSeries, bucket: int) -> None:
        """Closes the open bucket and the empty ones after it, up to `bucket`:
        each enters the ring, and the one it pushes out enters the baseline."""
        keep = 1.0 - self._s.baseline_alpha
        gap = bucket - state.bucket
        ring = len(state.ring_requests)
        for i in range(min(gap, ring)):
            requests, errors = (state.requests, state.errors) if i == 0 else (0, 0)
            pos = state.pos
            state.base_requests *= keep
            state.base_errors *= keep
            if not state.ring_skip[pos]:
                state.base_requests += state.ring_requests[pos]
                state.base_errors += state.ring_errors[pos]
            skip = state.fired and i == 0
            if not skip and state.seen + i < ring:
                state.base_requests += requests
                state.base_errors += errors
                skip = True
            # The bucket leaving the short window: `short` slots behind the newest.
            leaving = (pos - self._short) % ring
            if self._short:
                state.window_requests += requests - state.ring_requests[leaving]
                state.window_errors += errors - state.ring_errors[leaving]
            state.long_requests += requests - state.ring_requests[pos]
            state.long_errors += errors - state.ring_errors[pos]
            state.ring_requests[pos] = requests
            state.ring_errors[pos] = errors
            state.ring_skip[pos] = skip
            state.pos = (pos + 1) % ring
        # Past a whole ring, only empty buckets leave it: the baseline just fades.
        if gap > ring:
            state.base_requests *= keep ** (gap - ring)
            state.base_errors *= keep ** (gap - ring)
        state.requests = state.errors = 0
        state.fired = False
        state.seen += gap
        state.bucket = bucket
