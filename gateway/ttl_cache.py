"""A small cache whose entries hold for a time and whose size is bounded:
the gateway's answers from auth (API keys, adapter names, tenants' adapter
lists), so a caller repeating a call costs the mesh one lookup per window."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    """A value found in the cache (which may itself be None: a remembered miss)."""

    value: V


class TtlCache(Generic[K, V]):
    """Each entry for `ttl_s`; at most `max_entries`, the least recently used dropped first."""

    def __init__(
        self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        # key -> (expires at, value), least recently used first.
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._forgets = 0

    def get(self, key: K) -> Cached[V] | None:
        """The value kept for `key` while it holds; None when none is."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return Cached(entry[1])

    def stamp(self) -> int:
        """Taken before looking a value up, and handed to `put` with it."""
        return self._forgets

    def put(self, key: K, value: V, stamp: int | None = None) -> None:
        """Keeps `value`, unless something was forgotten since `stamp` (when
        given): a lookup that raced a change may have read it before."""
        if stamp is not None and stamp != self._forgets:
            return
        self._entries[key] = (self._clock() + self._ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        self._forgets += 1

    def __len__(self) -> int:
        return len(self._entries)
