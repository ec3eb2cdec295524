"""One model's replicas taking work, indexed so that a placement costs the
logarithm of their number, not a scan of them.

The replica set keeps one `ModelPool` per model asked for. Its members are
exactly `ReplicaSet.candidates(model)`, rebuilt (one scan) only when
membership changes: a replica joins or leaves, changes model, turns up or
down, is drained, ejected or back from an ejection. Load changes (a lease
taken or ended, a new limit, a load report, a probe) update one replica's
entries: running sums of what the dispatcher adds up over the candidates,
and two heaps with lazy deletion, by utilization and by expected latency.
Prefix affinity keeps rendezvous hashing exactly (the same replica as a
scan picks): the winners of each recent prefix key are remembered, and a
key not seen lately costs one hash per member, as one numpy array past
VECTOR_FROM members (about 20 us at 256).

Why the least utilized replica with room is the head of the utilization
heap (`least`): a replica whose engine is full by its own report, whose KV
cache is full, or whose limit is below one slot has no room whatever the
reserve, and is left out of the heap ("closed"). For the others, with S its
slots, L its whole limit and R = int(S * share) the reserve (share in
[0, 1)), it has room exactly when in_flight < L - R, so a replica with room
has utilization below 1 - share and one without has at least 1 - share
(a probed replica: 0 with room, 1 or more without). Every replica with room
thus comes before every one without, and if the first one left after the
exclusions has no room, none has.

The same holds within any subset of the open members, so the choice for a
request with a private adapter (choice.choose_for_adapter_in) takes the
head of a heap per preference: per adapter, the members with adapter slots
holding it; the members with a free adapter slot. Only the last
preference, an adapter to evict, depends on the time: it scans the members
holding an adapter no request of this router runs (idle), usually few,
never the others."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from services.common.errors import MeshError
from services.router.replica import KV_CACHE_HIGH, Replica

# Exact sums of float limits: every finite double is a whole multiple of
# 2**-1074, so scaled by 2**1100 it is an integer, and the sum of those
# integers divided back is the correctly rounded sum (what math.fsum gives).
LIMIT_SCALE = 1100
# Prefix keys whose rendezvous winners are remembered per model: the hot
# prefixes of a busy mesh (system prompts, live conversations); a key past
# them costs one hash per replica when it comes back.
AFFINITY_KEYS = 4096
# Rendezvous winners remembered per key, best first: enough for a request
# retried on a few failing replicas to skip them without a scan.
AFFINITY_DEPTH = 4
# From this many members a new key's rendezvous scores are computed as one
# numpy array (about 60 ns a replica; one Python hash costs about 450 ns,
# and the array's fixed cost, about 10 us, is that of 20-odd hashes).
VECTOR_FROM = 32
# Heap entries tolerated per live one before the stale ones are swept: a
# sweep costs a scan of the live ones, so it comes once per as many updates.
HEAP_SLACK = 2


def exact_limit(limit: float) -> int:
    numerator, denominator = limit.as_integer_ratio()
    # The denominator is a power of two, at most 2**1074.
    return numerator << (LIMIT_SCALE + 1 - denominator.bit_length())


# splitmix64's finaliser, its shifts and multipliers as published: a cheap
# mix of two 64-bit numbers.
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB
MASK_64 = 0xFFFFFFFFFFFFFFFF


def rendezvous(key: int, replica: Replica) -> int:
    x = (key ^ replica.address_hash) & MASK_64
    x = ((x ^ (x >> 30)) * MIX_1) & MASK_64
    x = ((x ^ (x >> 27)) * MIX_2) & MASK_64
    return x ^ (x >> 31)


def rendezvous_all(key: int, hashes: np.ndarray) -> np.ndarray:
    """`rendezvous(key, r)` for every replica whose address hash is in
    `hashes` (uint64, whose products wrap as the masks above do)."""
    x = hashes ^ np.uint64(key & MASK_64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(MIX_1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(MIX_2)
    return np.asarray(x ^ (x >> np.uint64(31)))


class _Heap:
    """Replicas by a key then member position, with lazy deletion: an entry
    is live while its stamp is its replica's latest."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, int, Replica]] = []
        # Per replica, its live entry's key, position and stamp.
        self._live: dict[Replica, tuple[float, int, int]] = {}
        self._stamps = itertools.count()

    def set(self, replica: Replica, key: float, position: int) -> None:
        live = self._live.get(replica)
        if live is not None and live[0] == key and live[1] == position:
            return  # its live entry stands
        stamp = next(self._stamps)
        self._live[replica] = (key, position, stamp)
        heapq.heappush(self._entries, (key, position, stamp, replica))
        if len(self._entries) > HEAP_SLACK * len(self._live) + 16:
            self._entries = [(k, p, s, r) for r, (k, p, s) in self._live.items()]
            heapq.heapify(self._entries)

    def drop(self, replica: Replica) -> None:
        self._live.pop(replica, None)

    def __len__(self) -> int:
        return len(self._live)

    def _is_live(self, entry: tuple[float, int, int, Replica]) -> bool:
        live = self._live.get(entry[3])
        return live is not None and live[2] == entry[2]

    def _clean_top(self) -> None:
        entries = self._entries
        while entries and not self._is_live(entries[0]):
            heapq.heappop(entries)

    def first(self, skip: frozenset[str]) -> Replica | None:
        """The live entry with the lowest key whose address is not in `skip`."""
        self._clean_top()
        if not self._entries:
            return None
        top = self._entries[0][3]
        if top.address not in skip:
            return top
        held = []
        found = None
        while self._entries:
            entry = heapq.heappop(self._entries)
            if not self._is_live(entry):
                continue
            held.append(entry)
            if entry[3].address not in skip:
                found = entry[3]
                break
        for entry in held:
            heapq.heappush(self._entries, entry)
        return found

    def min_key(self) -> float | None:
        self._clean_top()
        return self._entries[0][0] if self._entries else None


class ModelPool:
    """The replicas of one model taking work now, with running sums and heaps."""

    def __init__(self) -> None:
        self.version = -1
        self.valid_until = -math.inf
        self.error: Callable[[], MeshError] | None = None
        self.members: list[Replica] = []
        self._position: dict[Replica, int] = {}
        self._by_address: dict[str, Replica] = {}
        # Per member: its in-flight count, limit, exact limit, slots and free
        # slots as last added to the sums.
        self._parts: dict[Replica, tuple[int, float, int, int, int]] = {}
        self.in_flight = 0
        self._limit_exact = 0
        self.slots = 0
        self.free = 0
        self._by_utilization = _Heap()
        self._by_latency = _Heap()
        self._affinity: OrderedDict[int, list[Replica]] = OrderedDict()
        self._hashes: np.ndarray | None = None
        self._clear_adapters()

    def _clear_adapters(self) -> None:
        # Per member with adapter slots, the adapters it holds as last indexed.
        self._held: dict[Replica, frozenset[str]] = {}
        # Open members with adapter slots by utilization: per adapter, those
        # holding it; those with a free adapter slot.
        self._holders: dict[str, _Heap] = {}
        self._free_adapter_slot = _Heap()
        # Members with adapter slots holding an adapter none of this router's
        # requests runs: the only ones that can evict one.
        self._idle_adapter: dict[Replica, None] = {}

    def rebuild(
        self,
        members: list[Replica],
        version: int,
        valid_until: float,
        error: Callable[[], MeshError] | None,
    ) -> None:
        self.version, self.valid_until, self.error = version, valid_until, error
        self.members = members
        self._position = {r: i for i, r in enumerate(members)}
        self._by_address = {r.address: r for r in members}
        self._parts.clear()
        self.in_flight = self._limit_exact = self.slots = self.free = 0
        self._by_utilization = _Heap()
        self._by_latency = _Heap()
        self._affinity.clear()
        self._hashes = None
        self._clear_adapters()
        if len(members) >= VECTOR_FROM:
            self._hashes = np.array([r.address_hash for r in members], dtype=np.uint64)
        for replica in members:
            self.update(replica)

    def update(self, replica: Replica) -> None:
        """`replica`'s load, limit or probe changed: its sums and heap entries."""
        position = self._position.get(replica)
        if position is None:
            return
        limiter = replica.limiter
        in_flight, limit, slots = limiter.in_flight, limiter.limit, replica.slots
        old = self._parts.get(replica)
        if old is None:
            exact = exact_limit(limit)
        else:
            self.in_flight -= old[0]
            self._limit_exact -= old[2]
            self.slots -= old[3]
            self.free -= old[4]
            # Most changes are a lease taken or ended: the limit stands.
            exact = old[2] if old[1] == limit else exact_limit(limit)
        free = max(0, slots - in_flight)
        self._parts[replica] = (in_flight, limit, exact, slots, free)
        self.in_flight += in_flight
        self._limit_exact += exact
        self.slots += slots
        self.free += free
        load = replica.load
        utilization: float | None = None
        # Open: it can have room, the room test less its limiter's count.
        if (
            load.running + load.waiting < limiter.max_limit
            and load.kv_cache_usage < KV_CACHE_HIGH
            and limit >= 1.0
        ):
            # Replica.utilization, inlined: this runs on every lease.
            utilization = in_flight / max(1.0, slots)
            self._by_utilization.set(replica, utilization, position)
        else:
            self._by_utilization.drop(replica)
        self._by_latency.set(replica, limiter.expected_latency, position)
        if replica.adapter_slots > 0 or replica in self._held:
            self._index_adapters(replica, position, utilization)

    def _index_adapters(self, replica: Replica, position: int, utilization: float | None) -> None:
        """`replica`'s entries in the adapter heaps; `utilization` None: closed."""
        slotted = replica.adapter_slots > 0
        held = frozenset(replica.adapters_held()) if slotted else frozenset()
        was = self._held.get(replica, frozenset())
        for adapter in was - held if utilization is not None else was:
            heap = self._holders.get(adapter)
            if heap is not None:
                heap.drop(replica)
                if not heap:
                    del self._holders[adapter]  # only adapters held are remembered
        if slotted:
            self._held[replica] = held
        else:
            self._held.pop(replica, None)
        if utilization is not None and slotted:
            for adapter in held:
                heap = self._holders.get(adapter)
                if heap is None:
                    heap = self._holders[adapter] = _Heap()
                heap.set(replica, utilization, position)
            if len(held) < replica.adapter_slots:
                self._free_adapter_slot.set(replica, utilization, position)
            else:
                self._free_adapter_slot.drop(replica)
        else:
            self._free_adapter_slot.drop(replica)
        running = replica.adapter_in_flight
        if slotted and any(running[a] == 0 for a in held):
            self._idle_adapter[replica] = None
        else:
            self._idle_adapter.pop(replica, None)

    # Queries.

    def excluded(self, exclude: frozenset[str]) -> list[Replica]:
        """The members in `exclude`; none when that is all of them (a request
        that failed everywhere is still placed rather than refused)."""
        if not exclude:
            return []
        gone = [r for a in exclude if (r := self._by_address.get(a)) is not None]
        return [] if len(gone) == len(self.members) else gone

    def least(self, skip: frozenset[str] = frozenset()) -> Replica | None:
        """The least utilized open member not in `skip` (first in member
        order among equals); whether it has room is the caller's test."""
        return self._by_utilization.first(skip)

    def any_room(self) -> bool:
        """Whether any member has room outside no reserve at all."""
        least = self.least()
        return least is not None and least.has_room()

    def has_adapter_slots(self, excluded: list[Replica]) -> bool:
        """Whether a member outside `excluded` has adapter slots."""
        return len(self._held) > sum(1 for r in excluded if r in self._held)

    def first_holding(self, adapter_id: str, skip: frozenset[str]) -> Replica | None:
        """The least utilized open member with adapter slots holding
        `adapter_id`, not in `skip`; whether it has room is the caller's test."""
        heap = self._holders.get(adapter_id)
        return None if heap is None else heap.first(skip)

    def first_with_free_adapter_slot(self, skip: frozenset[str]) -> Replica | None:
        return self._free_adapter_slot.first(skip)

    def all_have_adapter_slots(self) -> bool:
        return len(self._held) == len(self.members)

    def with_idle_adapter(self) -> list[Replica]:
        """Members with adapter slots holding an adapter no request runs, in
        no order: those that may evict one."""
        return list(self._idle_adapter)

    def position(self, replica: Replica) -> int:
        return self._position[replica]

    def min_expected_latency(self) -> float:
        value = self._by_latency.min_key()
        return 0.0 if value is None else value

    def capacity(self, excluded: list[Replica]) -> float:
        """The members' limits summed, less `excluded`'s, correctly rounded."""
        total = self._limit_exact - sum(self._parts[r][2] for r in excluded)
        return total / (1 << LIMIT_SCALE)

    def in_flight_of(self, excluded: list[Replica]) -> int:
        return self.in_flight - sum(self._parts[r][0] for r in excluded)

    def preferred(self, key: int, skip: frozenset[str]) -> Replica:
        """The rendezvous winner for `key` among the members not in `skip`
        (`skip` leaving at least one)."""
        best = self._affinity.get(key)
        if best is None:
            best = self._rank(key)
            self._affinity[key] = best
            if len(self._affinity) > AFFINITY_KEYS:
                self._affinity.popitem(last=False)
        else:
            self._affinity.move_to_end(key)
        for replica in best:
            if replica.address not in skip:
                return replica
        usable = [r for r in self.members if r.address not in skip]
        return max(usable, key=lambda r: rendezvous(key, r))

    def _rank(self, key: int) -> list[Replica]:
        """The AFFINITY_DEPTH best members for `key`, best first; among equal
        scores the first in member order, as max() takes it."""
        members = self.members
        if self._hashes is None:
            return heapq.nlargest(AFFINITY_DEPTH, members, key=lambda r: rendezvous(key, r))
        scores = rendezvous_all(key, self._hashes)
        top = np.argpartition(scores, len(members) - AFFINITY_DEPTH)[-AFFINITY_DEPTH:]
        ranked = sorted(top.tolist(), key=lambda i: (-int(scores[i]), i))
        return [members[i] for i in ranked]
