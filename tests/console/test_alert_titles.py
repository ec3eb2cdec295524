"""A budget_threshold alert's title names the budget and its spend against
the threshold, from the alert the anomaly service's detector raises."""

from __future__ import annotations

from maas.v1 import anomaly_pb2
from services.console.views import alert_row


def budget_alert(series: str, spent_micros: int, threshold_micros: int) -> anomaly_pb2.Alert:
    # As services/anomaly/detectors/budgets.py reports them: currency units as doubles.
    return anomaly_pb2.Alert(
        alert_id="a1",
        kind="budget_threshold",
        series=series,
        observed=spent_micros / 1_000_000,
        expected=threshold_micros / 1_000_000,
        detail="raw detail",
    )


def test_a_tenant_monthly_budget_alert_is_titled_with_its_spend_and_threshold() -> None:
    row = alert_row(budget_alert("t1/budget:tenant:monthly", 144, 100))
    assert row["title"] == (
        "Monthly budget of the tenant: spent 0.000144, past its soft threshold of 0.0001"
    )


def test_a_key_lifetime_budget_alert_names_the_key() -> None:
    # 2_500_000_001 micro-units: exact through the detector's double and back.
    row = alert_row(budget_alert("t1/budget:key:k9:total", 2_500_000_001, 2_000_000_000))
    assert row["title"] == (
        "Lifetime budget of key k9: spent 2500.000001, past its soft threshold of 2000.00"
    )


def test_other_alerts_keep_their_detail_untitled() -> None:
    other = anomaly_pb2.Alert(alert_id="a2", kind="request_rate_spike", series="tenant:t1")
    assert alert_row(other)["title"] == ""
