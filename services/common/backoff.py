"""Reconnect with backoff: the one loop every long-lived outbound stream of
the mesh runs (router replica watches, the event publisher, the usage outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Backoff:
    """Exponential delays between attempts: `initial_s`, doubling up to `max_s`;
    `reset()` after a success so the next failure starts short again."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._next_s = initial_s

    @property
    def next_s(self) -> float:
        """The delay the next `sleep()` waits."""
        return self._next_s

    def reset(self) -> None:
        self._next_s = self.initial_s

    async def sleep(self) -> None:
        await asyncio.sleep(self._next_s)
        self._next_s = min(self._next_s * 2, self.max_s)


async def reconnect_forever(
    session: Callable[[Backoff], Awaitable[bool]],
    backoff: Backoff,
    *,
    on_error: Callable[[Exception], None],
    errors: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Runs `session` again and again, waiting `backoff` between runs, until it
    returns True (done for good). The session calls `backoff.reset()` once it
    has made progress (a message received, a batch sent). An exception in
    `errors` is handed to `on_error` and retried; cancellation always ends the
    loop. A session that returns False (its stream ended) is retried too."""
    while True:
        try:
            if await session(backoff):
                return
        except asyncio.CancelledError:
            raise
        except errors as err:
            on_error(err)
        await backoff.sleep()
