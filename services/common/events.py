"""Sends events to the anomaly service without ever blocking the request path.

`publish` is a synchronous put into a bounded queue: when the queue is full
the event is dropped and counted. One long-lived client-streaming `Report`
call drains the queue; if anomaly is down, the call waits for it
(wait_for_ready) while the queue absorbs what it can, and a broken call is
reopened with backoff, counting the events that were in it as lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import structlog

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc

log = structlog.get_logger(__name__)

DROP_LOG_EVERY = 1000


@dataclass
class _CallState:
    in_call: int = 0
    closed_by_us: bool = False


class EventPublisher:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        max_queue: int = 10_000,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._stub = anomaly_pb2_grpc.AnomalyStub(channel)
        # None is the end-of-stream marker put there by aclose.
        self._queue: asyncio.Queue[anomaly_pb2.Event | None] = asyncio.Queue(max_queue)
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0
        self.sent = 0
        self.lost = 0

    def publish(self, event: anomaly_pb2.Event) -> bool:
        """Queues the event if there is room; never waits."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % DROP_LOG_EVERY == 1:
                log.warning("event queue full, dropping events", dropped=self.dropped)
            return False
        self.published += 1
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (for at most timeout_s), then closes the stream."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.put(None), timeout_s)
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("events not flushed at shutdown", queued=self._queue.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _events(self, state: _CallState) -> AsyncIterator[anomaly_pb2.Event]:
        while True:
            event = await self._queue.get()
            if event is None:
                state.closed_by_us = True
                return
            state.in_call += 1
            yield event

    async def _run(self) -> None:
        backoff = self._initial_backoff_s
        while True:
            state = _CallState()
            try:
                reply = await self._stub.Report(self._events(state), wait_for_ready=True)
                self.sent += reply.accepted
                backoff = self._initial_backoff_s
            except grpc.aio.AioRpcError as err:
                self.lost += state.in_call
                log.warning(
                    "event stream to anomaly broke", code=err.code().name, lost=state.in_call
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            if state.closed_by_us:
                return
