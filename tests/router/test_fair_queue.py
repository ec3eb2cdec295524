"""The admission queue: fair by tokens across tenants, priority with aging,
bounded."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.fair_queue import (
    BATCH,
    DEFAULT,
    INTERACTIVE,
    Entry,
    FairQueue,
    QueueFullError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queue(clock: Clock | None = None, **kwargs: float) -> FairQueue:
    settings = {"max_total": 10_000, "max_per_tenant": 10_000, "aging_s": 5.0, **kwargs}
    return FairQueue(
        max_total=int(settings["max_total"]),
        max_per_tenant=int(settings["max_per_tenant"]),
        aging_s=settings["aging_s"],
        clock=clock or Clock(),
    )


def served_tokens(q: FairQueue, budget: float) -> Counter[str]:
    """Pops until `budget` tokens were served; tokens served per tenant."""
    served: Counter[str] = Counter()
    while sum(served.values()) < budget:
        entry = q.pop()
        assert entry is not None
        served[entry.tenant] += int(entry.cost)
    return served


def test_tenants_share_by_tokens_not_requests() -> None:
    q = queue()
    # A sends long requests (1,000 tokens), B short ones (100), both far more
    # than gets served: each should get about half of the tokens.
    for i in range(200):
        q.push("a", DEFAULT, 1000, 1.0, i)
    for i in range(2000):
        q.push("b", DEFAULT, 100, 1.0, i)
    served = served_tokens(q, 100_000)
    assert served["a"] == pytest.approx(served["b"], rel=0.05)


def test_weights_split_tokens_in_proportion() -> None:
    q = queue()
    for i in range(1000):
        q.push("heavy", DEFAULT, 100, 3.0, i)
        q.push("light", DEFAULT, 100, 1.0, i)
    served = served_tokens(q, 40_000)
    assert served["heavy"] / served["light"] == pytest.approx(3.0, rel=0.05)


def test_a_flooding_tenant_does_not_delay_a_newcomer() -> None:
    q = queue()
    for i in range(500):
        q.push("flood", DEFAULT, 100, 1.0, i)
    for _ in range(10):
        q.pop()
    q.push("newcomer", DEFAULT, 100, 1.0, "hello")
    # The newcomer is served within a request or two, not after 490 others.
    firsts = [q.pop() for _ in range(2)]
    assert "newcomer" in [e.tenant for e in firsts if e is not None]


def test_higher_priority_goes_first() -> None:
    q = queue()
    q.push("t", BATCH, 10, 1.0, "batch")
    q.push("t", DEFAULT, 10, 1.0, "default")
    q.push("t", INTERACTIVE, 10, 1.0, "interactive")
    assert [q.pop().item for _ in range(3)] == ["interactive", "default", "batch"]  # type: ignore[union-attr]


def test_aging_lets_low_priority_through_a_steady_stream_of_high() -> None:
    clock = Clock()
    q = queue(clock, aging_s=5.0)
    q.push("batch-tenant", BATCH, 10, 1.0, "old batch job")
    served = []
    # Interactive work keeps arriving; each pop takes 1 s of simulated time.
    for i in range(30):
        q.push("chat", INTERACTIVE, 10, 1.0, f"chat {i}")
        entry = q.pop()
        assert entry is not None
        served.append(entry.item)
        clock.now += 1.0
    assert "old batch job" in served
    # Two classes behind, it waits about 2 x aging_s, not forever.
    assert served.index("old batch job") <= 11


def test_bounds_refuse_with_a_reason() -> None:
    q = queue(max_total=3, max_per_tenant=2)
    q.push("a", DEFAULT, 1, 1.0, 1)
    q.push("a", DEFAULT, 1, 1.0, 2)
    with pytest.raises(QueueFullError) as per_tenant:
        q.push("a", DEFAULT, 1, 1.0, 3)
    assert per_tenant.value.reason == "tenant_queue_full"
    q.push("b", DEFAULT, 1, 1.0, 4)
    with pytest.raises(QueueFullError) as total:
        q.push("c", DEFAULT, 1, 1.0, 5)
    assert total.value.reason == "queue_full"
    assert len(q) == 3


def test_removed_entries_are_skipped_and_free_their_slot() -> None:
    q = queue(max_per_tenant=1)
    gone = q.push("a", DEFAULT, 1, 1.0, "gone")
    q.remove(gone)
    q.push("a", DEFAULT, 1, 1.0, "kept")
    assert q.pop().item == "kept"  # type: ignore[union-attr]
    assert q.pop() is None
    assert len(q) == 0


def test_depths_by_tenant_and_class() -> None:
    q = queue()
    q.push("a", DEFAULT, 100, 1.0, 1)
    q.push("a", DEFAULT, 50, 1.0, 2)
    q.push("a", BATCH, 10, 1.0, 3)
    q.push("b", INTERACTIVE, 7, 1.0, 4)
    assert q.depths() == {
        ("a", DEFAULT): (2, 150.0),
        ("a", BATCH): (1, 10.0),
        ("b", INTERACTIVE): (1, 7.0),
    }


@settings(max_examples=200, deadline=None)
@given(
    costs=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.lists(st.integers(min_value=1, max_value=500), min_size=30, max_size=60),
        min_size=2,
    ),
    weights=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([0.5, 1.0, 2.0, 3.0])
    ),
)
def test_while_all_are_backlogged_no_tenant_falls_behind_by_more_than_one_request(
    costs: dict[str, list[int]], weights: dict[str, float]
) -> None:
    """The fair-queueing guarantee: over any stretch where every tenant has
    work queued, the weighted service of two tenants differs by at most one
    request of each (their largest cost over their weight)."""
    q = queue()
    for tenant, tenant_costs in costs.items():
        for i, cost in enumerate(tenant_costs):
            q.push(tenant, DEFAULT, cost, weights.get(tenant, 1.0), (tenant, i))
    served: Counter[str] = Counter()
    order: dict[str, list[int]] = {t: [] for t in costs}
    while all(len(order[t]) < len(c) for t, c in costs.items()):
        entry = q.pop()
        assert entry is not None
        tenant, index = entry.item
        order[tenant].append(index)
        served[tenant] += int(entry.cost)
        for x in costs:
            for y in costs:
                wx, wy = weights.get(x, 1.0), weights.get(y, 1.0)
                bound = max(costs[x]) / wx + max(costs[y]) / wy
                assert served[x] / wx - served[y] / wy <= bound + 1e-9
    # Each tenant's own requests keep their order.
    assert all(indices == sorted(indices) for indices in order.values())


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "pop", "remove"]), st.sampled_from("abc")),
        max_size=200,
    )
)
def test_bounds_hold_and_nothing_is_lost_whatever_the_sequence(
    ops: list[tuple[str, str]],
) -> None:
    q = queue(max_total=20, max_per_tenant=8)
    waiting: list[Entry] = []
    for op, tenant in ops:
        if op == "push":
            try:
                waiting.append(q.push(tenant, DEFAULT, 10, 1.0, None))
            except QueueFullError:
                assert len(q) == 20 or sum(e.tenant == tenant for e in waiting) == 8
        elif op == "pop":
            entry = q.pop()
            assert (entry is None) == (not waiting)
            if entry is not None:
                waiting.remove(entry)
        elif waiting:
            victim = waiting.pop(0)
            q.remove(victim)
        assert len(q) == len(waiting) <= 20
        assert all(sum(e.tenant == t for e in waiting) <= 8 for t in "abc")


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "take_head", "remove", "take_any"]),
            st.sampled_from("abcdef"),
            st.sampled_from([INTERACTIVE, DEFAULT, BATCH]),
            st.sampled_from([1, 10, 100]),
            st.integers(min_value=0, max_value=1_000),
        ),
        max_size=300,
    )
)
def test_tenant_heads_come_in_order_and_tenants_are_told_as_they_come_and_go(
    ops: list[tuple[str, str, int, int, int]],
) -> None:
    """The heads kept in a heap as the queue changes come out exactly as
    sorting every tenant's oldest entry would give them: by class, then
    start tag, then (ties) the tenant that came first."""
    told: dict[str, bool] = {}
    clock = Clock()
    q = FairQueue(
        max_total=10_000,
        max_per_tenant=10_000,
        aging_s=5.0,
        clock=clock,
        on_tenant=told.__setitem__,
    )
    # The reference: each tenant's entries in arrival order, tenants in the
    # order they came (again at the end after they left).
    by_tenant: dict[str, list[Entry]] = {}
    for op, tenant, priority, cost, pick in ops:
        clock.now += 0.01
        waiting = [e for entries in by_tenant.values() for e in entries]
        if op == "push":
            by_tenant.setdefault(tenant, []).append(q.push(tenant, priority, cost, 1.0, None))
        elif op == "take_head" and (entry := q.peek()) is not None:
            q.take(entry)
        elif op == "take_any" and waiting:
            q.take(waiting[pick % len(waiting)])
        elif op == "remove" and waiting:
            q.remove(waiting[pick % len(waiting)])
        for t in list(by_tenant):
            by_tenant[t] = [e for e in by_tenant[t] if not e.removed]
            if not by_tenant[t]:
                del by_tenant[t]
        expected = sorted(
            (entries[0] for entries in by_tenant.values()),
            key=lambda e: (e.priority, e.start_tag),
        )
        assert list(q.tenant_heads()) == expected
        assert {t for t, waits in told.items() if waits} == set(by_tenant)
        assert set(q.tenants()) == set(by_tenant)


def test_heads_of_tenants_gone_do_not_pile_up() -> None:
    q = queue()
    for round_ in range(100):
        entries = [q.push(f"t{round_}-{i}", DEFAULT, 10, 1.0, None) for i in range(50)]
        for entry in entries[1:]:
            q.remove(entry)  # below the heap's top: they leave lazily
        q.take(entries[0])
    q.push("last", DEFAULT, 10, 1.0, None)
    assert [e.tenant for e in q.tenant_heads()] == ["last"]
    assert len(q._heads) <= 2 * 1 + 16  # the rebuild's bound
