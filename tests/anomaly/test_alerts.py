"""Findings become alerts: merged while an anomaly lasts, bounded, filtered,
and fanned out to watchers without ever waiting for them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.anomaly.alerts import Alert, AlertBook, AlertQuery, Severity
from services.anomaly.detectors.base import Finding
from services.anomaly.settings import AlertSettings
from services.anomaly.watch import AlertHub, Watcher
from tests.anomaly.support import T0


def finding(
    at: float,
    *,
    kind: str = "request_rate_spike",
    series: str = "tenant:acme",
    tenant: str = "acme",
    score: float = 8.0,
    observed: float = 30.0,
    expected: float = 10.0,
) -> Finding:
    return Finding(kind, series, tenant, at, score, observed, expected, "detail")


def book(changes: list[Alert] | None = None, **settings: float) -> AlertBook:
    sink = changes if changes is not None else []
    return AlertBook(AlertSettings(**settings), sink.append)


async def take(watcher: Watcher, n: int) -> list[Alert]:
    received: list[Alert] = []
    async for alert in watcher:
        received.append(alert)
        if len(received) == n:
            return received
    return received


def test_repeated_findings_merge_into_one_alert_while_it_lasts() -> None:
    changes: list[Alert] = []
    alerts = book(changes, merge_window_s=60)
    first = alerts.record(finding(T0, score=8.0))
    second = alerts.record(finding(T0 + 50, score=12.0, observed=60.0))
    third = alerts.record(finding(T0 + 100, score=9.0, observed=20.0))
    assert first.alert_id == second.alert_id == third.alert_id
    assert third.count == 3
    assert third.first_seen == datetime.fromtimestamp(T0, UTC)
    assert third.last_seen == datetime.fromtimestamp(T0 + 100, UTC)
    assert third.score == 12.0  # the highest
    assert (third.observed, third.expected) == (20.0, 10.0)  # the latest
    assert third.severity == Severity.CRITICAL  # the highest: 60 was 6x expected
    assert [a.count for a in changes] == [1, 2, 3]
    assert len(alerts) == 1


def test_a_finding_after_the_merge_window_opens_a_new_alert() -> None:
    alerts = book(merge_window_s=60)
    first = alerts.record(finding(T0))
    later = alerts.record(finding(T0 + 61))
    assert later.alert_id != first.alert_id
    assert later.count == 1


def test_other_kinds_and_series_are_other_alerts() -> None:
    alerts = book()
    ids = {
        alerts.record(finding(T0)).alert_id,
        alerts.record(finding(T0, kind="token_rate_spike")).alert_id,
        alerts.record(finding(T0, series="key:acme-k1")).alert_id,
    }
    assert len(ids) == 3


def test_severity_follows_observed_over_expected() -> None:
    alerts = book(critical_ratio=5.0)
    assert alerts.record(finding(T0, observed=30, expected=10)).severity == Severity.WARNING
    assert (
        alerts.record(finding(T0, series="tenant:b", observed=50, expected=10)).severity
        == Severity.CRITICAL
    )


def test_the_book_keeps_at_most_max_alerts_and_drops_the_oldest() -> None:
    alerts = book(max_alerts=3)
    made = [alerts.record(finding(T0 + i, series=f"tenant:t{i}")) for i in range(5)]
    kept = alerts.query(AlertQuery())
    assert [a.alert_id for a in kept] == [a.alert_id for a in reversed(made[2:])]


def test_queries_filter_by_tenant_kind_since_severity_and_limit() -> None:
    alerts = book()
    alerts.record(finding(T0, series="tenant:a", tenant="a"))
    alerts.record(finding(T0 + 10, series="key:a-k1", tenant="a", observed=90))
    alerts.record(finding(T0 + 20, series="tenant:b", tenant="b", kind="error_burst"))
    alerts.record(
        finding(T0 + 30, series="source:ipv4:1.2.3.4", tenant="", kind="auth_failure_burst")
    )

    def series(query: AlertQuery) -> list[str]:
        return [a.series for a in alerts.query(query)]

    assert series(AlertQuery()) == [
        "source:ipv4:1.2.3.4", "tenant:b", "key:a-k1", "tenant:a",
    ]  # fmt: skip
    assert series(AlertQuery(tenant_id="a")) == ["key:a-k1", "tenant:a"]
    assert series(AlertQuery(kind="error_burst")) == ["tenant:b"]
    assert series(AlertQuery(since=datetime.fromtimestamp(T0 + 15, UTC))) == [
        "source:ipv4:1.2.3.4", "tenant:b",
    ]  # fmt: skip
    assert series(AlertQuery(min_severity=Severity.CRITICAL)) == ["key:a-k1"]
    assert series(AlertQuery(limit=1)) == ["source:ipv4:1.2.3.4"]


async def test_watchers_get_new_and_updated_alerts_that_match() -> None:
    hub = AlertHub(max_queue=10)
    alerts = AlertBook(AlertSettings(), hub.publish)
    with hub.watch(AlertQuery(tenant_id="a")) as watcher:
        alerts.record(finding(T0, series="tenant:a", tenant="a"))
        alerts.record(finding(T0, series="tenant:b", tenant="b"))
        alerts.record(finding(T0 + 5, series="tenant:a", tenant="a"))
        received = await take(watcher, 2)
    assert [(a.series, a.count) for a in received] == [("tenant:a", 1), ("tenant:a", 2)]
    assert hub.watchers == 0


async def test_a_slow_watcher_loses_its_oldest_alerts_and_nobody_waits() -> None:
    hub = AlertHub(max_queue=2)
    alerts = AlertBook(AlertSettings(), hub.publish)
    with hub.watch(AlertQuery()) as slow:
        for i in range(5):
            alerts.record(finding(T0, series=f"tenant:t{i}"))  # returns without waiting
        assert slow.dropped == 3
        assert hub.dropped == 3
        received = await take(slow, 2)
    assert [a.series for a in received] == ["tenant:t3", "tenant:t4"]
    assert hub.dropped == 3  # still counted once the watcher is gone


async def test_a_waiting_watcher_wakes_on_the_next_alert() -> None:
    hub = AlertHub(max_queue=10)
    alerts = AlertBook(AlertSettings(), hub.publish)
    with hub.watch(AlertQuery()) as watcher:
        waiting = asyncio.create_task(take(watcher, 1))
        await asyncio.sleep(0)  # let it block on an empty queue
        assert not waiting.done()
        alerts.record(finding(T0))
        assert [a.series for a in await waiting] == ["tenant:acme"]
