"""Notices an engine that can no longer serve: dead (on the engine's own
signal that its process is gone) or wedged (requests unfinished and no
engine step for `stall_s`). The service then turns NOT_SERVING, so the
router stops sending to it, and exits non-zero, so that its supervisor
(compose, Kubernetes, `make run`) starts a fresh one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.common.spec import EXIT_SERVICE_FAILED
from services.inference.engine import Engine

# The exit of a service that failed for good (services/common/entrypoint.py).
EXIT_ENGINE_FAILED = EXIT_SERVICE_FAILED


class StallDetector:
    """Whether an engine holds unfinished requests without stepping.

    Time counts from the later of its last step and the first check that
    saw it busy, so an engine idle for an hour is not wedged the moment a
    request comes."""

    def __init__(
        self, engine: Engine, stall_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self.stall_s = stall_s
        self._clock = clock
        self._busy_since: float | None = None

    def check(self) -> str | None:
        """Why the engine is wedged, or None while it is not."""
        now = self._clock()
        unfinished = self._engine.num_unfinished_requests()
        if unfinished == 0:
            self._busy_since = None
            return None
        if self._busy_since is None:
            self._busy_since = now
        quiet_s = now - max(self._busy_since, self._engine.last_step_at())
        if quiet_s < self.stall_s:
            return None
        return f"wedged: {unfinished} requests unfinished and no engine step for {quiet_s:.1f} s"


async def wait_engine_failure(engine: Engine, *, stall_s: float) -> str:
    """Returns why, once the engine has died or wedged."""
    dead = asyncio.ensure_future(engine.wait_dead())
    stalled = asyncio.ensure_future(_wait_stalled(StallDetector(engine, stall_s)))
    try:
        done, _ = await asyncio.wait({dead, stalled}, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        for task in (dead, stalled):
            task.cancel()
        await asyncio.gather(dead, stalled, return_exceptions=True)


async def _wait_stalled(detector: StallDetector) -> str:
    # Four looks per stall_s: a wedge is noticed at most a quarter late.
    interval = detector.stall_s / 4
    while True:
        await asyncio.sleep(interval)
        reason = detector.check()
        if reason is not None:
            return reason
