"""maas.v1.Router over the dispatcher: queue, dispatch, stream through,
retry before the first chunk, release."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from maas.v1 import (
    auth_pb2,
    generation_pb2,
    inference_pb2,
    router_pb2,
    router_pb2_grpc,
)
from observability.context import REPLICA_METADATA_KEY
from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.generation_limits import completion_limit
from services.router.choice import prefix_key
from services.router.dispatcher import Dispatcher, Ticket
from services.router.fair_queue import BATCH, DEFAULT, INTERACTIVE
from services.router.metrics import CLASS_NAMES, RouterMetrics
from services.router.replicas import Replica, ReplicaSet

Context = grpc.aio.ServicerContext[Any, Any]

# Codes that say the replica (not the request) failed: worth another replica,
# and counted towards ejecting this one, but only while the caller is still
# waiting (see `is_replica_fault`). INTERNAL and UNKNOWN are not here: a
# request can provoke them (an engine failing on what one caller sent), and
# no caller may take a replica out of rotation; an engine that died answers
# UNAVAILABLE, and its replica turns NOT_SERVING.
REPLICA_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
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
MAX_EJECTION_S = 86_400.0


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
        max_attempts: int = 2,
    ) -> None:
        self._replicas = replicas
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._clock = replicas.clock

    async def Generate(
        self, request: router_pb2.RouterGenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        received = self._clock()
        priority = _CLASS_OF.get(request.context.priority)
        if priority is None:
            raise InvalidArgumentError("context.priority", "unknown priority")
        remaining = context.time_remaining()
        ticket = Ticket(
            tenant=request.context.tenant_id,
            priority=priority,
            model=request.request.model,
            cost=estimated_cost(request),
            weight=request.context.weight or 1.0,
            deadline=received + remaining if remaining is not None else None,
            prefix_key=prefix_key(request.request),
        )
        span = trace.get_current_span()
        for attempt in range(1, self._max_attempts + 1):
            lease = await self._dispatcher.acquire(ticket)
            if attempt == 1:
                self._record_dispatch(span, lease.queued_s, received, priority)
            span.set_attribute("maas.router.replica", lease.replica.address)
            span.set_attribute("maas.router.attempts", attempt)
            # The gateway reports which replica served it (anomaly's per-replica detectors).
            context.set_trailing_metadata(((REPLICA_METADATA_KEY, lease.replica.address),))
            # The caller's deadline travels down; the request id travels as
            # metadata through the client interceptors.
            forward = inference_pb2.InferenceGenerateRequest(
                request=request.request, priority=lease.engine_priority
            )
            call = lease.replica.stub.Generate(forward, timeout=context.time_remaining())
            first_token_s: float | None = None
            engine_queued_s = 0.0
            failed = False
            finished = False
            try:
                last: generation_pb2.GenerateResponse | None = None
                async for chunk in call:
                    if first_token_s is None:
                        first_token_s = self._clock() - lease.dispatched_at
                        engine_queued_s = chunk.queued_s
                    last = chunk
                    # A slow reader holds this yield, and so the replica's stream:
                    # nothing piles up here.
                    yield chunk
                # An aborted stream (the Abort rpc) ran short: not a sample of how long one runs.
                finished = (
                    last is not None and last.finish_reason != generation_pb2.FINISH_REASON_ABORT
                )
                return
            except grpc.aio.AioRpcError as err:
                failed = is_replica_fault(err.code(), caller_gone=_caller_gone(context))
                if not failed:
                    raise  # the request's (or its caller's) doing: its status goes back as is
                if first_token_s is not None:
                    # Never retried after text went out (no duplicated output).
                    raise UnavailableError(
                        f"the replica failed mid-stream ({err.code().name})"
                    ) from err
                if attempt == self._max_attempts:
                    raise UnavailableError(
                        f"no replica could serve the request ({err.code().name})"
                    ) from err
                ticket = dataclasses.replace(
                    ticket, exclude=ticket.exclude | {lease.replica.address}
                )
                if self._metrics is not None:
                    self._metrics.retries.add(1, {"code": err.code().name})
            finally:
                # No-op when the stream ended; on cancellation it aborts the replica's request.
                call.cancel()
                self._dispatcher.release(
                    lease,
                    first_token_s=first_token_s,
                    replica_failed=failed,
                    queued_s=engine_queued_s,
                    finished=finished,
                )

    def _record_dispatch(
        self, span: trace.Span, queued_s: float, received: float, priority: int
    ) -> None:
        added = self._clock() - received
        span.set_attribute("maas.router.queue_wait_s", queued_s)
        span.set_attribute("maas.router.added_time_s", added)
        if self._metrics is not None:
            self._metrics.queue_wait.record(queued_s, {"priority": CLASS_NAMES[priority]})
            self._metrics.added_time.record(added)

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        replica = self._replicas.pick(request.model)
        return await replica.stub.CountTokens(request, timeout=context.time_remaining())

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
        elif now < r.ejected_until:
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
            load=r.load,
            ejected_for_s=max(0.0, r.ejected_until - now),
            ttft_s=r.limiter.expected_latency,
            probing=r.probing,
            consecutive_failures=r.consecutive_failures,
        )


def is_replica_fault(code: grpc.StatusCode, *, caller_gone: bool) -> bool:
    """Whether a failed replica call is the replica's doing.

    Never once the caller has gone: its cancel, or its deadline passing.
    DEADLINE_EXCEEDED is never the replica's: the only deadline on the
    replica call is the caller's own (the router sets none of its own).
    CANCELLED is the replica's only while the caller still waits: the router
    cancels its replica call only after its caller went away, so one that
    comes back while the caller is there came from the replica (its server
    stopping, its handler cancelled)."""
    return not caller_gone and code in REPLICA_FAULTS


def _caller_gone(context: Context) -> bool:
    if context.cancelled():
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not address or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError("address", "must be host:port")
