"""A caller's budget of refusals: spent one refusal at a time, refilled over
time, and once spent its requests are refused with the wait until it refills."""

from __future__ import annotations

import pytest

from gateway.refusals import RefusalBudget, peer_host
from services.common.errors import ResourceExhaustedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_is_refused_unread_once_its_refusals_are_spent() -> None:
    clock = FakeClock()
    budget = RefusalBudget(per_s=2.0, burst=3, subject="refused_requests", clock=clock)
    for _ in range(3):
        budget.check("tenant-a")
        budget.refused("tenant-a")
    with pytest.raises(ResourceExhaustedError) as spent:
        budget.check("tenant-a")
    assert spent.value.subject == "refused_requests"
    assert spent.value.retry_after_s == pytest.approx(0.5)
    budget.check("tenant-b")  # another caller's budget is its own
    clock.now += 0.5
    budget.check("tenant-a")  # one refusal's worth came back


def test_the_budget_refills_to_its_burst_and_no_further() -> None:
    clock = FakeClock()
    budget = RefusalBudget(per_s=1.0, burst=2, subject="s", clock=clock)
    budget.refused("a")
    clock.now += 3600
    budget.refused("a")
    budget.refused("a")
    with pytest.raises(ResourceExhaustedError):
        budget.check("a")


def test_callers_remembered_are_bounded() -> None:
    budget = RefusalBudget(per_s=1.0, burst=1, subject="s", max_callers=2, clock=FakeClock())
    for caller in ("a", "b", "c"):
        budget.refused(caller)
    budget.check("a")  # forgotten, the oldest: a fresh budget
    with pytest.raises(ResourceExhaustedError):
        budget.check("c")


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:53122", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:50051", "ipv6:[::1]"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_connections_from_one_host_share_a_budget(peer: str, host: str) -> None:
    assert peer_host(peer) == host
