"""Memory stays bounded however many series show up."""

from __future__ import annotations

import tracemalloc

from services.anomaly.core import AnomalyCore
from services.anomaly.settings import AnomalySettings, MixSettings
from tests.anomaly.support import T0, auth_failure, request

SERIES = 10_000  # keys, replicas and sources
TENANTS = 300  # what GetEventStats counts by tenant is not capped, so these recur
CAP = 500


def test_ten_thousand_series_stay_under_the_cap() -> None:
    core = AnomalyCore(AnomalySettings(max_series=CAP, mix=MixSettings(max_tenants=100)))

    def burst_of_series(start: int, stop: int) -> None:
        for i in range(start, stop):
            at = T0 + i * 0.01
            replica = f"10.1.{i // 250}.{i % 250}:1"
            core.ingest(request(at, tenant=f"t{i % TENANTS}", key=f"k{i}", replica=replica))
            core.ingest(auth_failure(at, f"ipv4:10.2.{i // 250}.{i % 250}:1"))

    tracemalloc.start()
    try:
        burst_of_series(0, SERIES // 2)  # the tables are full long before this ends
        half = tracemalloc.get_traced_memory()[0]
        burst_of_series(SERIES // 2, SERIES)
        grown = tracemalloc.get_traced_memory()[0] - half
    finally:
        tracemalloc.stop()

    # The budget detector keeps no series: each threshold event is its finding.
    caps = {
        "rate": CAP,
        "errors": CAP,
        "latency": CAP,
        "auth_failures": CAP,
        "mix": 100,
        "budgets": 0,
    }
    for name, detector in core.detectors.items():
        assert detector.tracked() <= caps[name], name
    # Tenants and keys share the rate table; tenants and replicas the error table.
    stats = core.stats()
    assert stats.series_tracked <= sum(caps.values())
    assert stats.series_evicted >= 4 * SERIES - sum(caps.values())
    # Another 5,000 keys, replicas and sources cost next to nothing more.
    assert grown < 0.05 * half


def test_idle_series_are_forgotten() -> None:
    core = AnomalyCore(AnomalySettings(idle_s=600))
    core.ingest(request(T0, tenant="gone", key="gone-k"))
    core.ingest(request(T0 + 300, tenant="stays", key="stays-k"))
    core.ingest(request(T0 + 700, tenant="stays", key="stays-k"))
    rate = core.detectors["rate"]
    assert rate.tracked() == 2  # tenant:stays and key:stays-k
    assert rate.evicted() == 2
