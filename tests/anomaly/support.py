"""Seeded event streams for the anomaly tests (event time only, no clock),
and the real server they run against."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from observability import Telemetry
from services.anomaly.core import AnomalyCore
from services.anomaly.detectors.base import Detector, Finding
from services.anomaly.events import AUTH_FAILURE, REQUEST, RequestEvent
from services.anomaly.server import RunningAnomaly, serving
from services.anomaly.settings import AnomalySettings

T0 = 1_800_000_000.0
BUCKET_S = 5.0


def request(
    at: float,
    *,
    tenant: str = "acme",
    key: str = "acme-k1",
    model: str = "tiny",
    replica: str = "10.0.0.1:8000",
    prompt: int = 100,
    completion: int = 50,
    ttft: float = 0.1,
    per_token: float = 0.02,
    status: str = "OK",
) -> RequestEvent:
    ok = status == "OK"
    return RequestEvent(
        kind=REQUEST,
        time=datetime.fromtimestamp(at, UTC),
        request_id=f"r{at}",
        tenant_id=tenant,
        key_id=key,
        model=model,
        replica=replica,
        prompt_tokens=prompt,
        completion_tokens=completion if ok else 0,
        time_to_first_token_s=ttft if ok else 0.0,
        duration_s=ttft + per_token * (completion - 1) if ok else 0.0,
        status_code=status,
        source="",
    )


def auth_failure(at: float, source: str) -> RequestEvent:
    return RequestEvent(
        kind=AUTH_FAILURE,
        time=datetime.fromtimestamp(at, UTC),
        status_code="UNAUTHENTICATED",
        source=source,
    )


def stuffing(source: str, at: float = T0) -> list[RequestEvent]:
    """Forty failed logins in ten seconds from one address (a new port each time)."""
    return [auth_failure(at + i * 0.25, f"{source}:{40000 + i}") for i in range(40)]


def poisson_times(rng: random.Random, start: float, seconds: float, rate: float) -> Iterator[float]:
    """Arrival times of a Poisson process of `rate` per second."""
    at = start
    while True:
        at += rng.expovariate(rate)
        if at >= start + seconds:
            return
        yield at


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


def run(detector: Detector, events: Iterable[RequestEvent]) -> list[Finding]:
    """Drives one detector as the core does: advance on each new bucket, then observe."""
    findings: list[Finding] = []
    current = -1
    for event in sorted(events, key=lambda e: e.time):
        at = event.time.timestamp()
        bucket = int(at // BUCKET_S)
        if bucket > current:
            if current >= 0:
                findings.extend(detector.advance(bucket))
            current = bucket
        findings.extend(detector.observe(event, at, bucket))
    return findings


def feed(core: AnomalyCore, events: Iterable[RequestEvent]) -> None:
    for event in sorted(events, key=lambda e: e.time):
        core.ingest(event)


def start(
    telemetry: Telemetry, core: AnomalyCore, port: int = 0
) -> AbstractAsyncContextManager[RunningAnomaly]:
    return serving(AnomalySettings(port=port, grace_period_s=0), telemetry, core=core)
