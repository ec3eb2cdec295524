"""Latency regressions per replica: time to first token and per output token."""

from __future__ import annotations

import random

from services.anomaly.detectors.latency import LatencyDetector
from services.anomaly.events import RequestEvent
from services.anomaly.settings import LatencySettings
from tests.anomaly.support import BUCKET_S, T0, lognormal, poisson_times, request, run

HISTORY_S = 15 * 60


def detector() -> LatencyDetector:
    return LatencyDetector(LatencySettings(), bucket_s=BUCKET_S, max_series=1000, idle_buckets=360)


def traffic(
    rng: random.Random, start: float, seconds: float, ttft: float = 0.15, per_token: float = 0.02
) -> list[RequestEvent]:
    return [
        request(
            at,
            completion=rng.randint(20, 300),
            ttft=lognormal(rng, ttft, 0.35),
            per_token=lognormal(rng, per_token, 0.15),
        )
        for at in poisson_times(rng, start, seconds, 8.0)
    ]


def test_steady_latency_raises_nothing() -> None:
    assert run(detector(), traffic(random.Random(1), T0, 2 * 3600)) == []


def test_a_slower_first_token_is_a_ttft_regression() -> None:
    rng = random.Random(2)
    start = T0 + HISTORY_S
    events = traffic(rng, T0, HISTORY_S) + traffic(rng, start, 120, ttft=0.45)
    findings = run(detector(), events)
    assert {f.kind for f in findings} == {"ttft_regression"}
    first = findings[0]
    assert first.series == "replica:10.0.0.1:8000"
    assert start < first.at <= start + 2 * BUCKET_S
    assert 2.5 < first.observed / first.expected < 3.6


def test_slower_decoding_is_a_per_token_regression() -> None:
    rng = random.Random(3)
    events = traffic(rng, T0, HISTORY_S) + traffic(rng, T0 + HISTORY_S, 120, per_token=0.05)
    findings = run(detector(), events)
    assert {f.kind for f in findings} == {"token_latency_regression"}


def test_one_stuck_request_is_not_a_regression() -> None:
    rng = random.Random(4)
    events = traffic(rng, T0, HISTORY_S + 300)
    events.append(request(T0 + HISTORY_S + 60, ttft=30.0, per_token=2.0))
    assert run(detector(), events) == []


def test_failed_requests_do_not_count() -> None:
    rng = random.Random(5)
    events = traffic(rng, T0, HISTORY_S)
    events += [request(T0 + HISTORY_S + i * 0.1, ttft=5.0, status="INTERNAL") for i in range(300)]
    assert run(detector(), events) == []
