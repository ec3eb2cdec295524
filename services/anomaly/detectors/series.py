"""Per-series state with a hard cap: least recently seen series go first, and
series idle for too long are forgotten, so memory stays bounded whatever the
number of tenants, keys, replicas or source addresses."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class HasBucket(Protocol):
    # The series' open bucket: its last event's bucket, or later once closed.
    bucket: int


S = TypeVar("S", bound=HasBucket)


class SeriesTable(Generic[S]):
    def __init__(self, max_series: int, idle_buckets: int, create: Callable[[int], S]) -> None:
        self._states: OrderedDict[str, S] = OrderedDict()
        self._active: set[str] = set()
        self._max = max_series
        self._idle = idle_buckets
        self._create = create
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: str, bucket: int) -> S:
        """The series' state, created at `bucket` if new; marks it seen and active."""
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self._max:
                old, _ = self._states.popitem(last=False)
                self._active.discard(old)
                self.evicted += 1
            state = self._states[key] = self._create(bucket)
        else:
            self._states.move_to_end(key)
        self._active.add(key)
        return state

    def take_active(self) -> Iterator[tuple[str, S]]:
        """The series with events since the last call (their buckets need closing)."""
        active, self._active = self._active, set()
        for key in active:
            state = self._states.get(key)
            if state is not None:
                yield key, state

    def close_before(self, bucket: int, close: Callable[[str, S], None]) -> None:
        """A detector's `advance`: `close(key, state)` for each active series whose
        open bucket is before `bucket`, then the idle series are forgotten."""
        for key, state in self.take_active():
            if state.bucket < bucket:
                close(key, state)
        self.evict_idle(bucket)

    def evict_idle(self, bucket: int) -> None:
        """Forgets series whose last event is more than the idle limit before `bucket`."""
        states = self._states
        while states:
            key, state = next(iter(states.items()))
            if state.bucket >= bucket - self._idle:
                return
            del states[key]
            self._active.discard(key)
            self.evicted += 1


class CountsSeries(Generic[S]):
    """`Detector.tracked` and `Detector.evicted` for a detector whose series
    live in `self._table`."""

    _table: SeriesTable[S]

    def tracked(self) -> int:
        return len(self._table)

    def evicted(self) -> int:
        return self._table.evicted
