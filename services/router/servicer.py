"""maas.v1.Router: forwards to a replica, streaming chunks through as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from maas.v1 import generation_pb2, inference_pb2, router_pb2, router_pb2_grpc
from services.router.replicas import ReplicaSet

Context = grpc.aio.ServicerContext[Any, Any]


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    async def Generate(
        self, request: router_pb2.RouterGenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        replica = self._replicas.pick(request.request.model)
        # The caller's deadline travels down; the request id travels as metadata
        # through the client interceptors.
        call = replica.stub.Generate(
            inference_pb2.InferenceGenerateRequest(request=request.request),
            timeout=context.time_remaining(),
        )
        try:
            async for chunk in call:
                yield chunk
        finally:
            # No-op when the stream ended; on cancellation it aborts the replica's request.
            call.cancel()

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        replica = self._replicas.pick(request.model)
        return await replica.stub.CountTokens(request, timeout=context.time_remaining())

    async def ListReplicas(
        self, request: router_pb2.ListReplicasRequest, context: Context
    ) -> router_pb2.ListReplicasResponse:
        return router_pb2.ListReplicasResponse(
            replicas=[
                router_pb2.Replica(
                    address=r.address,
                    model=r.model,
                    adapters=r.adapters,
                    state=router_pb2.REPLICA_STATE_SERVING
                    if r.serving
                    else router_pb2.REPLICA_STATE_NOT_SERVING,
                )
                for r in self._replicas.replicas
            ]
        )
