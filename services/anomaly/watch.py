"""Fan-out of alerts to watchers. Publishing never waits: each watcher has a
bounded queue, and one that falls behind loses its oldest alerts (counted),
so a slow client cannot hold up ingestion."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from services.anomaly.alerts import Alert, AlertQuery


class Watcher:
    def __init__(self, query: AlertQuery, max_queue: int) -> None:
        self.query = query
        self.dropped = 0
        self._queue: deque[Alert] = deque()
        self._max = max_queue
        self._ready = asyncio.Event()

    def push(self, alert: Alert) -> None:
        if not self.query.matches(alert):
            return
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(alert)
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Alert]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()


class AlertHub:
    def __init__(self, max_queue: int) -> None:
        self._watchers: set[Watcher] = set()
        self._max_queue = max_queue
        self._dropped_by_gone = 0

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @property
    def dropped(self) -> int:
        """Alerts dropped for slow watchers, ever."""
        return self._dropped_by_gone + sum(w.dropped for w in self._watchers)

    def publish(self, alert: Alert) -> None:
        for watcher in self._watchers:
            watcher.push(alert)

    @contextmanager
    def watch(self, query: AlertQuery) -> Iterator[Watcher]:
        watcher = Watcher(query, self._max_queue)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            self._dropped_by_gone += watcher.dropped
