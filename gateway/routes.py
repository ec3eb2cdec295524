"""How a generation reaches its replica from the gateway, two ways.

"proxy": through the router's Generate, which streams every chunk through.
"direct": the router's Route admits the request, queues it fairly and picks
the replica (flow control stays there); the gateway then calls the replica
itself, streams its chunks straight to the caller, and reports back the
first chunk and how the call ended, so the router frees the replica's place,
learns its latency and failures, and retries a replica that failed before
its first chunk elsewhere. The replicas' addresses the router knows must be
reachable from the gateway in this mode; the gateway's channels to them use
the same security (TLS, client certificate, service token) as its other hops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.trace import Span

from maas.v1 import (
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity, channel
from observability.client_spans import ClientSpans, client_call_failed, end_client_span
from observability.context import REPLICA_METADATA_KEY
from services.common.errors import UnavailableError, status_detail
from services.router.reasons import failure_reason
from services.router.spec import RESEND_REASONS

RouteCall = grpc.aio.StreamStreamCall[router_pb2.RouteUpdate, router_pb2.RouteDecision]
# How long a request waits, before its first decision, for a router that is
# down or stopping: a router restarts to SERVING in about 1 s
# (bench/router_restart.py), and the gateway's channel to it reconnects
# within a second (CALLER_CHANNEL_OPTIONS); past this the caller hears UNAVAILABLE.
ROUTER_RETRY_S = 3.0
# The first pause; each next one doubles up to the most, as often as the
# channel tries to reconnect: tries at 0.1, 0.3, 0.7, 1.5, 2.5 and 3 s.
ROUTER_RETRY_FIRST_PAUSE_S = 0.1
ROUTER_RETRY_MAX_PAUSE_S = 1.0


def router_restarting(err: grpc.aio.AioRpcError) -> bool:
    """Whether a Route call failed because the router is down or stopping,
    not because it refused the request: UNAVAILABLE from the channel itself
    (no status details: nothing in the mesh answered) or from a router
    stopping or just started."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None  # trailers that disagree with the status line: none to trust
    info = status_detail(status, error_details_pb2.ErrorInfo) if status is not None else None
    return info is None or info.reason in RESEND_REASONS


class Route(Protocol):
    """One generation's way to its replica, as the core streams it."""

    def chunks(self) -> AsyncIterator[generation_pb2.GenerateResponse]: ...

    async def replica(self, err: grpc.aio.AioRpcError | None) -> str:
        """The replica that served (or failed) it; "" when none was reached."""
        ...

    async def aclose(self) -> None:
        """Stops it, down to the engine; a no-op once it ended."""
        ...


class Routing(Protocol):
    def open(
        self, routed: router_pb2.RouterGenerateRequest, remaining: Callable[[], float | None]
    ) -> Route:
        """Starts routing `routed`; `remaining` tells the caller's time left (None: no deadline)."""
        ...

    async def aclose(self) -> None: ...


def replica_of(metadata: grpc.aio.Metadata | None) -> str:
    """The replica the router named in its trailing metadata ("" if none)."""
    for key, value in metadata or ():
        if key == REPLICA_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


GenerateCall = grpc.aio.UnaryStreamCall[
    inference_pb2.InferenceGenerateRequest, generation_pb2.GenerateResponse
]
ProxiedCall = grpc.aio.UnaryStreamCall[
    router_pb2.RouterGenerateRequest, generation_pb2.GenerateResponse
]


class ProxiedRoute:
    """Through the router's Generate: the router streams every chunk through."""

    def __init__(self, call: ProxiedCall) -> None:
        self._call = call

    def chunks(self) -> AsyncIterator[generation_pb2.GenerateResponse]:
        return self._call.__aiter__()

    async def replica(self, err: grpc.aio.AioRpcError | None) -> str:
        # The router names the replica in its trailing metadata.
        return replica_of(err.trailing_metadata() if err else await self._call.trailing_metadata())

    async def aclose(self) -> None:
        self._call.cancel()


class Proxy:
    """Every generation through the router's Generate."""

    def __init__(self, router: router_pb2_grpc.RouterAsyncStub) -> None:
        self._router = router

    def open(
        self, routed: router_pb2.RouterGenerateRequest, remaining: Callable[[], float | None]
    ) -> Route:
        return ProxiedRoute(self._router.Generate(routed, timeout=remaining()))

    async def aclose(self) -> None:
        pass


@dataclass(eq=False)
class _Link:
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceAsyncStub
    users: int = 0
    used_at: float = 0.0


# The calls' methods, as their client spans are named.
GENERATE_METHOD = "/maas.v1.Inference/Generate"
ROUTE_METHOD = "/maas.v1.Router/Route"


class ReplicaChannels:
    """One channel per replica address, opened on first use. Channels nobody
    is using are closed once more than `max_idle` are open, least recently
    used first, so the addresses of replicas long gone do not pile up; a
    channel in use is never closed.

    The channels carry every token of every stream, so they have no client
    interceptors: each call starts its own span and sends its own metadata
    (`spans`), as the interceptors would."""

    def __init__(
        self, telemetry: Telemetry, *, security: ChannelSecurity = PLAINTEXT, max_idle: int
    ) -> None:
        self._telemetry = telemetry
        self._security = security
        self.spans = ClientSpans(telemetry.tracer(), security.call_metadata())
        self._max_idle = max_idle
        self._links: dict[str, _Link] = {}

    def __len__(self) -> int:
        return len(self._links)

    def acquire(self, address: str) -> inference_pb2_grpc.InferenceAsyncStub:
        """The stub for `address`, held until `release(address)`."""
        link = self._links.get(address)
        if link is None:
            ch = channel(address, self._telemetry, security=self._security, instrumented=False)
            link = self._links[address] = _Link(ch, inference_pb2_grpc.InferenceStub(ch))
        link.users += 1
        return link.stub

    async def release(self, address: str) -> None:
        link = self._links.get(address)
        if link is None:
            return
        link.users -= 1
        link.used_at = time.monotonic()
        if len(self._links) <= self._max_idle:
            return
        idle = sorted(
            ((a, x) for a, x in self._links.items() if x.users == 0), key=lambda p: p[1].used_at
        )
        for gone, stale in idle[: len(idle) - self._max_idle]:
            del self._links[gone]
            await stale.channel.close()

    async def aclose(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.channel.close()


class RouteUpdates:
    """The Route call's request stream, which the gateway ends itself on
    every path. grpc's own write() mode under client interceptors leaves a
    task waiting on its queue when the router ends the call first (a
    refusal): one per refused request until the garbage collector destroys
    it (grpc/grpc#37355)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[router_pb2.RouteUpdate | None] = asyncio.Queue()
        self._ended = False

    def send(self, update: router_pb2.RouteUpdate) -> None:
        if not self._ended:
            self._queue.put_nowait(update)

    def end(self) -> None:
        """No more updates: the call is half-closed once the queue drains."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[router_pb2.RouteUpdate]:
        while (update := await self._queue.get()) is not None:
            yield update


class DirectRoute:
    """Router.Route for the decision, then the replica itself for the chunks."""

    def __init__(
        self,
        router: router_pb2_grpc.RouterAsyncStub,
        channels: ReplicaChannels,
        routed: router_pb2.RouterGenerateRequest,
        remaining: Callable[[], float | None],
        settle: Callable[[RouteCall], None],
    ) -> None:
        self._router = router
        self._routed = routed
        self._channels = channels
        self._remaining = remaining
        self._settle = settle
        self._updates = RouteUpdates()
        self._route_span: Span | None = None
        self._route = self._open_route()
        self._reported = False
        self._chunks: AsyncGenerator[generation_pb2.GenerateResponse, None] | None = None
        self._address = ""

    def chunks(self) -> AsyncIterator[generation_pb2.GenerateResponse]:
        self._chunks = self._stream()
        return self._chunks

    async def replica(self, err: grpc.aio.AioRpcError | None) -> str:
        return self._address

    async def aclose(self) -> None:
        if self._chunks is not None:
            # Cancels the replica call (and so the request in the engine) when it still runs.
            await self._chunks.aclose()
        if not self._reported:
            # The router takes a call ended without a report for a cut and frees the place.
            self._route.cancel()
        self._updates.end()

    async def _stream(self) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        decision = await self._first_decision()
        while decision is not None:
            self._address = decision.replica_address
            stub = self._channels.acquire(self._address)
            forward = inference_pb2.InferenceGenerateRequest(
                request=self._routed.request,
                priority=decision.engine_priority,
                adapter_id=self._routed.adapter_id,
                min_message_interval_s=self._routed.min_message_interval_s,
            )
            started = time.monotonic()
            first = True
            last: generation_pb2.GenerateResponse | None = None
            failure: grpc.aio.AioRpcError | None = None
            # The caller's deadline travels down; the trace and request id as metadata.
            span, metadata = self._channels.spans.start(GENERATE_METHOD)
            call: GenerateCall = stub.Generate(
                forward, timeout=self._remaining(), metadata=metadata
            )
            try:
                async for chunk in call:
                    if first:
                        first = False
                        # A router gone meanwhile does not stop a stream
                        # already under way: what it is not sent is dropped.
                        self._updates.send(
                            router_pb2.RouteUpdate(
                                first_chunk=router_pb2.RouteFirstChunk(
                                    first_token_s=time.monotonic() - started,
                                    queued_s=chunk.queued_s,
                                )
                            )
                        )
                    last = chunk
                    yield chunk
            except grpc.aio.AioRpcError as err:
                failure = err
            finally:
                # A no-op when the stream ended; else it aborts the request in the engine.
                call.cancel()
                end_client_span(span, failure)
                await self._channels.release(self._address)
            if failure is None:
                finished = (
                    last is not None and last.finish_reason != generation_pb2.FINISH_REASON_ABORT
                )
                self._updates.send(
                    router_pb2.RouteUpdate(ended=router_pb2.RouteEnded(finished=finished))
                )
                self._updates.end()
                self._reported = True
                self._settle(self._route)
                return
            remaining = self._remaining()
            ended = router_pb2.RouteEnded(
                code=failure.code().value[0],
                caller_gone=remaining is not None and remaining <= 0,
                reason=failure_reason(failure),
            )
            if self._route.done():
                # The route ended meanwhile (its deadline, the router gone):
                # nothing more to decide, and the replica's answer is the answer.
                raise failure from None
            self._updates.send(router_pb2.RouteUpdate(ended=ended))
            # Another replica (a retry), the router's verdict (it raises), or
            # the call closed: the failure was the request's own, and is its answer.
            decision = await self._decision()
            if decision is None:
                self._reported = True
                raise failure
        raise UnavailableError("the router closed the route without naming a replica")

    async def _first_decision(self) -> router_pb2.RouteDecision | None:
        """The router's first decision. While the router is unreachable or
        stopping (a restart) the request has reached no replica, so it is
        sent again after a pause, growing, for up to ROUTER_RETRY_S in all
        and within the caller's deadline; then the router's UNAVAILABLE is
        the answer. Any other refusal is the answer at once."""
        pause_s, waited_s = ROUTER_RETRY_FIRST_PAUSE_S, 0.0
        while True:
            # A call that ended before the request went out: reading it raises its status.
            self._updates.send(router_pb2.RouteUpdate(request=self._routed))
            try:
                return await self._decision()
            except grpc.aio.AioRpcError as err:
                remaining = self._remaining()
                if (
                    not router_restarting(err)
                    or waited_s >= ROUTER_RETRY_S
                    or (remaining is not None and remaining <= pause_s)
                ):
                    raise
            pause_s = min(pause_s, ROUTER_RETRY_S - waited_s)
            await asyncio.sleep(pause_s)
            waited_s += pause_s
            pause_s = min(2 * pause_s, ROUTER_RETRY_MAX_PAUSE_S)
            self._updates.end()
            self._updates = RouteUpdates()
            self._route = self._open_route()

    def _open_route(self) -> RouteCall:
        """A Route call fed by `self._updates`; its client span ends with the call."""
        span, metadata = self._channels.spans.start(ROUTE_METHOD)
        self._route_span = span
        # The caller's deadline bounds the route too: the router sheds by it.
        call: RouteCall = self._router.Route(
            aiter(self._updates), timeout=self._remaining(), metadata=metadata
        )
        call.add_done_callback(lambda _: span.end())
        return call

    async def _decision(self) -> router_pb2.RouteDecision | None:
        """The router's next decision; None when it closed the call OK. A
        refusal (shed, queue full, no replica) raises as the router's status."""
        try:
            decision = await self._route.read()
        except grpc.aio.AioRpcError as err:
            if self._route_span is not None:
                client_call_failed(self._route_span, err)
            raise
        if decision is grpc.aio.EOF:
            return None
        assert isinstance(decision, router_pb2.RouteDecision)
        return decision


class Direct:
    """Routes through Router.Route and streams from the replicas directly.
    `router`'s channel to take no client interceptors: each Route call starts
    its own span and sends its own metadata (`channels.spans`)."""

    def __init__(self, router: router_pb2_grpc.RouterAsyncStub, channels: ReplicaChannels) -> None:
        self._router = router
        self._channels = channels
        self._settling: set[RouteCall] = set()

    def open(
        self, routed: router_pb2.RouterGenerateRequest, remaining: Callable[[], float | None]
    ) -> Route:
        return DirectRoute(self._router, self._channels, routed, remaining, self._settle)

    def _settle(self, route: RouteCall) -> None:
        """Holds a call whose end was reported until the router closes it (a
        call dropped unfinished is cancelled, and the router would take the
        report for a cut). Its status ends it: nothing is left to read, so
        neither a task nor a read waits for it."""
        self._settling.add(route)
        route.add_done_callback(self._settling.discard)

    async def aclose(self) -> None:
        await asyncio.gather(*(call.code() for call in self._settling), return_exceptions=True)
        await self._channels.aclose()
