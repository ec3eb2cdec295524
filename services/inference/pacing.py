"""Caps the messages this process streams per second, over all its streams.

A Python gRPC process spends about 45 us of CPU per streamed message (more
with a pass-through hop), on the same cores as the engine. One message per
token at thousands of tokens a second would cost more than the engine, so a
stream sends at most one message every `active streams / budget` seconds and
merges what the engine produced in between into that message. The engine's
output is still read as it comes, so two things never wait: the first
message, and the last one (a stream that ends sends at once). With few
streams the interval is below the time between tokens and every token goes
out as it is made; otherwise a token waits at most one interval.

Whoever receives the messages has a budget too (the gateway's
`stream_messages_per_s`, over every replica's streams), and asks each stream
for the interval it needs (`min_message_interval_s`): a stream goes at the
larger of the two. The consumer's interval is its open streams over its
budget when the stream starts, which a burst of streams opened at once gets
wrong (the first of them would ask for almost nothing): so it grows as this
replica's own streams grow after the start (a consumer's streams are spread
over the replicas, so they grow together), and never drops below what was
asked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from services.common.errors import InvalidArgumentError
from services.inference.engine import Delta

# The longest a consumer may ask between two messages of a stream: past a
# second a stream reads as stalled to whoever watches the text arrive.
MAX_MESSAGE_INTERVAL_S = 1.0


def stream_interval(streams: int, messages_per_s: float) -> float:
    """Seconds between two messages of each of `streams` streams sharing
    `messages_per_s` messages a second; 0 when there is no budget (0)."""
    return streams / messages_per_s if messages_per_s > 0 else 0.0


def requested_interval(streams: int, messages_per_s: float) -> float:
    """The interval a consumer asks of a stream it opens, `streams` open
    with it: its share of the budget, at most MAX_MESSAGE_INTERVAL_S."""
    return min(stream_interval(streams, messages_per_s), MAX_MESSAGE_INTERVAL_S)


def check_message_interval(seconds: float) -> float:
    """`min_message_interval_s` as a caller sent it: 0 to MAX_MESSAGE_INTERVAL_S."""
    # Written so that NaN fails too.
    if not 0.0 <= seconds <= MAX_MESSAGE_INTERVAL_S:
        raise InvalidArgumentError(
            "min_message_interval_s", f"must be 0 to {MAX_MESSAGE_INTERVAL_S:g} seconds"
        )
    return seconds


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
    def __init__(self, pacer: StreamPacer, requested_s: float = 0.0) -> None:
        self._pacer = pacer
        self._requested_s = requested_s
        # This replica's streams when this one started, itself included.
        self._started_among = pacer.active
        self._next_send = 0.0

    def interval(self) -> float:
        """Seconds from one message of this stream to the next: the larger
        of this replica's interval and the consumer's, the consumer's grown
        with this replica's streams since the start (module docstring)."""
        own = self._pacer.interval()
        if self._requested_s <= 0:
            return own
        growth = max(1.0, self._pacer.active / self._started_among)
        # Never below what was asked, which is at most MAX_MESSAGE_INTERVAL_S.
        return max(own, min(self._requested_s * growth, MAX_MESSAGE_INTERVAL_S))

    def due(self) -> bool:
        return self._pacer.clock() >= self._next_send

    def sent(self) -> None:
        self._next_send = self._pacer.clock() + self.interval()

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
        """Seconds between two messages of one stream by this replica's own
        budget; 0 when it has none."""
        return stream_interval(self.active, self._budget)

    @contextmanager
    def stream(self, requested_s: float = 0.0) -> Iterator[StreamPace]:
        """One stream's pace; `requested_s`: the consumer's interval (0: none)."""
        self.active += 1
        try:
            yield StreamPace(self, requested_s)
        finally:
            self.active -= 1
