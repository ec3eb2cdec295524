"""The per-model index of replicas (pool.py) against a brute-force scan: over
random sequences of leases taken and ended, new limits and latencies, load
reports, probes, drains, ejections (ending with time), replicas turning up
and down and joining, adapters' requests started and ended, adapters
reported loaded and adapter slots changed, the pool's members, sums and
choice are exactly what a scan over the replica set finds (choice.choose and
choice.choose_for_adapter, the references)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.errors import MeshError, NotFoundError
from services.router.choice import choose, choose_for_adapter, choose_for_adapter_in, choose_in
from services.router.limiter import GradientLimiter
from services.router.pool import VECTOR_FROM, rendezvous
from services.router.replica import Replica, ReplicaLoad
from services.router.replicas import ReplicaSet

MODELS = ("m", "n")
ADAPTERS = ("a0", "a1", "a2", "a3")


@pytest.fixture(scope="module")
def telemetry() -> Iterator[Telemetry]:
    tel = setup("router", TelemetrySettings(log_level="WARNING"))
    yield tel
    tel.shutdown()


class World:
    """A replica set driven by random events, its clock moved by hand."""

    def __init__(self, telemetry: Telemetry, rng: random.Random, size: int) -> None:
        self.rng = rng
        self.now = 100.0
        self.set = ReplicaSet(
            [f"10.0.0.{i}:1" for i in range(size)],
            telemetry,
            limiter=self.limiter,
            clock=lambda: self.now,
        )
        for r in self.set.replicas:
            self.set_up(r)

    def limiter(self) -> GradientLimiter:
        cap = self.rng.choice([1, 2, 4, 7, 10, 32])
        # A floor of 0 lets `cap_at(0)` leave a replica no slot at all.
        return GradientLimiter(initial=cap, max_limit=cap, min_limit=self.rng.choice([0, 1]))

    def set_up(self, r: Replica) -> None:
        # Fields set by hand, as the tests elsewhere do: the index must follow.
        r.model = generation_pb2.ModelInfo(name=self.rng.choice(MODELS))
        r.adapters = ("lora",) if self.rng.random() < 0.3 else ()
        r.adapter_slots = self.rng.choice([0, 0, 1, 2, 3])
        r.serving = self.rng.random() < 0.9

    def step(self) -> None:
        rng = self.rng
        r = rng.choice(self.set.replicas)
        limiter = r.limiter
        event = rng.randrange(15)
        if event <= 3:
            limiter.acquire()
        elif event <= 5:
            if limiter.in_flight > 0:
                limiter.on_sample(rng.uniform(0.01, 0.3), limiter.in_flight, rng.uniform(0, 0.2))
                limiter.release()
        elif event == 6:
            r.load = ReplicaLoad(
                running=rng.randrange(12),
                waiting=rng.randrange(4),
                kv_cache_usage=rng.choice([0.1, 0.5, 0.99]),
                loaded_adapters=tuple(a for a in ADAPTERS if rng.random() < 0.3),
            )
        elif event == 7:
            r.probing = not r.probing
        elif event == 8:
            r.draining = rng.random() < 0.3
        elif event == 9:
            r.ejected_until = self.now + rng.uniform(0, 5) if rng.random() < 0.3 else 0.0
        elif event == 10:
            choice = rng.randrange(4)
            if choice == 0:
                r.serving = not r.serving
            elif choice == 1:
                self.set_up(self.set.register(f"10.0.1.{rng.randrange(256)}:1"))
            elif choice == 2:
                r.limiter = self.limiter()
            else:
                limiter.cap_at(rng.choice([0, 1, 3, 8, 64]))
        elif event == 11:
            self.now += rng.uniform(0, 2)
        elif event == 12:
            r.adapter_started(rng.choice(ADAPTERS))
        elif event == 13:
            if r.adapter_in_flight:
                r.adapter_ended(rng.choice(sorted(r.adapter_in_flight)), self.now)
        elif rng.random() < 0.5:
            r.adapter_slots = rng.choice([0, 1, 2, 3])
        else:
            r.load = ReplicaLoad(loaded_adapters=tuple(a for a in ADAPTERS if rng.random() < 0.4))

    def scan(self, model: str) -> list[Replica]:
        known = [r for r in self.set.replicas if r.serves(model)]
        return [r for r in known if r.takes_work(self.now)]


def check(world: World, model: str) -> None:
    assert world.set.any_serving() == any(r.serving for r in world.set.replicas)
    try:
        pool = world.set.pool(model)
    except MeshError as err:
        with pytest.raises(type(err)):
            world.set.candidates(model)
        assert not world.scan(model)
        return
    scan = world.scan(model)
    assert pool.members == scan
    assert pool.in_flight == sum(r.limiter.in_flight for r in scan)
    assert pool.slots == sum(r.slots for r in scan)
    assert pool.free == sum(max(0, r.slots - r.limiter.in_flight) for r in scan)
    assert pool.capacity([]) == math.fsum(r.limiter.limit for r in scan)
    assert pool.any_room() == any(r.has_room() for r in scan)
    assert pool.min_expected_latency() == min(r.limiter.expected_latency for r in scan)
    rng = world.rng
    for _ in range(4):
        key = rng.choice([None, rng.getrandbits(64), 7, 11])
        exclude = frozenset(r.address for r in scan if rng.random() < 0.2)
        if rng.random() < 0.1:
            exclude = frozenset(r.address for r in scan)  # failed everywhere
        share = rng.choice([0.0, 0.1, 0.25, 0.5, 0.9])
        slack = rng.choice([0.0, 0.25, 1.0])
        expected = choose(scan, key, slack=slack, exclude=exclude, reserve_share=share)
        got = choose_in(pool, key, slack=slack, exclude=exclude, reserve_share=share)
        assert got is expected
        adapter = rng.choice([*ADAPTERS, "never-held"])
        idle = rng.choice([0.0, 0.5, 3.0])
        expected = choose_for_adapter(
            scan,
            adapter,
            now=world.now,
            min_idle_s=idle,
            exclude=exclude,
            reserve_share=share,
        )
        got = choose_for_adapter_in(
            pool,
            adapter,
            now=world.now,
            min_idle_s=idle,
            exclude=exclude,
            reserve_share=share,
        )
        assert got is expected


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 40), steps=st.integers(1, 120))
def test_the_pool_matches_a_scan_of_the_replicas(
    telemetry: Telemetry, seed: int, size: int, steps: int
) -> None:
    world = World(telemetry, random.Random(seed), size)
    for _ in range(steps):
        world.step()
        check(world, world.rng.choice([*MODELS, "lora"]))


def test_a_busy_pool_keeps_its_heaps_small(telemetry: Telemetry) -> None:
    """Stale heap entries are swept: many leases on few replicas leave the
    heaps within a bounded multiple of the replicas."""
    world = World(telemetry, random.Random(1), 4)
    for r in world.set.replicas:
        r.model = generation_pb2.ModelInfo(name="m")
        r.serving = True
        r.limiter = GradientLimiter(initial=32, max_limit=32)
    pool = world.set.pool("m")
    for i in range(10_000):
        r = world.set.replicas[i % 4]
        r.limiter.acquire()
        r.limiter.on_sample(0.01 + i * 1e-6, r.limiter.in_flight)
        r.limiter.release()
    assert len(pool._by_utilization._entries) <= 3 * 4 + 16
    assert len(pool._by_latency._entries) <= 3 * 4 + 16
    check(world, "m")


def test_a_model_nobody_serves_leaves_no_pool(telemetry: Telemetry) -> None:
    """Made-up model names cost a scan each, never memory."""
    world = World(telemetry, random.Random(2), 3)
    for i in range(100):
        with pytest.raises(NotFoundError):
            world.set.pool(f"made-up-{i}")
    assert set(world.set._pools) == set()


def test_rendezvous_over_many_replicas_is_the_scan_s(telemetry: Telemetry) -> None:
    """Past VECTOR_FROM replicas the scores come from one numpy array: the
    winner, and the next ones when the first are excluded, are max()'s."""
    world = World(telemetry, random.Random(3), 3 * VECTOR_FROM)
    for r in world.set.replicas:
        r.model = generation_pb2.ModelInfo(name="m")
        r.serving = True
        r.draining = False
    pool = world.set.pool("m")
    assert len(pool.members) == 3 * VECTOR_FROM
    rng = random.Random(4)
    for key in [0, 2**64 - 1, *(rng.getrandbits(64) for _ in range(300))]:
        skip = frozenset(r.address for r in pool.members if rng.random() < 0.05)
        usable = [r for r in pool.members if r.address not in skip]
        assert pool.preferred(key, skip) is max(usable, key=lambda r: rendezvous(key, r))
