"""One change broadcaster: wakes every waiter at the next change."""

from __future__ import annotations

import asyncio


class ChangeSignal:
    """Each `notify()` sets the current event and starts a fresh one, so a
    waiter that took `next` before a change is woken by it, and one that takes
    `next` after it waits for the following change (no missed or stale wakeups,
    no per-waiter queues)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def next(self) -> asyncio.Event:
        """Set at the next `notify()`."""
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Returns at the next `notify()`."""
        await self._event.wait()
