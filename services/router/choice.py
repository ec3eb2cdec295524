"""Which replica a request goes to: least loaded, with prefix-cache affinity,
or in turn (round robin, a baseline for benchmarks).

Requests that share a prompt prefix (a system prompt, a conversation so far)
prefer one replica, chosen by rendezvous hashing over the replicas of the
model, so the prefix is likely in its cache and the choice survives replicas
joining and leaving. The preferred replica is taken only while its load
stays within (1 + `slack`) times its share of all the requests in flight
(consistent hashing with bounded loads, Mirrokni et al.), so a hot prefix
cannot pile everything onto one replica, however large the replicas'
limits are."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from maas.v1 import generation_pb2
from services.router.pool import ModelPool, rendezvous
from services.router.replica import Replica

# How much of a prompt the prefix key covers: about the 128 tokens a system
# prompt or a conversation's opening takes, in characters (about 4 a token)
# or in tokens.
PREFIX_CHARS = 512
PREFIX_TOKENS = 128


def prefix_key(request: generation_pb2.GenerateRequest) -> int | None:
    """A hash of the start of the prompt, as far as a cache could share it;
    None when the request has no prompt to speak of."""
    # 8 bytes: a 64-bit key, as rendezvous hashing mixes it.
    hasher = hashlib.blake2b(digest_size=8)
    which = request.WhichOneof("input")
    if which == "messages":
        budget = PREFIX_CHARS
        for message in request.messages.messages:
            text = f"{message.role}\x00{message.content}\x01"[:budget]
            hasher.update(text.encode())
            budget -= len(text)
            if budget <= 0:
                break
    elif which == "prompt" and request.prompt:
        hasher.update(request.prompt[:PREFIX_CHARS].encode())
    elif which == "prompt_token_ids":
        ids = request.prompt_token_ids.ids[:PREFIX_TOKENS]
        hasher.update(b"".join(t.to_bytes(4, "little") for t in ids))
    else:
        return None
    hasher.update(request.model.encode())
    return int.from_bytes(hasher.digest(), "big")


def reserve_of(replica: Replica, share: float) -> int:
    """Slots of `replica` kept back for tenants below their fair share."""
    return int(replica.slots * share) if share > 0 else 0


def choose(
    candidates: list[Replica],
    key: int | None,
    *,
    slack: float,
    exclude: frozenset[str] = frozenset(),
    reserve_share: float = 0.0,
) -> Replica | None:
    """The replica to dispatch to now, or None when none of the candidates
    has room outside its reserve. `exclude` (replicas that just failed this
    request) is honoured while another candidate is left."""
    usable = [r for r in candidates if r.address not in exclude] or candidates
    with_room = [r for r in usable if r.has_room(reserve_of(r, reserve_share))]
    if not with_room:
        return None
    least = min(with_room, key=Replica.utilization)
    if key is None:
        return least
    preferred = max(usable, key=lambda r: rendezvous(key, r))
    if preferred in with_room and _within_bound(preferred, usable, slack):
        return preferred
    return least


def choose_in(
    pool: ModelPool,
    key: int | None,
    *,
    slack: float,
    exclude: frozenset[str] = frozenset(),
    reserve_share: float = 0.0,
) -> Replica | None:
    """`choose(pool.members, ...)`, the same replica, from the pool's heap
    and sums: the logarithm of the replicas' number, not a scan."""
    if not 0.0 <= reserve_share < 1.0:
        # Outside [0, 1) the heap's order does not put room first (pool.py).
        return choose(pool.members, key, slack=slack, exclude=exclude, reserve_share=reserve_share)
    excluded = pool.excluded(exclude)
    skip = exclude if excluded else frozenset()
    least = pool.least(skip)
    if least is None or not least.has_room(reserve_of(least, reserve_share)):
        return None
    if key is None:
        return least
    preferred = pool.preferred(key, skip)
    if preferred is least:
        return least  # what the bound decides, least is the answer
    if preferred.has_room(reserve_of(preferred, reserve_share)) and is_within_bound(
        preferred,
        pool.in_flight_of(excluded),
        pool.capacity(excluded),
        len(pool.members) - len(excluded),
        slack,
    ):
        return preferred
    return least


def choose_for_adapter(
    candidates: list[Replica],
    adapter_id: str,
    *,
    now: float = 0.0,
    min_idle_s: float = 0.0,
    exclude: frozenset[str] = frozenset(),
    reserve_share: float = 0.0,
) -> Replica | None:
    """The replica for a request with a private adapter: the least utilized
    of those with room that hold it loaded; else of those with a free adapter
    slot; else of those with an adapter idle for `min_idle_s` to evict. None
    (the request waits for a slot) when every slot of those with room runs
    requests of other adapters (sent now it would be refused), or ran them
    too lately to be evicted yet. Replicas with no adapter
    slots (which refuse it) only when none has any."""
    usable = [r for r in candidates if r.address not in exclude] or candidates
    with_room = [r for r in usable if r.has_room(reserve_of(r, reserve_share))]
    if not with_room:
        return None
    if not any(r.adapter_slots > 0 for r in usable):
        return min(with_room, key=Replica.utilization)
    slotted = [r for r in with_room if r.adapter_slots > 0]
    preferences: tuple[Callable[[Replica], bool], ...] = (
        lambda r: r.holds(adapter_id),
        lambda r: r.has_free_adapter_slot(),
        lambda r: r.can_evict_adapter(now, min_idle_s),
    )
    for fits in preferences:
        fitting = [r for r in slotted if fits(r)]
        if fitting:
            return min(fitting, key=Replica.utilization)
    return None


def choose_for_adapter_in(
    pool: ModelPool,
    adapter_id: str,
    *,
    now: float = 0.0,
    min_idle_s: float = 0.0,
    exclude: frozenset[str] = frozenset(),
    reserve_share: float = 0.0,
) -> Replica | None:
    """`choose_for_adapter(pool.members, ...)`, the same replica, from the
    pool's adapter heaps: the head of one heap per preference, then, for an
    adapter to evict, a scan of the members holding an idle one only."""
    if not 0.0 <= reserve_share < 1.0:
        # Outside [0, 1) the heaps' order does not put room first (pool.py).
        return choose_for_adapter(
            pool.members,
            adapter_id,
            now=now,
            min_idle_s=min_idle_s,
            exclude=exclude,
            reserve_share=reserve_share,
        )
    excluded = pool.excluded(exclude)
    skip = exclude if excluded else frozenset()
    if not pool.has_adapter_slots(excluded):
        least = pool.least(skip)
        if least is None or not least.has_room(reserve_of(least, reserve_share)):
            return None
        return least
    for first in (pool.first_holding(adapter_id, skip), pool.first_with_free_adapter_slot(skip)):
        if first is not None and first.has_room(reserve_of(first, reserve_share)):
            return first
    best: tuple[float, int] | None = None
    chosen = None
    for replica in pool.with_idle_adapter():
        if (
            replica.address in skip
            or not replica.has_room(reserve_of(replica, reserve_share))
            or not replica.can_evict_adapter(now, min_idle_s)
        ):
            continue
        key = (replica.utilization(), pool.position(replica))
        if best is None or key < best:
            best, chosen = key, replica
    return chosen


def round_robin(
    candidates: list[Replica],
    turn: int,
    *,
    exclude: frozenset[str] = frozenset(),
    reserve_share: float = 0.0,
) -> Replica | None:
    """The first candidate from the `turn`-th on (wrapping) with room outside
    its reserve, `exclude` left out; None when none has room."""
    for i in range(len(candidates)):
        replica = candidates[(turn + i) % len(candidates)]
        if replica.has_room(reserve_of(replica, reserve_share)) and replica.address not in exclude:
            return replica
    return None


def _within_bound(replica: Replica, replicas: list[Replica], slack: float) -> bool:
    return is_within_bound(
        replica,
        sum(r.limiter.in_flight for r in replicas),
        # Correctly rounded, as the pool's exact running sum is.
        math.fsum(r.limiter.limit for r in replicas),
        len(replicas),
        slack,
    )


def is_within_bound(
    replica: Replica, in_flight: int, capacity: float, count: int, slack: float
) -> bool:
    """Whether one more request keeps `replica` within (1 + slack) of its
    share (by concurrency limit) of everything in flight (`in_flight` over
    `count` replicas whose limits sum to `capacity`), this one included."""
    total = in_flight + 1
    share = replica.limiter.limit / capacity if capacity > 0 else 1 / count
    return replica.limiter.in_flight + 1 <= math.ceil((1 + slack) * total * share)
