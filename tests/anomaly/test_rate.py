"""Request and token rate per tenant and per key, on seeded synthetic series."""

from __future__ import annotations

import random

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.rate import RateDetector
from services.anomaly.events import RequestEvent
from services.anomaly.settings import RateSettings
from tests.anomaly.support import BUCKET_S, T0, poisson_times, request, run

WARMUP_S = 20 * 60  # comfortably past the detector's warm-up


def detector(**settings: float) -> RateDetector:
    return RateDetector(
        RateSettings(**settings), bucket_s=BUCKET_S, max_series=1000, idle_buckets=360
    )


def steady(rng: random.Random, start: float, seconds: float, rate: float) -> list[RequestEvent]:
    return [
        request(at, prompt=rng.randint(50, 400), completion=rng.randint(20, 200))
        for at in poisson_times(rng, start, seconds, rate)
    ]


def kinds(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.kind, f.series) for f in findings}


def test_a_flat_series_raises_nothing() -> None:
    rng = random.Random(1)
    assert run(detector(), steady(rng, T0, 2 * 3600, 2.0)) == []


def test_a_spike_fires_within_seconds_on_tenant_and_key() -> None:
    rng = random.Random(2)
    start = T0 + WARMUP_S
    events = steady(rng, T0, WARMUP_S + 120, 2.0) + steady(rng, start, 30, 25.0)
    findings = run(detector(), events)
    spikes = [f for f in findings if f.kind == "request_rate_spike"]
    first = {f.series: f for f in reversed(spikes)}
    assert set(first) == {"tenant:acme", "key:acme-k1"}
    assert all(f.tenant_id == "acme" for f in spikes)
    assert all(start <= f.at <= start + 10 for f in first.values())
    assert all(f.observed > 2 * f.expected for f in first.values())
    assert all(start <= f.at <= start + 30 + BUCKET_S for f in findings)


def test_nothing_fires_during_warm_up_even_for_a_spike() -> None:
    rng = random.Random(3)
    settings = RateSettings()
    warmup = settings.warmup_buckets * BUCKET_S
    events = steady(rng, T0, warmup - 30, 2.0) + steady(rng, T0 + 60, 20, 30.0)
    assert run(detector(), events) == []


def test_a_sustained_rise_is_a_level_shift() -> None:
    rng = random.Random(4)
    events = steady(rng, T0, WARMUP_S, 2.0) + steady(rng, T0 + WARMUP_S, 600, 6.0)
    findings = run(detector(), events)
    assert ("request_rate_shift", "tenant:acme") in kinds(findings)


def test_empty_buckets_count_as_zero() -> None:
    # Five requests every tenth bucket is half a request per bucket: five in
    # every bucket for a few minutes is then a tenfold rise, which it would
    # not be if the empty buckets were skipped.
    events = []
    for bucket in range(0, 400, 10):
        events += [request(T0 + bucket * BUCKET_S + i * 0.9) for i in range(5)]
    quiet_end = T0 + 400 * BUCKET_S
    events += [request(quiet_end + i) for i in range(300)]
    findings = run(detector(), events)
    assert ("request_rate_shift", "tenant:acme") in kinds(findings)
    assert all(f.at > quiet_end for f in findings)


def test_one_wide_fan_out_is_not_a_spike() -> None:
    rng = random.Random(5)
    fan_out = T0 + WARMUP_S + 60
    events = steady(rng, T0, WARMUP_S + 300, 1.0)
    events += [request(fan_out + i * 0.001) for i in range(40)]
    findings = run(detector(), events)
    assert not [f for f in findings if f.kind.endswith("_spike")]


def test_one_huge_request_is_not_a_token_spike() -> None:
    rng = random.Random(6)
    events = steady(rng, T0, WARMUP_S + 300, 1.0)
    events.append(request(T0 + WARMUP_S + 60, prompt=100_000, completion=2000))
    assert run(detector(), events) == []


def test_bigger_requests_at_the_same_rate_raise_the_token_rate() -> None:
    rng = random.Random(7)
    start = T0 + WARMUP_S
    events = steady(rng, T0, WARMUP_S, 3.0)
    events += [
        request(at, prompt=rng.randint(1500, 4000), completion=rng.randint(400, 800))
        for at in poisson_times(rng, start, 900, 3.0)
    ]
    findings = run(detector(), events)
    assert {f.kind for f in findings} <= {"token_rate_spike", "token_rate_shift"}
    assert ("token_rate_shift", "tenant:acme") in kinds(findings)
