"""The gateway's message budget: every replica's streams arrive here, so the
gateway, not each replica, knows how many messages a second it can take.
Each stream it opens asks its replica for a message at most every `open
streams / budget` seconds (InferenceGenerateRequest.min_message_interval_s,
through the router in proxy routing); the replica merges the tokens made in
between (services/inference/pacing.py).

The interval is fixed when the stream is opened: a stream lasts seconds and
the next ones ask again, so the gateway's traffic follows its open streams
within a stream's life; a burst opened at once, where the first streams ask
for almost nothing, is the replica's to correct (it grows the interval with
its own streams, pacing.py says how)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from gateway.routes import Route, Routing
from maas.v1 import generation_pb2, router_pb2
from services.inference.pacing import requested_interval


class PacedRoute:
    """A route that gives its stream back to the budget when closed."""

    def __init__(self, route: Route, paced: Paced) -> None:
        self._route = route
        self._paced = paced
        self._open = True

    def chunks(self) -> AsyncIterator[generation_pb2.GenerateResponse]:
        return self._route.chunks()

    async def replica(self, err: grpc.aio.AioRpcError | None) -> str:
        return await self._route.replica(err)

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._paced.open_streams -= 1
        await self._route.aclose()


class Paced:
    """`routing`, each stream asking for this gateway's share of
    `messages_per_s` (0: asks nothing, the replicas pace on their own)."""

    def __init__(self, routing: Routing, messages_per_s: float) -> None:
        self._routing = routing
        self._messages_per_s = messages_per_s
        # Streams opened and not yet closed, waiting in the router's queue included.
        self.open_streams = 0

    def open(
        self, routed: router_pb2.RouterGenerateRequest, remaining: Callable[[], float | None]
    ) -> Route:
        self.open_streams += 1
        routed.min_message_interval_s = requested_interval(self.open_streams, self._messages_per_s)
        try:
            route = self._routing.open(routed, remaining)
        except BaseException:
            self.open_streams -= 1
            raise
        return PacedRoute(route, self)

    async def aclose(self) -> None:
        await self._routing.aclose()
