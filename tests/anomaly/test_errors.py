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


def quiet_tenant(
    start: float, seconds: float, every_s: float, fail_every: int
) -> list[RequestEvent]:
    """A request every `every_s` seconds, one in `fail_every` failing."""
    return [
        request(start + i * every_s, status="INVALID_ARGUMENT" if i % fail_every == 3 else "OK")
        for i in range(int(seconds / every_s))
    ]


def test_a_quiet_tenants_burst_is_judged_over_minutes_not_seconds() -> None:
    # One request every 4 s, 2% failing, for twenty minutes; then 40% fail for
    # 100 s: 10 failures in 25 requests. No 30 s window holds enough of them
    # to tell, two minutes do.
    history = quiet_tenant(T0, 20 * 60, 4.0, 50)
    burst = [
        request(T0 + 20 * 60 + i * 4.0, status="INVALID_ARGUMENT" if i % 5 in (0, 2) else "OK")
        for i in range(25)
    ]
    assert sum(e.status_code != "OK" for e in burst) == 10
    findings = [f for f in run(detector(), history + burst) if f.series == "tenant:acme"]
    assert findings
    assert min(f.at for f in findings) >= T0 + 20 * 60
    assert findings[0].expected < 0.03  # the burst did not raise its own bar
    assert findings[0].score > 7


def test_a_quiet_tenants_usual_failures_raise_nothing() -> None:
    findings = run(detector(), quiet_tenant(T0, 60 * 60, 4.0, 50))
    assert [f for f in findings if f.series == "tenant:acme"] == []
