"""The auth request the policy's actuator sends for an order: no gRPC."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from maas.v1 import auth_pb2
from services.anomaly.actuator import REASON_LIMIT, restrict_request
from services.anomaly.policy import RestrictionOrder

THROTTLE = RestrictionOrder(
    subject="key",
    target="k1",
    suspend=False,
    requests_per_minute=60,
    duration_s=90.5,
    reason="request_rate_spike on key:k1: 40 requests in 5 s",
    actor="policy:request_rate_spike",
    alert_id="a1",
)


def test_a_throttle_names_the_key_its_rate_and_its_duration() -> None:
    request = restrict_request(THROTTLE)
    assert request.action == auth_pb2.RESTRICTION_ACTION_THROTTLE
    assert (request.key_id, request.tenant_id) == ("k1", "")
    assert request.requests_per_minute == 60
    assert request.duration.ToTimedelta() == timedelta(seconds=90.5)
    assert (request.actor, request.alert_id) == ("policy:request_rate_spike", "a1")
    assert request.reason == THROTTLE.reason


def test_a_suspension_of_a_tenant_carries_no_rate() -> None:
    order = RestrictionOrder(
        subject="tenant",
        target="acme",
        suspend=True,
        requests_per_minute=60,
        duration_s=60,
        reason="r",
        actor="policy:auth_failure_burst",
        alert_id="a2",
    )
    request = restrict_request(order)
    assert request.action == auth_pb2.RESTRICTION_ACTION_SUSPEND
    assert (request.key_id, request.tenant_id) == ("", "acme")
    assert request.requests_per_minute == 0


def test_a_long_reason_is_cut_to_what_auth_accepts() -> None:
    long = replace(THROTTLE, reason="x" * (REASON_LIMIT * 2))
    assert restrict_request(long).reason == "x" * REASON_LIMIT
