"""Sends events to the anomaly service without ever blocking the request path.

`publish` is a synchronous put into a bounded queue: when the queue is full
the event is dropped and counted. A budget alert (EVENT_KIND_BUDGET_THRESHOLD,
sent once per budget and period, so never sent again if dropped) goes into a
lane of its own that a flood of ordinary events cannot fill, and is sent
first. One long-lived client-streaming `Report` call drains the queue; if
anomaly is down, the call waits for it (wait_for_ready) while the queue
absorbs what it can, and a broken call is reopened with backoff, counting the
events that were in it as lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import structlog

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from services.common.backoff import Backoff, reconnect_forever

log = structlog.get_logger(__name__)

# The first drop is logged, then one in a thousand: a full queue drops many a second.
DROP_LOG_EVERY = 1000
# Kinds that are sent once and never again (a budget's crossing is reported
# once per period): queued apart from the rest and sent before it.
ALERT_KINDS = frozenset({anomaly_pb2.EVENT_KIND_BUDGET_THRESHOLD})
# Alerts waiting at once: at most one per budget and period arrives, so this
# many means that many budgets crossed while anomaly was unreachable; only past
# it is one dropped (still bounded memory: ~100 bytes each).
MAX_PENDING_ALERTS = 100_000


@dataclass
class _CallState:
    in_call: int = 0
    closed_by_us: bool = False
    broken: bool = False


class EventPublisher:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        max_queue: int = 10_000,
        max_alerts: int = MAX_PENDING_ALERTS,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._stub = anomaly_pb2_grpc.AnomalyStub(channel)
        self._max_queue = max_queue
        self._max_alerts = max_alerts
        self._queue: deque[anomaly_pb2.Event] = deque()
        self._alerts: deque[anomaly_pb2.Event] = deque()
        # Set while either lane holds an event (or aclose has asked for the end).
        self._ready = asyncio.Event()
        self._closing = False
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._call = _CallState()  # the Report call open now, or the last one
        self.published = 0
        self.dropped = 0
        self.alerts_dropped = 0
        self.sent = 0
        self.lost = 0

    def publish(self, event: anomaly_pb2.Event) -> bool:
        """Queues the event if there is room in its lane; never waits."""
        alert = event.kind in ALERT_KINDS
        lane, room = (self._alerts, self._max_alerts) if alert else (self._queue, self._max_queue)
        if len(lane) >= room:
            if alert:
                self.alerts_dropped += 1
                log.error("budget alerts pending past their bound, dropping one", kind=event.kind)
                return False
            self.dropped += 1
            if self.dropped % DROP_LOG_EVERY == 1:
                log.warning("event queue full, dropping events", dropped=self.dropped)
            return False
        lane.append(event)
        self._ready.set()
        self.published += 1
        return True

    @property
    def queued(self) -> int:
        return len(self._alerts) + len(self._queue)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (for at most timeout_s), then closes the stream."""
        if self._task is None:
            return
        self._closing = True
        self._ready.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("events not flushed at shutdown", queued=self.queued)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _next(self) -> anomaly_pb2.Event | None:
        """The next event, alerts first; None once closing and both lanes are empty."""
        while True:
            if self._alerts:
                return self._alerts.popleft()
            if self._queue:
                return self._queue.popleft()
            if self._closing:
                return None
            self._ready.clear()
            await self._ready.wait()

    async def _events(self, state: _CallState) -> AsyncIterator[anomaly_pb2.Event]:
        while True:
            event = await self._next()
            if state.broken:
                # grpc may still pull from a broken call's iterator while the
                # next call drains the queue: the event goes back for that one.
                if event is not None:
                    lane = self._alerts if event.kind in ALERT_KINDS else self._queue
                    lane.appendleft(event)
                    self._ready.set()
                return
            if event is None:
                state.closed_by_us = True
                return
            state.in_call += 1
            yield event

    async def _run(self) -> None:
        backoff = Backoff(self._initial_backoff_s, self._max_backoff_s)
        await reconnect_forever(
            self._report, backoff, on_error=self._broken, errors=(grpc.aio.AioRpcError,)
        )

    async def _report(self, backoff: Backoff) -> bool:
        """One Report call; True once aclose's end marker has gone into a call."""
        if self._call.closed_by_us:
            return True  # the end marker went into the call that broke: nothing follows it
        self._call = _CallState()
        reply = await self._stub.Report(self._events(self._call), wait_for_ready=True)
        self.sent += reply.accepted
        backoff.reset()
        return self._call.closed_by_us

    def _broken(self, err: Exception) -> None:
        assert isinstance(err, grpc.aio.AioRpcError)
        self._call.broken = True
        self.lost += self._call.in_call
        log.warning("event stream to anomaly broke", code=err.code().name, lost=self._call.in_call)
