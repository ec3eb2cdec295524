"""A per-replica concurrency limit that follows the replica's latency.

In the spirit of Netflix's Gradient2 limiter (concurrency-limits) and Envoy's
adaptive concurrency filter: compare a short-term latency average with a
long-term one. While they agree the replica is not queueing and the limit
grows by about its square root per sample; when short-term latency rises
above `tolerance` times the long-term one the limit shrinks in proportion.
The latency is time to first token, which is where an overloaded engine's
queueing shows, and which does not depend on how long the answer is.

The limit never exceeds what the replica can batch (`max_limit`, its
max_num_seqs): past that a request only waits inside the engine, where the
router can no longer order it fairly."""

from __future__ import annotations

import math


class Ewma:
    def __init__(self, window: int) -> None:
        self._alpha = 2.0 / (window + 1)
        self.value: float | None = None

    def add(self, sample: float) -> float:
        self.value = (
            sample if self.value is None else self.value + self._alpha * (sample - self.value)
        )
        return self.value


class GradientLimiter:
    def __init__(
        self,
        *,
        initial: int = 32,
        min_limit: int = 1,
        max_limit: int = 256,
        tolerance: float = 2.0,
        smoothing: float = 0.2,
        short_window: int = 10,
        long_window: int = 500,
    ) -> None:
        self._min = min_limit
        self._ceiling = max(min_limit, max_limit)
        self._max = self._ceiling
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._short = Ewma(short_window)
        self._long = Ewma(long_window)
        self.limit = float(min(max(initial, min_limit), self._max))
        self.in_flight = 0

    @property
    def max_limit(self) -> int:
        return self._max

    def cap_at(self, capacity: int) -> None:
        """The replica batches at most `capacity` requests: never send more."""
        self._max = max(self._min, min(self._ceiling, capacity))
        self.limit = min(self.limit, float(self._max))

    @property
    def expected_latency(self) -> float:
        """Recent time to first token (0 before any sample)."""
        return self._short.value or 0.0

    def has_room(self, reserve: int = 0) -> bool:
        """Under the limit less `reserve` slots."""
        return self.in_flight < int(self.limit) - reserve

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def on_sample(self, latency_s: float, in_flight: int) -> None:
        """One request's time to first token, with the requests in flight
        when it was measured."""
        short = self._short.add(latency_s)
        long = self._long.add(latency_s)
        if long / short > 2.0:
            # Latency fell a lot (load went away): let the long view catch up
            # instead of crediting the old, slow baseline.
            self._long.value = long * 0.95
        if in_flight < self.limit / 2:
            return  # an idle replica says nothing about its limit
        gradient = max(0.5, min(1.0, self._tolerance * long / short))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit * (1 - self._smoothing) + target * self._smoothing
        self.limit = min(float(self._max), max(float(self._min), limit))
