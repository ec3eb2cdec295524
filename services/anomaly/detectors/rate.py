"""Request and token rate per tenant and per API key: spikes and level shifts
against each series' own recent behaviour.

Each series keeps three counts per bucket: requests, tokens, and bursts
(requests within a burst gap of a burst's first one are one burst: agents
fan out, so bursts, not requests, arrive independently). Each count has a
baseline, an EWMA whose updates are clipped (Huber), and a dispersion
(variance over mean): the larger of the compound-Poisson one (mean squared
burst over mean count) and the one observed over ordinary buckets, so bursty
and heavy-tailed tenants are judged by their own noise. A bucket is a spike
when a negative-binomial tail test (counts made of bursts have geometric
tails) rejects the baseline, checked as events arrive so a strong spike
fires within its first bucket; a level shift is a Poisson CUSUM for a
sustained rise, weighed by how much whole minutes of traffic wander. Buckets
without events count as zero."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.series import CountsSeries, SeriesTable
from services.anomaly.detectors.stats import clip, log_negative_binomial_tail, neg_log10
from services.anomaly.events import REQUEST, RequestEvent
from services.anomaly.settings import RateSettings

# Per-request EWMA weight of a series' typical request size (in log tokens).
SIZE_ALPHA = 0.02
# How much slower the baseline follows a series while a shift builds up.
SUSPICIOUS_SLOWDOWN = 0.1


@dataclass(frozen=True, slots=True)
class _Hit:
    what: str  # "spike" or "shift"
    score: float
    observed: float
    expected: float
    buckets: int  # the window `observed` and `expected` count over


@dataclass(slots=True)
class RateMetric:
    """One count per bucket: the open bucket and the baseline of the closed ones."""

    kind: str  # the alert kind's prefix: "request" or "token"
    unit_name: str
    total: float = 0.0
    squares: float = 0.0  # sum over the bucket's bursts of their squared size
    burst: float = 0.0  # the size of the burst in progress
    largest: float = 0.0  # the open bucket's largest burst
    previous: float = 0.0  # the last closed bucket's count...
    previous_largest: float = 0.0  # ...and largest burst
    fired: bool = False
    seen: int = 0
    level: float = 0.0
    dispersion: float = 0.0
    # Slow averages of the count and of its squared bursts per bucket: their
    # ratio is the size of one "effective event", the compound-Poisson unit
    # (a ratio of averages: an average of per-bucket ratios would miss the
    # rare big bursts that make the tail).
    weights: float = 0.0
    squared_bursts: float = 0.0
    cusum: float = 0.0
    # Dispersion of whole blocks of buckets: traffic wanders for minutes at a
    # time, which single buckets do not show and a CUSUM must not mistake
    # for a shift.
    block_total: float = 0.0
    block_buckets: int = 0
    block_ordinary: bool = True
    blocks_seen: int = 0
    block_dispersion: float = 0.0

    def add(self, weight: float, new_burst: bool) -> None:
        if new_burst:
            self.burst = 0.0
        # The square of a growing burst, added incrementally: (b + w)^2 - b^2.
        self.squares += weight * (2 * self.burst + weight)
        self.burst += weight
        self.largest = max(self.largest, self.burst)
        self.total += weight


def _metrics() -> tuple[RateMetric, RateMetric, RateMetric]:
    return (
        RateMetric("request", "requests"),
        RateMetric("token", "tokens"),
        RateMetric("request", "bursts of requests"),
    )


@dataclass(slots=True)
class _Entity:
    bucket: int
    tenant_id: str
    metrics: tuple[RateMetric, RateMetric, RateMetric] = field(default_factory=_metrics)
    log_size: float = math.nan
    burst_start: float = -math.inf
    requests_seen: int = 0


class RateDetector(CountsSeries[_Entity]):
    def __init__(
        self, settings: RateSettings, *, bucket_s: float, max_series: int, idle_buckets: int
    ) -> None:
        self._s = settings
        self._bucket_s = bucket_s
        self._log_max_p = math.log(settings.spike_max_p)
        self._table: SeriesTable[_Entity] = SeriesTable(
            max_series, idle_buckets, lambda b: _Entity(bucket=b, tenant_id="")
        )
        self._idle = idle_buckets

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != REQUEST or not event.tenant_id:
            return []
        findings: list[Finding] = []
        tokens = event.prompt_tokens + event.completion_tokens
        self._count(f"tenant:{event.tenant_id}", event.tenant_id, tokens, at, bucket, findings)
        if event.key_id:
            self._count(f"key:{event.key_id}", event.tenant_id, tokens, at, bucket, findings)
        return findings

    def advance(self, bucket: int) -> list[Finding]:
        findings: list[Finding] = []
        at = bucket * self._bucket_s
        self._table.close_before(
            bucket, lambda series, entity: self._close(series, entity, at, findings)
        )
        return findings

    def _count(
        self, series: str, tenant_id: str, tokens: int, at: float, bucket: int, out: list[Finding]
    ) -> None:
        entity = self._table.get(series, bucket)
        entity.tenant_id = tenant_id
        requests, token_count, bursts = entity.metrics
        if entity.bucket < bucket:
            # The open bucket, then the empty ones since (idle series are gone by then).
            for _ in range(min(bucket - entity.bucket, self._idle)):
                self._close(series, entity, at, out)
            entity.bucket = bucket
        # A tenth of the usual gap between requests: independent arrivals
        # rarely fall that close, a fan-out always does.
        gap = self._s.burst_gap_s
        if requests.level > 0:
            gap = min(gap, 0.1 * self._bucket_s / requests.level)
        new_burst = not 0 <= at - entity.burst_start <= gap
        if new_burst:
            entity.burst_start = at
        weight = float(tokens)
        if math.isnan(entity.log_size):
            entity.log_size = math.log1p(tokens)
        else:
            weight = min(weight, self._s.token_clip * math.exp(entity.log_size))
            entity.log_size += SIZE_ALPHA * (math.log1p(tokens) - entity.log_size)
        requests.add(1.0, new_burst)
        token_count.add(weight, new_burst)
        if new_burst:
            bursts.add(1.0, True)
        entity.requests_seen += 1
        if entity.requests_seen < self._s.warmup_requests:
            return
        in_bursts = (bursts.total, bursts.total + bursts.previous)
        for metric in entity.metrics:
            if not metric.fired and metric.seen >= self._s.warmup_buckets:
                spike = self._spike(metric, metric.total, in_bursts)
                if spike is not None:
                    metric.fired = True
                    out.append(self._finding(metric, spike, series, entity, at))

    def _expected(self, m: RateMetric) -> tuple[float, float]:
        """(expected count per bucket, dispersion) of the baseline."""
        unit = m.squared_bursts / m.weights if m.weights > 0 else 1.0
        phi = max(unit, m.dispersion)
        return max(m.level, phi * self._s.min_expected), phi

    def _spike(self, m: RateMetric, x: float, in_bursts: tuple[float, float]) -> _Hit | None:
        """A hit when `x` in the open bucket, alone or with the bucket before,
        rejects the baseline. The pair lets a spike on a quiet series fire
        within seconds of its second bucket. One fan-out, however wide, is not
        a change of rate: a window is judged without its largest burst, and
        one of fewer than `spike_min_bursts` never fires."""
        expected, phi = self._expected(m)
        if x < self._s.spike_min_ratio * expected:
            return None
        best: _Hit | None = None
        windows = (
            (x, m.largest, 1, in_bursts[0]),
            (x + m.previous, max(m.largest, m.previous_largest), 2, in_bursts[1]),
        )
        for observed, largest, buckets, bursts in windows:
            if bursts < self._s.spike_min_bursts:
                continue
            mean = buckets * expected
            log_p = log_negative_binomial_tail(observed - largest, mean, phi)
            if log_p < self._log_max_p and (best is None or neg_log10(log_p) > best.score):
                best = _Hit("spike", neg_log10(log_p), observed, mean, buckets)
        return best

    def _close(self, series: str, entity: _Entity, at: float, out: list[Finding]) -> None:
        bursts = entity.metrics[2]
        in_bursts = (bursts.total, bursts.total + bursts.previous)
        warm = entity.requests_seen >= self._s.warmup_requests
        for metric in entity.metrics:
            for hit in self._close_metric(metric, in_bursts, warm):
                out.append(self._finding(metric, hit, series, entity, at))
        entity.bucket += 1

    def _close_metric(
        self, m: RateMetric, in_bursts: tuple[float, float], warm: bool
    ) -> list[_Hit]:
        x, squares, fired = m.total, m.squares, m.fired
        m.total = m.squares = 0.0
        m.fired = False
        expected, phi = self._expected(m)
        found: list[_Hit] = []
        if warm and m.seen >= self._s.warmup_buckets:
            found = self._test(m, x, expected, phi, fired, in_bursts)
        m.previous, m.previous_largest, m.largest = x, m.largest, 0.0
        self._learn(m, x, squares, expected, phi, ordinary=not (fired or found))
        m.seen += 1
        return found

    def _test(
        self,
        m: RateMetric,
        x: float,
        expected: float,
        phi: float,
        fired: bool,
        in_bursts: tuple[float, float],
    ) -> list[_Hit]:
        s = self._s
        found: list[_Hit] = []
        # Poisson CUSUM for a `shift_ratio`-fold rise, in units of the slower
        # of the two dispersions; one bucket adds at most a quarter of the
        # threshold, so a lone spike is never a level shift.
        slow_phi = max(phi, m.block_dispersion)
        llr = (x * math.log(s.shift_ratio) - expected * (s.shift_ratio - 1)) / slow_phi
        m.cusum = max(0.0, m.cusum + min(llr, s.shift_threshold / 4))
        if m.cusum > s.shift_threshold:
            found.append(_Hit("shift", m.cusum, x, expected, 1))
            # Restarted at the suspicion bar, not at zero: the baseline keeps
            # holding still while the shift lasts instead of absorbing it.
            m.cusum = s.shift_threshold / 2
        if not fired:
            spike = self._spike(m, x, in_bursts)
            if spike is not None:
                found.append(spike)
        return found

    def _learn(
        self, m: RateMetric, x: float, squares: float, expected: float, phi: float, ordinary: bool
    ) -> None:
        s = self._s
        # While evidence of a shift builds up, the baseline all but stops
        # following it: otherwise a quiet series absorbs its own anomaly.
        suspicious = m.cusum > s.shift_threshold / 2
        alpha = s.level_alpha * (SUSPICIOUS_SLOWDOWN if suspicious else 1.0)
        d = x - m.level
        if m.seen >= s.warmup_buckets:
            d = clip(d, s.residual_clip * math.sqrt(phi * expected))
        # Running averages at first: the baseline starts as the mean of what it has seen.
        m.level += max(alpha, 1.0 / (m.seen + 1)) * d
        # The noise is learnt from ordinary buckets only, unclipped and slowly:
        # rare big fan-outs are part of it, an anomaly is not.
        ordinary = ordinary and not suspicious
        if ordinary:
            a = max(s.dispersion_alpha, 1.0 / (m.seen + 1))
            if m.seen:
                m.dispersion += a * ((x - m.level) ** 2 / expected - m.dispersion)
            m.weights += a * (x - m.weights)
            m.squared_bursts += a * (squares - m.squared_bursts)
        m.block_total += x
        m.block_buckets += 1
        m.block_ordinary = m.block_ordinary and ordinary
        n = s.shift_block_buckets
        if m.block_buckets == n:
            if m.block_ordinary and m.seen >= n:
                a = max(s.dispersion_alpha * n, 1.0 / (m.blocks_seen + 1))
                r2 = (m.block_total - n * m.level) ** 2 / (n * expected)
                m.block_dispersion += a * (r2 - m.block_dispersion)
                m.blocks_seen += 1
            m.block_total, m.block_buckets, m.block_ordinary = 0.0, 0, True

    def _finding(
        self, metric: RateMetric, hit: _Hit, series: str, entity: _Entity, at: float
    ) -> Finding:
        return Finding(
            kind=f"{metric.kind}_rate_{hit.what}",
            series=series,
            tenant_id=entity.tenant_id,
            at=at,
            score=hit.score,
            observed=hit.observed,
            expected=hit.expected,
            detail=f"{hit.observed:.0f} {metric.unit_name} in {hit.buckets * self._bucket_s:g} s, "
            f"{hit.expected:.1f} expected",
        )
