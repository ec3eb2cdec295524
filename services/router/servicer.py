"""maas.v1.Router over the dispatcher: queue, dispatch, stream through,
retry before the first chunk, release."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from maas.v1 import (
    auth_pb2,
    embedding_pb2,
    generation_pb2,
    inference_pb2,
    router_pb2,
    router_pb2_grpc,
)
from observability.context import REPLICA_METADATA_KEY
from services.common.errors import InvalidArgumentError
from services.common.generation_limits import check_adapter_id, completion_limit
from services.inference.convert import load_to_proto
from services.inference.pacing import check_message_interval
from services.router.choice import prefix_key
from services.router.dispatcher import Dispatcher, Lease, Ticket
from services.router.fair_queue import BATCH, DEFAULT, INTERACTIVE
from services.router.metrics import CLASS_NAMES, RouterMetrics
from services.router.replica import Replica
from services.router.replicas import ReplicaSet
from services.router.retry import FirstTokenRetry, ReplicaStream
from services.router.route_session import RouteSession, status_code

Context = grpc.aio.ServicerContext[Any, Any]

_CLASS_OF = {
    auth_pb2.PRIORITY_INTERACTIVE: INTERACTIVE,
    auth_pb2.PRIORITY_DEFAULT: DEFAULT,
    auth_pb2.PRIORITY_UNSPECIFIED: DEFAULT,
    auth_pb2.PRIORITY_BATCH: BATCH,
}
_PRIORITY_OF = {
    INTERACTIVE: auth_pb2.PRIORITY_INTERACTIVE,
    DEFAULT: auth_pb2.PRIORITY_DEFAULT,
    BATCH: auth_pb2.PRIORITY_BATCH,
}
# An operator's ejection lasts a day at most: longer is a deregistration.
MAX_EJECTION_S = 86_400.0
# Trailing metadata of Generate, so a client can tell where its time to
# first token went: seconds from the router receiving the call to its first
# call to a replica (its queue and its own work), and from that call to the
# replica's first chunk reaching the router (the engine's queue, which
# GenerateResponse.queued_s tells, its first step and the hop). The rest is
# the hops between the client and the router.
ROUTER_WAIT_METADATA_KEY = "x-maas-router-wait-s"
REPLICA_FIRST_CHUNK_METADATA_KEY = "x-maas-replica-first-chunk-s"


def estimated_cost(request: router_pb2.RouterGenerateRequest) -> float:
    """The caller's estimate, or about 4 characters a token plus what each
    choice may generate (the mesh's one default when max_tokens is unset; the
    context is not known here, so the default's upper bound)."""
    if request.context.estimated_tokens:
        return float(request.context.estimated_tokens)
    r = request.request
    which = r.WhichOneof("input")
    if which == "prompt_token_ids":
        prompt = len(r.prompt_token_ids.ids)
    elif which == "messages":
        prompt = sum(len(m.content) for m in r.messages.messages) // 4
    else:
        prompt = len(r.prompt) // 4
    max_tokens = r.max_tokens if r.HasField("max_tokens") else None
    return float(prompt + completion_limit(max_tokens, None) * max(1, r.n))


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        replicas: ReplicaSet,
        dispatcher: Dispatcher,
        metrics: RouterMetrics | None = None,
        *,
        # One retry on another replica: enough for one replica going away.
        max_attempts: int = 2,
    ) -> None:
        self._replicas = replicas
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._clock = replicas.clock
        self._max_attempts = max_attempts
        self._retry = FirstTokenRetry(
            dispatcher, self._clock, max_attempts=max_attempts, on_retry=self._count_retry
        )

    async def Generate(
        self, request: router_pb2.RouterGenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        received = self._clock()
        ticket = self._ticket(request, context, received)
        priority = ticket.priority
        span = trace.get_current_span()
        # The router's wait, the replica and when it was called (the last attempt's).
        router_wait_s, address, called_at = 0.0, "", 0.0

        def trailers(*timings: tuple[str, float]) -> None:
            # The gateway reports which replica served it (anomaly's per-replica detectors).
            context.set_trailing_metadata(
                (
                    (REPLICA_METADATA_KEY, address),
                    (ROUTER_WAIT_METADATA_KEY, f"{router_wait_s:.6f}"),
                    *((key, f"{value:.6f}") for key, value in timings),
                )
            )

        def open_stream(lease: Lease, attempt: int) -> ReplicaStream:
            nonlocal router_wait_s, address, called_at
            if attempt == 1:
                router_wait_s = self._record_dispatch(span, lease.queued_s, received, priority)
            span.set_attribute("maas.router.replica", lease.replica.address)
            span.set_attribute("maas.router.attempts", attempt)
            address, called_at = lease.replica.address, self._clock()
            trailers()
            # The caller's deadline travels down; the request id travels as
            # metadata through the client interceptors.
            forward = inference_pb2.InferenceGenerateRequest(
                request=request.request,
                priority=lease.engine_priority,
                adapter_id=request.adapter_id,
                # The pace the caller asked, as asked: every message the router
                # forwards reaches the caller, whose budget it is.
                min_message_interval_s=request.min_message_interval_s,
            )
            stub = self._replicas.links.stub(lease.replica)
            return stub.Generate(forward, timeout=context.time_remaining())

        # aclosing: a caller gone mid-stream ends the replica's stream and lease now.
        chunks = self._retry.stream(ticket, open_stream, lambda: _caller_gone(context))
        first = True
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if first:
                    first = False
                    trailers((REPLICA_FIRST_CHUNK_METADATA_KEY, self._clock() - called_at))
                yield chunk

    async def Route(
        self, request_iterator: AsyncIterator[router_pb2.RouteUpdate], context: Context
    ) -> AsyncIterator[router_pb2.RouteDecision]:
        received = self._clock()
        updates = aiter(request_iterator)
        first = await anext(updates, None)
        if first is None or first.WhichOneof("update") != "request":
            raise InvalidArgumentError("request", "the first update must carry the request")
        ticket = self._ticket(first.request, context, received)
        span = trace.get_current_span()
        session = RouteSession(
            self._dispatcher,
            ticket,
            self._clock,
            max_attempts=self._max_attempts,
            on_retry=self._count_retry,
        )
        try:
            while True:
                lease = await session.assign()
                if session.attempt == 1:
                    self._record_dispatch(span, lease.queued_s, received, ticket.priority)
                span.set_attribute("maas.router.replica", lease.replica.address)
                span.set_attribute("maas.router.attempts", session.attempt)
                yield router_pb2.RouteDecision(
                    replica_address=lease.replica.address,
                    engine_priority=lease.engine_priority,
                    attempt=session.attempt,
                )
                if not await _follow(session, updates):
                    return
        finally:
            # The caller gone (its cancel, its connection lost) ends the lease here.
            session.close()

    def _ticket(
        self, request: router_pb2.RouterGenerateRequest, context: Context, received: float
    ) -> Ticket:
        """What admission needs of a request, from the request and the call's deadline."""
        priority = _CLASS_OF.get(request.context.priority)
        if priority is None:
            raise InvalidArgumentError("context.priority", "unknown priority")
        check_adapter_id(request.adapter_id)
        check_message_interval(request.min_message_interval_s)
        remaining = context.time_remaining()
        return Ticket(
            tenant=request.context.tenant_id,
            priority=priority,
            model=request.request.model,
            cost=estimated_cost(request),
            weight=request.context.weight or 1.0,
            deadline=received + remaining if remaining is not None else None,
            prefix_key=prefix_key(request.request),
            adapter_id=request.adapter_id,
            received_at=received,
        )

    def _count_retry(self, code: grpc.StatusCode) -> None:
        if self._metrics is not None:
            self._metrics.retries.add(1, {"code": code.name})

    def _record_dispatch(
        self, span: trace.Span, queued_s: float, received: float, priority: int
    ) -> float:
        """Records the first dispatch; returns the router's added time."""
        added = self._clock() - received
        span.set_attribute("maas.router.queue_wait_s", queued_s)
        span.set_attribute("maas.router.added_time_s", added)
        if self._metrics is not None:
            self._metrics.queue_wait.record(queued_s, {"priority": CLASS_NAMES[priority]})
            self._metrics.added_time.record(added)
        return added

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        stub = self._replicas.links.stub(self._replicas.pick(request.model))
        return await stub.CountTokens(request, timeout=context.time_remaining())

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Context
    ) -> embedding_pb2.EmbedResponse:
        stub = self._replicas.links.stub(self._replicas.pick(request.model))
        return await stub.Embed(request, timeout=context.time_remaining())

    async def ListReplicas(
        self, request: router_pb2.ListReplicasRequest, context: Context
    ) -> router_pb2.ListReplicasResponse:
        return router_pb2.ListReplicasResponse(
            replicas=[self._replica_to_proto(r) for r in self._replicas.replicas]
        )

    async def RegisterReplica(
        self, request: router_pb2.RegisterReplicaRequest, context: Context
    ) -> router_pb2.Replica:
        _check_address(request.address)
        return self._replica_to_proto(self._replicas.register(request.address))

    async def DeregisterReplica(
        self, request: router_pb2.DeregisterReplicaRequest, context: Context
    ) -> router_pb2.DeregisterReplicaResponse:
        _check_address(request.address)
        running = await self._replicas.deregister(request.address)
        return router_pb2.DeregisterReplicaResponse(draining_streams=running)

    async def DrainReplica(
        self, request: router_pb2.DrainReplicaRequest, context: Context
    ) -> router_pb2.Replica:
        _check_address(request.address)
        replica = self._replicas.drain(request.address, drain=not request.undrain)
        return self._replica_to_proto(replica)

    async def EjectReplica(
        self, request: router_pb2.EjectReplicaRequest, context: Context
    ) -> router_pb2.Replica:
        _check_address(request.address)
        if not 0 < request.duration_s <= MAX_EJECTION_S:
            raise InvalidArgumentError("duration_s", "must be more than 0 and at most 86400")
        replica = self._replicas.eject(request.address, request.duration_s, request.reason)
        return self._replica_to_proto(replica)

    async def RestoreReplica(
        self, request: router_pb2.RestoreReplicaRequest, context: Context
    ) -> router_pb2.Replica:
        _check_address(request.address)
        return self._replica_to_proto(self._replicas.restore(request.address))

    async def GetQueueStats(
        self, request: router_pb2.GetQueueStatsRequest, context: Context
    ) -> router_pb2.QueueStats:
        stats = router_pb2.QueueStats(
            waiting=self._dispatcher.waiting(), shed=dict(self._dispatcher.shed)
        )
        totals: dict[tuple[str, int], tuple[int, float]] = {}
        for queue in self._dispatcher.queues.values():
            for key, (waiting, tokens) in queue.depths().items():
                n, t = totals.get(key, (0, 0.0))
                totals[key] = (n + waiting, t + tokens)
        for (tenant, priority), (waiting, tokens) in sorted(totals.items()):
            stats.depths.add(
                tenant_id=tenant,
                priority=_PRIORITY_OF[priority],
                waiting=waiting,
                tokens=int(tokens),
            )
        return stats

    def _replica_to_proto(self, r: Replica) -> router_pb2.Replica:
        now = self._clock()
        if not r.serving:
            state = router_pb2.REPLICA_STATE_NOT_SERVING
        elif r.draining:
            state = router_pb2.REPLICA_STATE_DRAINING
        elif r.ejected(now):
            state = router_pb2.REPLICA_STATE_EJECTED
        else:
            state = router_pb2.REPLICA_STATE_SERVING
        return router_pb2.Replica(
            address=r.address,
            model=r.model,
            adapters=r.adapters,
            state=state,
            in_flight=r.limiter.in_flight,
            concurrency_limit=r.slots,
            load=load_to_proto(r.load),
            ejected_for_s=max(0.0, r.ejected_until - now),
            ttft_s=r.limiter.expected_latency,
            probing=r.probing,
            consecutive_failures=r.consecutive_failures,
            loaded_adapters=r.load.loaded_adapters,
            adapter_slots=r.adapter_slots,
        )


async def _follow(session: RouteSession, updates: AsyncIterator[router_pb2.RouteUpdate]) -> bool:
    """Feeds the caller's reports on the current replica to `session` until
    the replica call's end; True when a retry is due. The caller closing its
    side without an end is a cut (the session's close gives the lease back)."""
    async for update in updates:
        which = update.WhichOneof("update")
        if which == "first_chunk":
            session.first_chunk(update.first_chunk.first_token_s, update.first_chunk.queued_s)
        elif which == "ended":
            ended = update.ended
            return session.ended(
                status_code(ended.code),
                caller_gone=ended.caller_gone,
                finished=ended.finished,
                reason=ended.reason,
            )
        else:
            raise InvalidArgumentError("update", "the request was sent already")
    return False


def _caller_gone(context: Context) -> bool:
    if context.cancelled():
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not address or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError("address", "must be host:port")
