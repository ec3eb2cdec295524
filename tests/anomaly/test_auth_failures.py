"""Authentication-failure bursts per source address."""

from __future__ import annotations

import random

from services.anomaly.detectors.auth_failures import AuthFailureDetector, source_address
from services.anomaly.settings import AuthFailureSettings
from tests.anomaly.support import BUCKET_S, T0, auth_failure, run


def detector() -> AuthFailureDetector:
    return AuthFailureDetector(
        AuthFailureSettings(), bucket_s=BUCKET_S, max_series=1000, idle_buckets=360
    )


def test_a_new_source_hammering_fires_at_once() -> None:
    rng = random.Random(1)
    events = [
        auth_failure(T0 + i * 0.25, f"ipv4:203.0.113.9:{rng.randrange(30000, 60000)}")
        for i in range(40)
    ]
    findings = run(detector(), events)
    assert findings
    first = findings[0]
    assert (first.kind, first.series) == ("auth_failure_burst", "source:ipv4:203.0.113.9")
    assert first.at < T0 + 5
    assert first.observed >= AuthFailureSettings().min_failures


def test_occasional_typos_from_many_sources_raise_nothing() -> None:
    rng = random.Random(2)
    events = []
    for minute in range(120):
        source = f"ipv4:198.51.100.{rng.randrange(1, 20)}:4{minute:04d}"
        events += [auth_failure(T0 + minute * 60 + k, source) for k in range(rng.randint(1, 3))]
    assert run(detector(), events) == []


def test_a_busy_source_learns_its_own_rate() -> None:
    # A NAT in front of many clients fails a few times a minute, all day.
    events = [auth_failure(T0 + i * 15.0, "ipv4:192.0.2.1:1") for i in range(4 * 60 * 3)]
    assert run(detector(), events) == []


def test_the_port_is_not_part_of_the_source() -> None:
    assert source_address("ipv4:203.0.113.9:51234") == "ipv4:203.0.113.9"
    assert source_address("ipv6:[2001:db8::1]:443") == "ipv6:[2001:db8::1]"
    assert source_address("unix:/tmp/sock") == "unix:/tmp/sock"
