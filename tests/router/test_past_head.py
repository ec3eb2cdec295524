"""Looking past a head that waits for an adapter slot (dispatcher.py's
`_from_reserve` and `_past_adapter_head`), fast against brute force: over
random sequences of requests (tenants, adapters, replicas excluded),
leases ending, load reports naming loaded adapters, cancels and time
passing, a dispatcher that skips heads whose adapter cannot be placed and
remembers the heads found blocked within a pump grants exactly the leases,
in the same order and on the same replicas, and marks exactly the floods,
that one scanning every tenant's head each time grants and marks (the
scans as they were, kept here as the reference). So it never leaves a
placeable request waiting."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.router.dispatcher import UNUSED, Dispatcher, FlowPolicy, Lease, Ticket
from services.router.fair_queue import BATCH, DEFAULT, INTERACTIVE, Entry, FairQueue
from services.router.limiter import GradientLimiter
from services.router.pool import ModelPool
from services.router.replica import Replica, ReplicaLoad
from services.router.replicas import ReplicaSet

MODEL = "m"
ADAPTERS = ("", "a0", "a1", "a2", "a3", "a4")


@pytest.fixture(scope="module")
def telemetry() -> Iterator[Telemetry]:
    tel = setup("router", TelemetrySettings(log_level="WARNING"))
    yield tel
    tel.shutdown()


class ScanningDispatcher(Dispatcher):
    """The reference: every scan past the head tries every tenant's head,
    each with the full replica choice (the scans before the skip)."""

    def _from_reserve(
        self, model: str, candidates: ModelPool, queue: FairQueue
    ) -> tuple[Entry | None, Replica | None]:
        if not candidates.any_room():
            return None, None
        share = self._fair_share(model, candidates)
        for head in queue.tenant_heads():
            ticket, future = head.item
            if future.done() or not self._holds_less_than(ticket, share):
                continue
            replica = self._choose(candidates, ticket, 0.0)
            if replica is not None:
                return head, replica
        return None, None

    def _past_adapter_head(
        self, candidates: ModelPool, queue: FairQueue
    ) -> tuple[Entry | None, Replica | None]:
        if not candidates.any_room():
            return None, None
        for head in queue.tenant_heads():
            ticket, future = head.item
            if future.done():
                continue
            replica = self._place(candidates, ticket)
            if replica is not None:
                return head, replica
        return None, None


class World:
    """One dispatcher over replicas with adapter slots, on a clock moved by hand."""

    def __init__(
        self, telemetry: Telemetry, seed: int, kind: type[Dispatcher], policy: FlowPolicy
    ) -> None:
        rng = random.Random(seed)
        self.now = 100.0
        caps = [rng.choice([1, 2, 3, 4]) for _ in range(rng.randint(1, 6))]
        self.set = ReplicaSet(
            [f"10.0.0.{i}:1" for i in range(len(caps))],
            telemetry,
            limiter=lambda: GradientLimiter(initial=4, max_limit=4),
            clock=lambda: self.now,
        )
        for r, cap in zip(self.set.replicas, caps, strict=True):
            r.limiter = GradientLimiter(initial=cap, max_limit=cap)
            # Mostly slotted; now and then one with none (it takes any request).
            slots = rng.choice([0, 1, 1, 2, 2, 3]) if rng.random() < 0.9 else 0
            self.set.set_model(r, generation_pb2.ModelInfo(name=MODEL), (), cap, slots)
            self.set.set_serving(r, True)
        self.dispatcher = kind(self.set, policy)
        self.tasks: list[asyncio.Task[Lease]] = []
        self.granted: list[tuple[float, str]] = []
        self.held: list[Lease] = []

    def acquire(self, ticket: Ticket) -> None:
        task = asyncio.get_running_loop().create_task(self.dispatcher.acquire(ticket))
        task.add_done_callback(self._done)
        self.tasks.append(task)

    def _done(self, task: asyncio.Task[Lease]) -> None:
        if not task.cancelled() and task.exception() is None:
            lease = task.result()
            self.granted.append((lease.ticket.cost, lease.replica.address))
            self.held.append(lease)

    def state(self) -> tuple[object, ...]:
        headroom = self.dispatcher._headroom_of(MODEL)
        return (
            self.granted,
            self.dispatcher.waiting(),
            sorted(headroom._floods),
            headroom.held,
            [sorted(r.adapter_in_flight.items()) for r in self.set.replicas],
        )


async def scenario(telemetry: Telemetry, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    policy = FlowPolicy(
        max_queue=10_000,
        max_queue_per_tenant=10_000,
        # Far past the test's run on the event loop's clock: no waiter times
        # out and no hold timer fires; on the worlds' clock it passes.
        max_queue_wait_s=1e6,
        adapter_idle_s=rng.choice([0.0, 30.0, 30.0]),
        reserved_share=rng.choice([0.0, 0.25, 0.5]),
        light_headroom=rng.choice([0.0, 2.0]),
        tenant_memory_s=rng.choice([20.0, 60.0]),
        choice=rng.choice(["affinity", "least_loaded"]),
        aging_s=rng.choice([5.0, 1e6]),
    )
    fast = World(telemetry, seed, Dispatcher, policy)
    reference = World(telemetry, seed, ScanningDispatcher, policy)
    worlds = (fast, reference)
    tenants = [f"t{i}" for i in range(rng.randint(1, 8))]
    addresses = [r.address for r in fast.set.replicas]
    for seq in range(steps):
        event = rng.randrange(10)
        if event <= 4:
            ticket = Ticket(
                tenant=rng.choice(tenants),
                priority=rng.choice([INTERACTIVE, DEFAULT, BATCH]),
                model=MODEL,
                # Which request a lease is, as both worlds see it.
                cost=float(seq + 1),
                adapter_id=rng.choice(ADAPTERS),
                exclude=frozenset(a for a in addresses if rng.random() < 0.15),
                prefix_key=rng.choice([None, 1, 2]),
                received_at=fast.now,
            )
            for world in worlds:
                world.acquire(ticket)
        elif event <= 6:
            if fast.held:
                i = rng.randrange(len(fast.held))
                for world in worlds:
                    world.dispatcher.release(world.held.pop(i), UNUSED)
        elif event == 7:
            i = rng.randrange(len(addresses))
            loaded = tuple(a for a in ADAPTERS[1:] if rng.random() < 0.3)
            load = ReplicaLoad(loaded_adapters=loaded, running=rng.randrange(3))
            for world in worlds:
                world.set.set_load(world.set.replicas[i], load)
        elif event == 8:
            waiting = [i for i, t in enumerate(fast.tasks) if not t.done()]
            if waiting:
                i = rng.choice(waiting)
                for world in worlds:
                    world.tasks[i].cancel()
        else:
            step = rng.uniform(0.0, 40.0)
            for world in worlds:
                world.now += step
                world.dispatcher.pump()
        # Each world's granted waiters resume and cancelled ones leave the queue.
        for _ in range(4):
            await asyncio.sleep(0)
        assert fast.state() == reference.state()
    for world in worlds:
        for task in world.tasks:
            task.cancel()
        await asyncio.gather(*world.tasks, return_exceptions=True)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 150))
def test_skipping_heads_places_exactly_what_a_full_scan_places(
    telemetry: Telemetry, seed: int, steps: int
) -> None:
    asyncio.run(scenario(telemetry, seed, steps))


def one_replica(telemetry: Telemetry, cap: int, adapter_slots: int) -> ReplicaSet:
    """One replica of `cap` slots, on a clock that stands still."""
    replicas = ReplicaSet(
        ["10.0.0.1:1"],
        telemetry,
        limiter=lambda: GradientLimiter(initial=cap, max_limit=cap),
        clock=lambda: 100.0,
    )
    r = replicas.replicas[0]
    replicas.set_model(r, generation_pb2.ModelInfo(name=MODEL), (), cap, adapter_slots)
    replicas.set_serving(r, True)
    return replicas


def request(tenant: str, priority: int = DEFAULT, adapter: str = "", at: float = 100.0) -> Ticket:
    return Ticket(
        tenant=tenant, priority=priority, model=MODEL, cost=100, adapter_id=adapter, received_at=at
    )


async def settled(*tasks: asyncio.Task[Lease]) -> list[bool]:
    for _ in range(4):
        await asyncio.sleep(0)
    return [t.done() for t in tasks]


async def test_a_request_found_blocked_goes_in_the_same_pump_once_its_adapter_is_loaded(
    telemetry: Telemetry,
) -> None:
    """Placing a request can load an adapter: a request of that adapter found
    blocked earlier in the pump may then go, and does (no stale memory)."""
    now = [100.0]
    replicas = ReplicaSet(
        ["10.0.0.1:1"],
        telemetry,
        limiter=lambda: GradientLimiter(initial=4, max_limit=4),
        clock=lambda: now[0],
    )
    r = replicas.replicas[0]
    replicas.set_model(r, generation_pb2.ModelInfo(name=MODEL), (), 4, 1)
    replicas.set_serving(r, True)
    # No aging: the later request stays ahead in line.
    policy = FlowPolicy(adapter_idle_s=30.0, max_queue_wait_s=1e6, aging_s=1e6)
    dispatcher = Dispatcher(replicas, policy)
    # Y ran here, is loaded, and ended at 100: its slot may be taken by a
    # request that has waited out the 30 s hold less Y's idle time.
    lease = await dispatcher.acquire(request("ty", adapter="Y"))
    replicas.set_load(r, ReplicaLoad(loaded_adapters=("Y",)))
    dispatcher.release(lease, UNUSED)
    early = asyncio.create_task(dispatcher.acquire(request("tf", adapter="X", at=100.0)))
    assert await settled(early) == [False]
    now[0] = 125.0
    # Ahead in line, but too recent to evict Y: found blocked, then `early`
    # evicts Y and loads X, which it can join.
    late = asyncio.create_task(
        dispatcher.acquire(request("te", priority=INTERACTIVE, adapter="X", at=125.0))
    )
    assert await settled(early, late) == [True, True]
    assert r.adapter_in_flight["X"] == 2


async def test_a_flood_marked_in_a_scan_frees_headroom_for_a_request_found_blocked(
    telemetry: Telemetry,
) -> None:
    """Marking a flood (its slots stop counting as light) lowers the
    headroom kept for light tenants: a request found blocked by it earlier
    in the pump may then go, and does."""
    replicas = one_replica(telemetry, cap=14, adapter_slots=1)
    dispatcher = Dispatcher(replicas, FlowPolicy(max_queue_wait_s=1e6))
    r = replicas.replicas[0]
    # Five tenants share 14 slots: 2.8 each.
    dispatcher.release(await dispatcher.acquire(request("h")), UNUSED)
    held = [await dispatcher.acquire(request("l", adapter="Y"))]  # the adapter slot, in use
    for tenant in ("z", "w", "k"):
        held += [await dispatcher.acquire(request(tenant)) for _ in range(3)]
    # 10 light slots taken, 4 free: headroom of 6 kept; past their share,
    # z, w and k wait (w ahead of z, z ahead of k), and k, then w, are
    # marked floods as each is tried at the head.
    k = asyncio.create_task(dispatcher.acquire(request("k", priority=BATCH)))
    w = asyncio.create_task(dispatcher.acquire(request("w")))
    z = asyncio.create_task(dispatcher.acquire(request("z")))
    assert await settled(k, w, z) == [False, False, False]
    assert dispatcher._headroom_of(MODEL).to_keep_free() == 4  # l's 1 and z's 3 light slots
    # A head that waits for an adapter slot: the pump looks past it. w is
    # blocked (3 free after it < 4), z is marked a flood (headroom 2), k
    # goes; then w goes too (2 free after it >= 2).
    h = asyncio.create_task(dispatcher.acquire(request("h", priority=INTERACTIVE, adapter="X")))
    assert await settled(k, w, z, h) == [True, True, False, False]
    assert r.limiter.in_flight == 12
