"""Authentication-failure bursts per source address.

Credential stuffing usually comes from a source nobody has seen before, so
there is no warm-up: every source starts at a small prior rate and learns its
own (a NAT in front of many clients fails more often). The failures in the
current bucket, and in the last few, are tested against it as they arrive."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.series import CountsSeries, SeriesTable
from services.anomaly.detectors.stats import log_poisson_tail, neg_log10
from services.anomaly.events import AUTH_FAILURE, RequestEvent
from services.anomaly.settings import AuthFailureSettings


def source_address(peer: str) -> str:
    """The address part of a gRPC peer: its port changes with every connection."""
    if peer.startswith("ipv4:"):
        return peer.rsplit(":", 1)[0]
    if peer.startswith("ipv6:") and "]:" in peer:
        return peer[: peer.rindex("]") + 1]
    return peer


@dataclass(slots=True)
class _Source:
    bucket: int
    level: float
    # The last closed buckets' failures, a ring, and their sum.
    ring: list[int]
    window: int = 0
    pos: int = 0
    count: int = 0
    fired: bool = False


class AuthFailureDetector(CountsSeries[_Source]):
    KIND = "auth_failure_burst"

    def __init__(
        self,
        settings: AuthFailureSettings,
        *,
        bucket_s: float,
        max_series: int,
        idle_buckets: int,
    ) -> None:
        self._s = settings
        self._bucket_s = bucket_s
        self._log_max_p = math.log(settings.max_p)
        ring = settings.window_buckets - 1
        self._table: SeriesTable[_Source] = SeriesTable(
            max_series,
            idle_buckets,
            lambda b: _Source(bucket=b, level=settings.expected_per_bucket, ring=[0] * ring),
        )

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != AUTH_FAILURE or not event.source:
            return []
        series = f"source:{source_address(event.source)}"
        state = self._table.get(series, bucket)
        if state.bucket < bucket:
            self._close(state, bucket)
        state.count += 1
        if state.fired:
            return []
        s = self._s
        per_bucket = max(state.level, s.expected_per_bucket)
        best: tuple[float, int, float] | None = None
        for failures, expected in (
            (state.count, per_bucket),
            (state.count + state.window, per_bucket * s.window_buckets),
        ):
            if failures < s.min_failures:
                continue
            log_p = log_poisson_tail(failures, expected)
            if log_p < self._log_max_p and (best is None or log_p < best[0]):
                best = (log_p, failures, expected)
        if best is None:
            return []
        state.fired = True
        log_p, failures, expected = best
        seconds = self._bucket_s * (1 if expected == per_bucket else s.window_buckets)
        return [
            Finding(
                kind=self.KIND,
                series=series,
                tenant_id="",
                at=at,
                score=neg_log10(log_p),
                observed=failures,
                expected=expected,
                detail=f"{failures} failed authentications within {seconds:g} s, "
                f"{expected:.2f} expected",
            )
        ]

    def advance(self, bucket: int) -> list[Finding]:
        self._table.close_before(bucket, lambda _, state: self._close(state, bucket))
        return []

    def _close(self, state: _Source, bucket: int) -> None:
        """Closes the open bucket and the empty ones after it, up to `bucket`."""
        alpha = self._s.alpha
        gap = bucket - state.bucket
        if not state.fired:
            state.level += alpha * (state.count - state.level)
        state.level *= (1.0 - alpha) ** (gap - 1)
        ring = len(state.ring)
        for i in range(min(gap, ring)):
            count = state.count if i == 0 else 0
            state.window += count - state.ring[state.pos]
            state.ring[state.pos] = count
            state.pos = (state.pos + 1) % ring
        state.count = 0
        state.fired = False
        state.bucket = bucket
