"""Which alerts the policy acts on, and how: pure decisions, no gRPC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.anomaly.alerts import Alert, Severity
from services.anomaly.policy import Action, Policy, RestrictionOrder
from services.anomaly.settings import AnomalySettings, PolicyRule, PolicySettings

AT = datetime(2026, 11, 22, tzinfo=UTC)


def alert(
    kind: str = "request_rate_spike",
    series: str = "key:k1",
    severity: Severity = Severity.WARNING,
    alert_id: str = "a1",
) -> Alert:
    return Alert(
        alert_id=alert_id,
        kind=kind,
        series=series,
        tenant_id="acme",
        severity=severity,
        score=12.0,
        observed=40.0,
        expected=2.0,
        count=1,
        first_seen=AT,
        last_seen=AT,
        detail="40 requests in 5 s, 2 expected",
    )


def test_by_default_a_key_spike_throttles_the_key_and_a_tenant_spike_the_tenant() -> None:
    policy = Policy(PolicySettings())
    tenant = policy.decide(alert(series="tenant:acme", alert_id="a2"))
    key = policy.decide(alert(series="key:k1", alert_id="a1"))
    tokens = policy.decide(alert(kind="token_rate_spike", series="key:k2", alert_id="a3"))
    assert key is not None and (key.verb, key.target) == ("throttle_key", "k1")
    assert key.duration_s == 900 and key.requests_per_minute == 60
    assert tenant is not None and (tenant.verb, tenant.target) == ("throttle_tenant", "acme")
    assert tokens is not None and tokens.verb == "throttle_key"


def test_an_alert_is_acted_on_once_however_often_it_is_updated() -> None:
    policy = Policy(PolicySettings())
    assert policy.decide(alert()) is not None
    assert policy.decide(alert(severity=Severity.CRITICAL)) is None
    assert policy.decide(alert(alert_id="a-new-one")) is not None


def test_error_bursts_eject_replicas_but_do_nothing_to_tenants() -> None:
    policy = Policy(PolicySettings())
    replica = policy.decide(alert(kind="error_burst", series="replica:10.0.0.1:8000"))
    assert replica is not None
    assert (replica.verb, replica.target) == ("eject_replica", "10.0.0.1:8000")
    assert replica.duration_s == 60
    assert policy.decide(alert(kind="error_burst", series="tenant:acme", alert_id="x")) is None


def test_kinds_without_a_rule_are_only_reported() -> None:
    policy = Policy(PolicySettings())
    for i, kind in enumerate(
        ("request_rate_shift", "ttft_regression", "auth_failure_burst", "traffic_mix")
    ):
        assert policy.decide(alert(kind=kind, alert_id=str(i))) is None


def test_suspension_needs_allow_suspend_even_when_a_rule_asks_for_it() -> None:
    rules = {"request_rate_spike": PolicyRule(action="suspend", duration_s=300)}
    assert Policy(PolicySettings(rules=rules)).decide(alert()) is None
    allowed = Policy(PolicySettings(rules=rules, allow_suspend=True)).decide(alert())
    assert allowed is not None and (allowed.verb, allowed.duration_s) == ("suspend_key", 300)


def test_a_rule_for_critical_alerts_ignores_warnings() -> None:
    rules = {"request_rate_spike": PolicyRule(action="throttle", min_severity="critical")}
    policy = Policy(PolicySettings(rules=rules))
    assert policy.decide(alert(severity=Severity.WARNING)) is None
    assert policy.decide(alert(severity=Severity.CRITICAL)) is not None


def test_rules_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MAAS_ANOMALY_POLICY__RULES",
        '{"ttft_regression": {"action": "eject", "duration_s": 120}}',
    )
    monkeypatch.setenv("MAAS_ANOMALY_POLICY__ROUTER_ADDRESS", "127.0.0.1:50053")
    settings = AnomalySettings()
    assert settings.policy.enabled
    assert settings.policy.rules == {"ttft_regression": PolicyRule(action="eject", duration_s=120)}


def test_a_tenant_is_spared_while_one_of_its_keys_is_throttled_for_the_same_spike() -> None:
    now = [0.0]
    policy = Policy(PolicySettings(), clock=lambda: now[0])
    key = policy.decide(alert(series="key:k1", alert_id="a1"))
    assert key is not None and key.verb == "throttle_key"
    assert policy.decide(alert(series="tenant:acme", alert_id="a2")) is None
    # Another kind, or the same kind once the key's throttle has run out, acts on the tenant.
    other = policy.decide(alert(kind="token_rate_spike", series="tenant:acme", alert_id="a3"))
    assert other is not None and other.verb == "throttle_tenant"
    now[0] += 901
    later = policy.decide(alert(series="tenant:acme", alert_id="a4"))
    assert later is not None and later.verb == "throttle_tenant"


def test_a_restricting_action_becomes_one_order_for_auth() -> None:
    spike = alert(series="key:k1", alert_id="a9")
    throttle = Action("throttle_key", "k1", duration_s=900, requests_per_minute=60, alert=spike)
    suspend = Action("suspend_tenant", "acme", duration_s=60, requests_per_minute=0, alert=spike)
    assert RestrictionOrder.for_action(throttle, "why") == RestrictionOrder(
        subject="key",
        target="k1",
        suspend=False,
        requests_per_minute=60,
        duration_s=900,
        reason="why",
        actor="policy:request_rate_spike",
        alert_id="a9",
    )
    order = RestrictionOrder.for_action(suspend, "why")
    assert (order.subject, order.target, order.suspend) == ("tenant", "acme", True)


def test_an_ejection_is_no_restriction_order() -> None:
    eject = Action("eject_replica", "10.0.0.1:8000", 60, 0, alert(kind="error_burst"))
    with pytest.raises(ValueError, match="restricts nothing"):
        RestrictionOrder.for_action(eject, "why")
