"""The admission queue: who runs next.

Within a priority class, tenants share by tokens, not requests: start-time
fair queueing (SFQ) where a request's cost is its estimated tokens divided by
its tenant's weight. A tenant that floods the queue only pushes its own
requests back; one that sends long prompts pays for them. Across classes the
higher goes first, but a waiting request gains one class per `aging_s`
seconds, so batch work never starves. The queue is bounded in total and per
tenant; what does not fit is refused at once, never queued without bound."""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Classes, most urgent first (maas.v1.Priority INTERACTIVE, DEFAULT, BATCH).
INTERACTIVE, DEFAULT, BATCH = 0, 1, 2
CLASSES = (INTERACTIVE, DEFAULT, BATCH)


class QueueFullError(Exception):
    """Refused at admission; `reason` names the bound that was hit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Entry:
    """One waiting request. `item` is whatever the caller queues."""

    tenant: str
    priority: int
    cost: float
    item: Any
    enqueued_at: float = 0.0
    start_tag: float = 0.0
    removed: bool = False


@dataclass
class _Class:
    """One priority class: a heap of entries by start tag, and virtual time."""

    heap: list[tuple[float, int, Entry]] = field(default_factory=list)
    virtual_time: float = 0.0
    last_finish: dict[str, float] = field(default_factory=dict)


class FairQueue:
    def __init__(
        self,
        *,
        max_total: int,
        max_per_tenant: int,
        aging_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_tenant: Callable[[str, bool], None] = lambda tenant, waits: None,
    ) -> None:
        self._max_total = max_total
        self._max_per_tenant = max_per_tenant
        self._aging_s = aging_s
        self._clock = clock
        self._classes = {c: _Class() for c in CLASSES}
        self._seq = itertools.count()
        self._per_tenant: Counter[str] = Counter()
        # Each tenant's entries in arrival order (so also in start-tag order).
        self._by_tenant: dict[str, deque[Entry]] = {}
        # Each waiting tenant's oldest entry by (priority, start tag, when the
        # tenant came), kept as heads change so `tenant_heads` walks them in
        # order without sorting them all; removed entries drop out lazily.
        self._heads: list[tuple[int, float, int, int, Entry]] = []
        self._tenant_seq: dict[str, int] = {}
        # Told when a tenant starts or stops having entries waiting.
        self._on_tenant = on_tenant
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, tenant: str, priority: int, cost: float, weight: float, item: Any) -> Entry:
        """Queues `item`; QueueFullError when a bound is hit."""
        if self._size >= self._max_total:
            raise QueueFullError("queue_full")
        if self._per_tenant[tenant] >= self._max_per_tenant:
            raise QueueFullError("tenant_queue_full")
        klass = self._classes[priority if priority in self._classes else DEFAULT]
        start = max(klass.virtual_time, klass.last_finish.get(tenant, 0.0))
        klass.last_finish[tenant] = start + max(cost, 1.0) / (weight if weight > 0 else 1.0)
        entry = Entry(tenant, priority, cost, item, self._clock(), start)
        heapq.heappush(klass.heap, (start, next(self._seq), entry))
        entries = self._by_tenant.get(tenant)
        if entries is None:
            entries = self._by_tenant[tenant] = deque()
            self._tenant_seq[tenant] = next(self._seq)
        entries.append(entry)
        if len(entries) == 1:
            self._push_head(entry)
        self._per_tenant[tenant] += 1
        self._size += 1
        if self._per_tenant[tenant] == 1:
            self._on_tenant(tenant, True)
        return entry

    def remove(self, entry: Entry) -> None:
        """Takes a waiting entry out (its caller gave up or was shed)."""
        if entry.removed:
            return
        entry.removed = True
        self._forget(entry)

    def peek(self) -> Entry | None:
        """The entry that goes next: the best head over the classes, where a
        head's class improves by one for every `aging_s` it has waited."""
        now = self._clock()
        best: Entry | None = None
        best_rank = 0.0
        for priority, klass in self._classes.items():
            head = self._head(klass)
            if head is None:
                continue
            rank = priority - (now - head.enqueued_at) / self._aging_s
            if best is None or rank < best_rank:
                best, best_rank = head, rank
        return best

    def pop(self) -> Entry | None:
        entry = self.peek()
        if entry is not None:
            self.take(entry)
        return entry

    def take(self, entry: Entry) -> None:
        """Takes `entry` out to serve it (usually the head; see `tenant_heads`)."""
        if entry.removed:
            return
        klass = self._classes[entry.priority if entry.priority in self._classes else DEFAULT]
        klass.virtual_time = max(klass.virtual_time, entry.start_tag)
        entry.removed = True
        self._forget(entry)
        self._head(klass)

    def tenants(self) -> Iterable[str]:
        """The tenants with entries waiting."""
        return self._per_tenant.keys()

    def tenant_heads(self) -> Iterator[Entry]:
        """Each waiting tenant's oldest entry, most urgent class then lowest
        start tag first (ties: the tenant that came first). Lazy: a caller
        that stops at the first it can serve pays for the heads it saw, not
        for every tenant. Valid until the queue changes."""
        heap = self._heads
        # The heap's tree walked in order: a frontier of the nodes whose
        # parents were yielded, smallest first.
        frontier = [(heap[0], 0)] if heap else []
        while frontier:
            (*_, entry), i = heapq.heappop(frontier)
            if not entry.removed:
                yield entry
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def entries(self) -> Iterator[Entry]:
        for klass in self._classes.values():
            for _, _, entry in klass.heap:
                if not entry.removed:
                    yield entry

    def depths(self) -> dict[tuple[str, int], tuple[int, float]]:
        """(tenant, class) -> (requests waiting, their estimated tokens)."""
        out: dict[tuple[str, int], tuple[int, float]] = {}
        for entry in self.entries():
            n, tokens = out.get((entry.tenant, entry.priority), (0, 0.0))
            out[(entry.tenant, entry.priority)] = (n + 1, tokens + entry.cost)
        return out

    def _head(self, klass: _Class) -> Entry | None:
        while klass.heap and klass.heap[0][2].removed:
            heapq.heappop(klass.heap)
        return klass.heap[0][2] if klass.heap else None

    def _push_head(self, entry: Entry) -> None:
        heads = self._heads
        seq = self._tenant_seq[entry.tenant]
        # The last number only makes every key unique: entries never compare.
        heapq.heappush(heads, (entry.priority, entry.start_tag, seq, next(self._seq), entry))
        while heads and heads[0][4].removed:
            heapq.heappop(heads)
        if len(heads) > 2 * len(self._by_tenant) + 16:
            # Mostly removed heads buried below the top: rebuild, so memory
            # follows the tenants waiting (16: not for every few removals).
            self._heads = [h for h in heads if not h[4].removed]
            heapq.heapify(self._heads)

    def _forget(self, entry: Entry) -> None:
        self._size -= 1
        self._per_tenant[entry.tenant] -= 1
        entries = self._by_tenant.get(entry.tenant)
        if entries and entries[0] is entry:
            # The tenant's head left: the next one still waiting takes its place.
            while entries and entries[0].removed:
                entries.popleft()
            if entries:
                self._push_head(entries[0])
        if self._per_tenant[entry.tenant] <= 0:
            del self._per_tenant[entry.tenant]
            self._by_tenant.pop(entry.tenant, None)
            self._tenant_seq.pop(entry.tenant, None)
            self._on_tenant(entry.tenant, False)
            klass = self._classes[entry.priority if entry.priority in self._classes else DEFAULT]
            # An idle tenant's finish tag matters only while it is ahead of
            # virtual time; dropping it then keeps memory to active tenants.
            if klass.last_finish.get(entry.tenant, 0.0) <= klass.virtual_time:
                klass.last_finish.pop(entry.tenant, None)
