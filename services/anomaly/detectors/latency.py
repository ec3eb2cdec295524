"""Latency regressions per replica: time to first token and time per output
token, (duration - ttft) / (completion tokens - 1).

Latencies are compared in log space (a regression is a factor, and the log
tames their long tail). Requests are pooled into batches of at least
`min_batch`, closed at bucket boundaries; a batch fires when its mean log
latency sits many standard errors above the replica's baseline, where the
standard error counts both per-request noise and the usual drift between
batches. Single requests and batch means are clipped before they move the
baseline, and outlying batches do not teach the spread, so one stuck
request neither fires nor skews what is normal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.series import CountsSeries, SeriesTable
from services.anomaly.detectors.stats import clip
from services.anomaly.events import REQUEST, RequestEvent
from services.anomaly.settings import LatencySettings

# How much slower the baseline follows a batch that regressed.
REGRESSION_SLOWDOWN = 0.1


@dataclass(slots=True)
class LatencyMetric:
    """One latency series: the open batch and the baseline of the closed ones."""

    opened: int = 0
    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    raw_total: float = 0.0
    seen: int = 0
    mean: float = 0.0
    within: float = 0.0
    between: float = 0.0


@dataclass(slots=True)
class _Replica:
    bucket: int
    ttft: LatencyMetric = field(default_factory=LatencyMetric)
    per_token: LatencyMetric = field(default_factory=LatencyMetric)


class LatencyDetector(CountsSeries[_Replica]):
    KINDS: ClassVar[dict[str, str]] = {
        "ttft": "ttft_regression",
        "per_token": "token_latency_regression",
    }

    def __init__(
        self, settings: LatencySettings, *, bucket_s: float, max_series: int, idle_buckets: int
    ) -> None:
        self._s = settings
        self._bucket_s = bucket_s
        self._table: SeriesTable[_Replica] = SeriesTable(
            max_series, idle_buckets, lambda b: _Replica(bucket=b)
        )

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != REQUEST or not event.replica or event.status_code != "OK":
            return []
        findings: list[Finding] = []
        series = f"replica:{event.replica}"
        replica = self._table.get(series, bucket)
        if replica.bucket < bucket:
            self._close(series, replica, bucket, at, findings)
        ttft = event.time_to_first_token_s
        if ttft > 0:
            self._add(replica.ttft, math.log(ttft), bucket)
            if event.completion_tokens >= 2 and event.duration_s > ttft:
                per_token = (event.duration_s - ttft) / (event.completion_tokens - 1)
                self._add(replica.per_token, math.log(per_token), bucket)
        return findings

    def advance(self, bucket: int) -> list[Finding]:
        findings: list[Finding] = []
        at = bucket * self._bucket_s
        self._table.close_before(
            bucket, lambda series, replica: self._close(series, replica, bucket, at, findings)
        )
        return findings

    def _add(self, m: LatencyMetric, value: float, bucket: int) -> None:
        raw = value
        if m.n == 0:
            m.opened = bucket
        if m.seen >= self._s.warmup_batches:
            value = m.mean + clip(value - m.mean, self._s.clip * math.sqrt(m.within))
        m.n += 1
        m.total += value
        m.squares += value * value
        m.raw_total += raw

    def _close(
        self, series: str, replica: _Replica, bucket: int, at: float, out: list[Finding]
    ) -> None:
        for name in ("ttft", "per_token"):
            m: LatencyMetric = getattr(replica, name)
            if m.n >= self._s.min_batch or (m.n and bucket - m.opened >= self._s.max_batch_buckets):
                found = self._judge(m)
                m.n, m.total, m.squares, m.raw_total = 0, 0.0, 0.0, 0.0
                if found is not None:
                    z, observed, expected, n = found
                    label = "time to first token" if name == "ttft" else "time per token"
                    out.append(
                        Finding(
                            kind=self.KINDS[name],
                            series=series,
                            tenant_id="",
                            at=at,
                            score=z,
                            observed=observed,
                            expected=expected,
                            detail=f"{label} {observed * 1e3:.1f} ms, {expected * 1e3:.1f} ms "
                            f"typical (geometric means, {n} requests)",
                        )
                    )
        replica.bucket = bucket

    def _judge(self, m: LatencyMetric) -> tuple[float, float, float, int] | None:
        """Updates the baseline with the batch; (z, observed, expected, n) if it regressed."""
        s = self._s
        n = m.n
        batch_mean = m.total / n
        batch_var = max(m.squares / n - batch_mean * batch_mean, 0.0)
        if m.seen < s.warmup_batches:
            # Running averages; the spread between batches needs a mean to spread around.
            if m.seen:
                d = batch_mean - m.mean
                b = max(s.alpha, 1.0 / m.seen)
                m.between += b * (max(0.0, d * d - m.within / n) - m.between)
            a = max(s.alpha, 1.0 / (m.seen + 1))
            m.mean += a * (batch_mean - m.mean)
            m.within += a * (batch_var - m.within)
            m.seen += 1
            return None
        se = math.sqrt(m.within / n + m.between) or 1e-9
        excess = batch_mean - m.mean
        found = None
        if excess / se >= s.z_threshold and math.exp(excess) >= s.min_ratio:
            found = (excess / se, math.exp(m.raw_total / n), math.exp(m.mean), n)
        # A regression is absorbed over hours, not within the next one.
        alpha = s.alpha * (REGRESSION_SLOWDOWN if found else 1.0)
        m.mean += alpha * clip(excess, s.clip * se)
        # Only ordinary batches teach the spread: learning it from an outlier
        # would widen the very standard error that judges outliers.
        if abs(excess) <= s.clip * se:
            m.within += s.alpha * (batch_var - m.within)
            m.between += s.alpha * (max(0.0, excess * excess - m.within / n) - m.between)
        m.seen += 1
        return found
