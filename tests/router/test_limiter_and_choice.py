"""The adaptive concurrency limit and the choice of replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from maas.v1 import generation_pb2
from services.router.choice import choose, prefix_key, round_robin
from services.router.limiter import GradientLimiter
from services.router.replica import Replica, ReplicaLoad


def test_the_limit_grows_while_nothing_queues_in_the_engine() -> None:
    limiter = GradientLimiter(initial=4, max_limit=64)
    for _ in range(200):
        limiter.on_sample(0.010, in_flight=int(limiter.limit), queued_s=0.0)
    assert limiter.limit == 64


def test_a_bigger_batch_with_a_slower_first_token_is_not_queueing() -> None:
    # Prefill of a bigger batch makes the first token slower; without queueing
    # in the engine that is no reason to send less.
    limiter = GradientLimiter(initial=16, max_limit=64)
    for i in range(200):
        limiter.on_sample(0.010 + i * 0.001, in_flight=int(limiter.limit), queued_s=0.001)
    assert limiter.limit == 64


def test_the_limit_shrinks_when_requests_queue_in_the_engine() -> None:
    limiter = GradientLimiter(initial=40, max_limit=64)
    for _ in range(300):
        limiter.on_sample(0.010, in_flight=int(limiter.limit), queued_s=0.0)
    before = limiter.limit
    for _ in range(30):
        # Most of the first token's wait is queueing behind others.
        limiter.on_sample(0.100, in_flight=int(limiter.limit), queued_s=0.090)
    assert limiter.limit < before / 2


def test_an_idle_replica_does_not_move_its_limit() -> None:
    limiter = GradientLimiter(initial=16, max_limit=64)
    for _ in range(100):
        limiter.on_sample(0.010, in_flight=1, queued_s=0.5)
    assert limiter.limit == 16


def test_the_limit_starts_at_the_replica_batch_size_and_never_passes_it() -> None:
    limiter = GradientLimiter(initial=32, max_limit=256)
    limiter.cap_at(48)
    assert limiter.limit == 48  # nothing measured yet: trust the engine's capacity
    limiter.on_sample(0.01, in_flight=48, queued_s=0.009)
    shrunk = limiter.limit
    limiter.cap_at(64)
    assert limiter.limit == shrunk  # once measured, a new capacity only caps
    limiter.cap_at(8)
    assert limiter.limit == 8
    limiter.cap_at(1000)  # never above the configured ceiling either
    assert limiter.max_limit == 256
    limiter.acquire()
    assert limiter.has_room()


@pytest_asyncio.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    # Pure state: no channel is needed to choose among replicas.
    out = []
    for i in range(4):
        r = Replica(f"10.0.0.{i}:50054", limiter=GradientLimiter(initial=10, max_limit=10))
        r.serving = True
        out.append(r)
    yield out


def request(prompt: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(model="m", prompt=prompt)


async def test_a_shared_prefix_goes_to_one_replica(replicas: list[Replica]) -> None:
    system = "You are a helpful assistant for the lighthouse keepers' union. " * 10
    keys = [prefix_key(request(system + f" question {i}")) for i in range(20)]
    chosen = {choose(replicas, k, slack=0.25).address for k in keys}  # type: ignore[union-attr]
    assert len(chosen) == 1
    # Different prefixes spread over the replicas.
    spread = {
        choose(replicas, prefix_key(request(f"{i} " * 300)), slack=0.25).address  # type: ignore[union-attr]
        for i in range(40)
    }
    assert len(spread) == 4


async def test_a_hot_preferred_replica_loses_to_an_idle_one(replicas: list[Replica]) -> None:
    key = prefix_key(request("same system prompt " * 40))
    preferred = choose(replicas, key, slack=0.25)
    assert preferred is not None
    for _ in range(5):
        preferred.limiter.acquire()  # 50% busy, the others idle
    other = choose(replicas, key, slack=0.25)
    assert other is not None and other is not preferred
    assert other.limiter.in_flight == 0


async def test_no_room_anywhere_means_wait(replicas: list[Replica]) -> None:
    for r in replicas:
        for _ in range(10):
            r.limiter.acquire()
    assert choose(replicas, None, slack=0.25) is None
    replicas[2].limiter.release()
    assert choose(replicas, None, slack=0.25) is replicas[2]


async def test_a_replica_with_a_full_batch_or_cache_gets_nothing(
    replicas: list[Replica],
) -> None:
    # Full by the engine's own count (others' requests too): 8 running, 2 waiting of 10.
    replicas[0].load = ReplicaLoad(running=8, waiting=2)
    replicas[1].load = ReplicaLoad(kv_cache_usage=0.99)
    picks = {choose(replicas, None, slack=0.25).address for _ in range(5)}  # type: ignore[union-attr]
    assert picks.isdisjoint({replicas[0].address, replicas[1].address})


async def test_requests_waiting_for_their_first_step_do_not_stop_a_burst(
    replicas: list[Replica],
) -> None:
    # Three just sent, not yet scheduled: the engine has room for seven more.
    only = replicas[0]
    for _ in range(3):
        only.limiter.acquire()
    only.load = ReplicaLoad(running=0, waiting=3)
    assert choose([only], None, slack=0.25) is only


async def test_a_failed_replica_is_avoided_while_another_is_left(
    replicas: list[Replica],
) -> None:
    key = prefix_key(request("x" * 600))
    first = choose(replicas, key, slack=0.25)
    assert first is not None
    again = choose(replicas, key, slack=0.25, exclude=frozenset({first.address}))
    assert again is not None and again is not first
    # With only the failed one left, it is still used rather than nothing.
    assert choose([first], key, slack=0.25, exclude=frozenset({first.address})) is first


async def test_a_hot_prefix_stays_within_its_share_of_the_load(replicas: list[Replica]) -> None:
    """Large limits leave every replica far from full; the bound is on the
    share of the load, so one conversation's followers still spread."""
    pair = replicas[:2]
    for r in pair:
        r.limiter = GradientLimiter(initial=64, max_limit=64)
    key = prefix_key(request("one long conversation " * 40))
    placed: dict[str, int] = {r.address: 0 for r in pair}
    for _ in range(16):
        chosen = choose(pair, key, slack=0.25)
        assert chosen is not None
        chosen.limiter.acquire()
        placed[chosen.address] += 1
    # Within 25% of an even split of 16 (8 each), rounded up: at most 10.
    assert max(placed.values()) == 10
    assert sum(placed.values()) == 16


async def test_round_robin_takes_replicas_in_turn_skipping_full_and_failed_ones(
    replicas: list[Replica],
) -> None:
    assert [round_robin(replicas, turn) for turn in range(5)] == [*replicas, replicas[0]]
    for _ in range(10):
        replicas[1].limiter.acquire()
    assert round_robin(replicas, 1) is replicas[2]  # full: the next one
    assert round_robin(replicas, 2, exclude=frozenset({replicas[2].address})) is replicas[3]
    # Unlike `choose`, round robin never falls back to a replica that failed the request.
    assert round_robin(replicas[1:3], 1, exclude=frozenset({replicas[2].address})) is None
