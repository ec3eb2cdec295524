"""Error-rate bursts per replica and per tenant: a rate test, not a count."""

from __future__ import annotations

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.errors import ErrorBurstDetector
from services.anomaly.events import RequestEvent
from services.anomaly.settings import ErrorSettings
from tests.anomaly.support import BUCKET_S, T0, request, run

HISTORY_S = 5 * 60


def detector() -> ErrorBurstDetector:
    return ErrorBurstDetector(ErrorSettings(), bucket_s=BUCKET_S, max_series=1000, idle_buckets=360)


def history() -> list[RequestEvent]:
    """Five minutes of two requests a second, one in a hundred failing."""
    return [
        request(T0 + i * 0.5, status="UNAVAILABLE" if i % 100 == 50 else "OK")
        for i in range(int(HISTORY_S * 2))
    ]


def then(requests: int, failed: int, status: str = "UNAVAILABLE") -> list[Finding]:
    """What a bucket of `requests`, `failed` of them failing, raises after the history."""
    start = T0 + HISTORY_S + 1
    burst = [
        request(start + i * (4.0 / requests), status=status if i < failed else "OK")
        for i in range(requests)
    ]
    return run(detector(), history() + burst)


def test_one_failure_in_two_requests_is_not_a_burst() -> None:
    assert then(2, 1) == []


def test_two_failures_in_two_requests_are_not_a_burst_either() -> None:
    assert then(2, 2) == []


def test_a_hundred_failures_in_two_hundred_requests_are() -> None:
    findings = then(200, 100)
    assert {(f.kind, f.series) for f in findings} == {
        ("error_burst", "replica:10.0.0.1:8000"),
        ("error_burst", "tenant:acme"),
    }
    for f in findings:
        assert f.observed >= 0.3
        assert f.expected < 0.02
        assert f.score > 7


def test_clean_history_raises_nothing() -> None:
    assert run(detector(), history()) == []


def test_a_tenants_bad_requests_are_not_the_replicas_fault() -> None:
    findings = then(200, 100, status="INVALID_ARGUMENT")
    assert {f.series for f in findings} == {"tenant:acme"}


def test_cancelled_requests_are_not_errors() -> None:
    assert then(200, 100, status="CANCELLED") == []
