"""maas.v1.Gateway over gRPC: the call's metadata to a `Caller`, then the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import Message

from gateway.core import Caller, GatewayCore
from maas.v1 import (
    adapter_pb2,
    embedding_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    usage_pb2,
)
from observability.context import REQUEST_ID_METADATA_KEY, edge_echo, enter_edge_call

Context = grpc.aio.ServicerContext[Any, Any]


def enter_call(context: Context, request: Message | None = None) -> Caller:
    """The call as the core sees it. The gateway is the mesh's public edge: the
    mesh mints the call's id here, whatever the caller sent as x-request-id
    (the mesh's interceptor bound that; it is only a label at the edge)."""
    credentials: str | None = None
    client_request_id: str | None = None
    for key, value in context.invocation_metadata() or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "authorization" and credentials is None:
            credentials = text
        elif key == REQUEST_ID_METADATA_KEY and client_request_id is None:
            client_request_id = text
    enter_edge_call(client_request_id)
    return Caller(
        credentials=credentials,
        peer=context.peer(),
        deadline_s=context.time_remaining(),
        client_request_id=client_request_id,
        request_bytes=0 if request is None else request.ByteSize(),
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, core: GatewayCore) -> None:
        self._core = core

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        caller = enter_call(context, request)
        # First, so that a refused call also tells the client its request ids.
        await context.send_initial_metadata(tuple(edge_echo()))
        async with aclosing(self._core.generate(caller, request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: Context
    ) -> gateway_pb2.ListModelsResponse:
        models = await self._core.list_models(enter_call(context))
        return gateway_pb2.ListModelsResponse(models=models)

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        return await self._core.count_tokens(enter_call(context, request), request)

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Context
    ) -> embedding_pb2.EmbedResponse:
        caller = enter_call(context, request)
        await context.send_initial_metadata(tuple(edge_echo()))
        return await self._core.embed(caller, request)

    async def GetUsage(
        self, request: gateway_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        return await self._core.get_usage(enter_call(context), request)

    async def CreateAdapter(
        self, request_iterator: AsyncIterator[adapter_pb2.AdapterUpload], context: Context
    ) -> adapter_pb2.Adapter:
        return await self._core.create_adapter(enter_call(context), request_iterator)

    async def ListAdapters(
        self, request: adapter_pb2.ListAdaptersRequest, context: Context
    ) -> adapter_pb2.ListAdaptersResponse:
        return await self._core.list_adapters(enter_call(context))

    async def DeleteAdapter(
        self, request: adapter_pb2.DeleteAdapterRequest, context: Context
    ) -> adapter_pb2.DeleteAdapterResponse:
        return await self._core.delete_adapter(enter_call(context), request)
