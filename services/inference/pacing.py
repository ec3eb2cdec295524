"""Caps the messages this process streams per second, over all its streams.

A Python gRPC process spends about 45 us of CPU per streamed message (more
with a pass-through hop), on the same cores as the engine. One message per
token at thousands of tokens a second would cost more than the engine, so a
stream sends at most one message every `active streams / budget` seconds and
merges what the engine produced in between into that message. The engine's
output is still read as it comes, so two things never wait: the first
message, and the last one (a stream that ends sends at once). With few
streams the interval is below the time between tokens and every token goes
out as it is made; otherwise a token waits at most one interval."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from services.inference.engine import Delta


def merge(earlier: Delta, later: Delta) -> Delta:
    """One delta holding both (of the same choice); counts are the later one's."""
    return Delta(
        text=earlier.text + later.text,
        token_ids=earlier.token_ids + later.token_ids,
        prompt_tokens=later.prompt_tokens,
        completion_tokens=later.completion_tokens,
        finish_reason=later.finish_reason,
        index=later.index,
        logprobs=earlier.logprobs + later.logprobs,
        cached_tokens=later.cached_tokens,
        queued_s=earlier.queued_s or later.queued_s,
    )


class StreamPace:
    def __init__(self, pacer: StreamPacer) -> None:
        self._pacer = pacer
        self._next_send = 0.0

    def due(self) -> bool:
        return self._pacer.clock() >= self._next_send

    def sent(self) -> None:
        self._next_send = self._pacer.clock() + self._pacer.interval()

    async def coalesce(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        """The deltas, merged per choice between two sends. A choice that
        finishes is sent at once, with whatever else is pending."""
        pending: dict[int, Delta] = {}
        async for delta in deltas:
            held = pending.get(delta.index)
            pending[delta.index] = delta if held is None else merge(held, delta)
            if delta.finish_reason is not None or self.due():
                # In the order they were made, so the running usage only grows.
                for out in sorted(pending.values(), key=lambda d: d.completion_tokens):
                    yield out
                pending.clear()
                self.sent()
        for out in sorted(pending.values(), key=lambda d: d.completion_tokens):
            yield out


class StreamPacer:
    def __init__(self, messages_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._budget = messages_per_s
        self.clock = clock
        self.active = 0

    def interval(self) -> float:
        """Seconds between two messages of one stream; 0 when pacing is off."""
        return self.active / self._budget if self._budget > 0 else 0.0

    @contextmanager
    def stream(self) -> Iterator[StreamPace]:
        self.active += 1
        try:
            yield StreamPace(self)
        finally:
            self.active -= 1
