"""One inference replica as the router sees it: pure state (what it serves,
whether it is up, drained, ejected or probed, its engine's load and its
concurrency limit). No channel lives here: `replica_links` talks to the
replica and feeds these values in."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maas.v1 import generation_pb2
from services.router.limiter import GradientLimiter

# Past this KV-cache use an engine starts preempting: send it nothing new.
KV_CACHE_HIGH = 0.95
# Requests at a time on a failing replica kept in rotation: each failure then
# costs one caller, and the first success ends the probe.
PROBE_CONCURRENCY = 1
# Fields whose change moves a replica in or out of its model's candidates
# (True), or changes its room and load within them (False).
WATCHED = {
    "model": True,
    "adapters": True,
    "serving": True,
    "draining": True,
    "ejected_until": True,
    "load": False,
    "limiter": False,
    "probing": False,
    "adapter_slots": False,
}


@dataclass(frozen=True)
class ReplicaLoad:
    """The engine's load as it last reported it (zero until it reports)."""

    running: int = 0  # requests being decoded now
    waiting: int = 0  # admitted to the engine, waiting for a batch slot
    kv_cache_usage: float = 0.0  # fraction of the KV cache in use, 0 to 1
    tokens_in_flight: int = 0  # tokens still to generate by its requests
    prefix_cache_hit_rate: float = 0.0  # share of prompt tokens served from the cache
    loaded_adapters: tuple[str, ...] = ()  # private adapters loaded, most recently used first
    adapter_loads: int = 0  # private adapter loads since it started


@dataclass(eq=False)
class Replica:
    """One inference replica: its model, its state and its load."""

    address: str
    model: generation_pb2.ModelInfo | None = None
    adapters: tuple[str, ...] = ()
    serving: bool = False
    draining: bool = False
    load: ReplicaLoad = field(default_factory=ReplicaLoad)
    limiter: GradientLimiter = field(default_factory=GradientLimiter)
    consecutive_failures: int = 0
    ejections_in_a_row: int = 0
    ejected_until: float = 0.0
    # Failing, but not ejected: the last of its model in rotation.
    probing: bool = False
    # Private adapters it holds loaded at once (0: it serves none).
    adapter_slots: int = 0
    # Requests of each private adapter this router runs on it now, and when
    # the last one of each ended there.
    adapter_in_flight: Counter[str] = field(default_factory=Counter)
    adapter_idle_since: dict[str, float] = field(default_factory=dict)
    # A stable number per address for rendezvous hashing (prefix affinity).
    address_hash: int = field(init=False, default=0)
    # Told of every change of a WATCHED field or of the limiter's counts,
    # with whether membership changed: the replica set's index follows
    # them, whoever makes the change.
    watcher: Callable[[Replica, bool], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # 8 bytes: the 64-bit key rendezvous hashing mixes with a prefix's.
        digest = hashlib.blake2b(self.address.encode(), digest_size=8).digest()
        self.address_hash = int.from_bytes(digest, "big")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "limiter":
            value.watcher = self._limiter_changed
        membership = WATCHED.get(name)
        if membership is not None and self.watcher is not None:
            self.watcher(self, membership)

    def _limiter_changed(self) -> None:
        if self.watcher is not None:
            self.watcher(self, False)

    def serves(self, model: str) -> bool:
        """Whether `model` names this replica's model or one of its adapters."""
        return self.model is not None and (model == self.model.name or model in self.adapters)

    def takes_work(self, now: float) -> bool:
        """Up, not drained, not ejected."""
        return self.serving and not self.draining and now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def has_room(self, reserve: int = 0) -> bool:
        """Under its concurrency limit (less `reserve` slots), with its engine's
        batch not full by its own count (other callers' requests included:
        past that, requests wait in the engine, where they can no longer be
        ordered fairly), and with KV cache to spare.

        Requests reported waiting are not a queue by themselves: every request
        waits in the engine until its next step, so holding back whenever one
        is reported would cut a burst into one engine step per load report.
        A lasting queue shows in the time requests wait before being
        scheduled, which shrinks the limit."""
        load = self.load
        if self.probing and self.limiter.in_flight >= PROBE_CONCURRENCY:
            return False
        return (
            self.limiter.has_room(reserve)
            and load.running + load.waiting < self.limiter.max_limit
            and load.kv_cache_usage < KV_CACHE_HIGH
        )

    @property
    def slots(self) -> int:
        """Requests it may run at once now: its limit, or one while probed."""
        return PROBE_CONCURRENCY if self.probing else int(self.limiter.limit)

    def adapter_started(self, adapter_id: str) -> None:
        self.adapter_in_flight[adapter_id] += 1
        self._adapters_changed()

    def adapter_ended(self, adapter_id: str, now: float) -> None:
        self.adapter_in_flight[adapter_id] -= 1
        if self.adapter_in_flight[adapter_id] <= 0:
            del self.adapter_in_flight[adapter_id]
            self.adapter_idle_since[adapter_id] = now
            # Only adapters it may still hold are worth remembering.
            held = self.adapters_held()
            for gone in [a for a in self.adapter_idle_since if a not in held]:
                del self.adapter_idle_since[gone]
        self._adapters_changed()

    def _adapters_changed(self) -> None:
        # The adapters it holds, and which run, index it in its pools.
        if self.watcher is not None:
            self.watcher(self, False)

    def adapters_held(self) -> set[str]:
        """Adapters loaded by its last report, and those this router runs
        requests of there now: loaded or loading, whatever the report says
        (a burst sent before the next report sticks to the replica), and
        never evicted while they run. Once they end, the reports tell: a
        load is reported as it completes, before its requests end."""
        # adapter_ended drops an adapter's count as it reaches 0: every key runs.
        return set(self.adapter_in_flight).union(self.load.loaded_adapters)

    def holds(self, adapter_id: str) -> bool:
        # Per candidate on every placement of an adapter's request: no set built.
        return adapter_id in self.adapter_in_flight or adapter_id in self.load.loaded_adapters

    def has_free_adapter_slot(self) -> bool:
        return len(self.adapters_held()) < self.adapter_slots

    def can_evict_adapter(self, now: float, min_idle_s: float = 0.0) -> bool:
        """Whether a held adapter has run no request of this router for
        `min_idle_s` (one never run by it: since ever)."""
        return any(
            self.adapter_in_flight[a] == 0
            and now - self.adapter_idle_since.get(a, -math.inf) >= min_idle_s
            for a in self.adapters_held()
        )

    def utilization(self) -> float:
        # At least one slot: a limit below one still divides sensibly.
        return self.limiter.in_flight / max(1.0, self.slots)
