"""The tenants sharing a model's slots, kept as counts: running, waiting, or
seen within the memory; bounded however many tenant ids come."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.tenants import ActiveTenants


def test_a_tenant_counts_while_running_waiting_or_recently_seen() -> None:
    tenants = ActiveTenants(memory_s=60.0, max_remembered=100)
    tenants.saw("a", 0.0)
    tenants.started("b")
    tenants.waiting("c", True)
    assert tenants.count(1.0) == 3
    tenants.saw("b", 1.0)  # running and seen: still one tenant
    tenants.waiting("a", True)
    assert tenants.count(2.0) == 3
    # A minute on: "a" waits, "b" runs, "c" waits; none is forgotten.
    assert tenants.count(100.0) == 3
    tenants.waiting("a", False)
    tenants.ended("b")
    tenants.waiting("c", False)
    assert tenants.count(100.0) == 0


def test_a_tenant_is_forgotten_a_memory_after_it_last_asked() -> None:
    tenants = ActiveTenants(memory_s=60.0, max_remembered=100)
    tenants.saw("a", 0.0)
    tenants.saw("b", 10.0)
    tenants.saw("a", 30.0)  # asked again: remembered from then
    assert tenants.count(65.0) == 2
    assert tenants.count(75.0) == 1
    assert tenants.count(95.0) == 0


def test_running_counts_each_slot() -> None:
    tenants = ActiveTenants(memory_s=60.0, max_remembered=100)
    tenants.started("a")
    tenants.started("a")
    assert tenants.running("a") == 2
    tenants.ended("a")
    assert (tenants.running("a"), tenants.count(0.0)) == (1, 1)
    tenants.ended("a")
    assert (tenants.running("a"), tenants.count(0.0)) == (0, 0)


def test_past_the_bound_the_half_seen_longest_ago_is_forgotten() -> None:
    tenants = ActiveTenants(memory_s=1e9, max_remembered=10)
    for i in range(11):
        tenants.saw(f"t{i}", float(i))
    assert tenants.count(11.0) == 6  # 11 seen, the 5 oldest forgotten
    tenants.saw("t6", 12.0)
    tenants.saw("new", 13.0)
    assert tenants.count(13.0) == 7


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["saw", "start", "end", "wait", "leave", "tick"]),
            st.sampled_from("abcdefgh"),
        ),
        max_size=200,
    )
)
def test_the_count_is_the_union_of_running_waiting_and_recently_seen(
    ops: list[tuple[str, str]],
) -> None:
    """Against the plain definition: a set union over the three, with the
    seen ones older than the memory dropped (the way the dispatcher counted
    before)."""
    memory_s, now = 5.0, 0.0
    tenants = ActiveTenants(memory_s=memory_s, max_remembered=1_000)
    seen: dict[str, float] = {}
    running: dict[str, int] = {}
    waiting: set[str] = set()
    for op, tenant in ops:
        if op == "saw":
            tenants.saw(tenant, now)
            seen[tenant] = now
        elif op == "start":
            tenants.started(tenant)
            running[tenant] = running.get(tenant, 0) + 1
        elif op == "end" and running.get(tenant):
            tenants.ended(tenant)
            running[tenant] -= 1
        elif op == "wait":
            tenants.waiting(tenant, True)
            waiting.add(tenant)
        elif op == "leave":
            tenants.waiting(tenant, False)
            waiting.discard(tenant)
        elif op == "tick":
            now += 1.0
        seen = {t: at for t, at in seen.items() if at >= now - memory_s}
        expected = set(seen) | {t for t, n in running.items() if n} | waiting
        assert tenants.count(now) == len(expected)
        assert all(tenants.running(t) == running.get(t, 0) for t in "abcdefgh")
