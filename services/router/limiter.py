"""A per-replica concurrency limit that follows the replica's queueing.

In the spirit of Netflix's concurrency-limits (Gradient2, Vegas) and Envoy's
adaptive concurrency filter, with one change for LLM engines: the signal is
the time a request waited in the engine's own queue before it was scheduled
(the replica reports it on the first chunk), compared with its time to
first token. Time to first token alone misleads: it grows with the prefill
of a bigger batch even when nothing queues, and a TTFT gradient then starves
an engine that batches well. While requests are scheduled at once the limit
grows by about its square root per sample; when queueing becomes more than
`tolerance` of the time to first token the limit shrinks in proportion.

It starts at what the replica can batch (`max_limit`, its max_num_seqs, once
known) and never exceeds it: past that a request only waits inside the
engine, where the router can no longer order it fairly."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable


class Ewma:
    def __init__(self, window: int) -> None:
        self._alpha = 2.0 / (window + 1)
        self.value: float | None = None

    def add(self, sample: float) -> float:
        self.value = (
            sample if self.value is None else self.value + self._alpha * (sample - self.value)
        )
        return self.value


class RecentQuantile:
    """A quantile of the last `window` samples: a high one bounds what most
    of the next samples will be, where a mean is beaten by half of them.
    Kept current on `add`: it is read far more often than it changes."""

    def __init__(self, window: int, q: float) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._q = q
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self._samples.append(sample)
        ordered = sorted(self._samples)
        self.value = ordered[min(len(ordered) - 1, int(self._q * len(ordered)))]


class GradientLimiter:
    def __init__(
        self,
        *,
        # A start that a CPU or GPU engine batches well; the replica's batch size caps it.
        initial: int = 32,
        # Never below one: a replica with no slot would never be measured again.
        min_limit: int = 1,
        # Above any engine's usual max_num_seqs: the batch size is the real cap.
        max_limit: int = 256,
        # Queueing up to half the time to first token is still batching well.
        tolerance: float = 0.5,
        # Each sample moves the limit a fifth of the way: steady, yet quick to follow.
        smoothing: float = 0.2,
        # The last ten or so samples: one engine step's worth of first chunks.
        short_window: int = 10,
    ) -> None:
        self._min = min_limit
        self._ceiling = max(min_limit, max_limit)
        self._max = self._ceiling
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._short = Ewma(short_window)
        self._queued = Ewma(short_window)
        self._sampled = False
        self.limit = float(min(max(initial, min_limit), self._max))
        self.in_flight = 0
        # Told after every change of `in_flight`, the limit or the latency
        # (the replica set's index of its replicas follows them).
        self.watcher: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.watcher is not None:
            self.watcher()

    @property
    def max_limit(self) -> int:
        return self._max

    def cap_at(self, capacity: int) -> None:
        """The replica batches at most `capacity` requests: never send more."""
        self._max = max(self._min, min(self._ceiling, capacity))
        # Until it has measured anything, trust the engine's own capacity.
        self.limit = float(self._max) if not self._sampled else min(self.limit, float(self._max))
        self._changed()

    @property
    def expected_latency(self) -> float:
        """Recent time to first token (0 before any sample)."""
        return self._short.value or 0.0

    def has_room(self, reserve: int = 0) -> bool:
        """Under the limit less `reserve` slots."""
        return self.in_flight < int(self.limit) - reserve

    def acquire(self) -> None:
        self.in_flight += 1
        self._changed()

    def release(self) -> None:
        self.in_flight -= 1
        self._changed()

    def on_sample(self, latency_s: float, in_flight: int, queued_s: float = 0.0) -> None:
        """One request's time to first token and its wait in the engine's
        queue, with the requests in flight when it was measured."""
        self._sampled = True
        short = self._short.add(latency_s)
        queued = self._queued.add(queued_s)
        if in_flight < self.limit / 2:
            self._changed()  # the latency moved
            return  # an idle replica (under half its limit) says nothing about its limit
        gradient = 1.0
        if queued > 0:
            # At most halve the target per sample: one slow prefill must not collapse the limit.
            gradient = max(0.5, min(1.0, self._tolerance * short / queued))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit * (1 - self._smoothing) + target * self._smoothing
        self.limit = min(float(self._max), max(float(self._min), limit))
        self._changed()
