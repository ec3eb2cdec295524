"""maas.v1.Gateway over gRPC: the call's metadata to a `Caller`, then the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from gateway.core import Caller, GatewayCore, request_id_for_call
from maas.v1 import gateway_pb2, gateway_pb2_grpc, generation_pb2, metering_pb2
from observability.context import REQUEST_ID_METADATA_KEY

Context = grpc.aio.ServicerContext[Any, Any]


def caller_of(context: Context) -> Caller:
    credentials: str | None = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            credentials = value.decode() if isinstance(value, bytes) else value
            break
    return Caller(credentials=credentials, peer=context.peer(), deadline_s=context.time_remaining())


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, core: GatewayCore) -> None:
        self._core = core

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        # First, so that a refused call also tells the client its request id.
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, request_id_for_call()),))
        async with aclosing(self._core.generate(caller_of(context), request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: Context
    ) -> gateway_pb2.ListModelsResponse:
        models = await self._core.list_models(caller_of(context))
        return gateway_pb2.ListModelsResponse(models=models)

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        return await self._core.count_tokens(caller_of(context), request)

    async def GetUsage(
        self, request: gateway_pb2.GetUsageRequest, context: Context
    ) -> metering_pb2.GetUsageResponse:
        return await self._core.get_usage(caller_of(context), request)
