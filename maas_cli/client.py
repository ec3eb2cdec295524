"""A small async client for the public gateway, used by the CLI and the local stack."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self

import grpc
from google.protobuf import timestamp_pb2

from maas.v1 import adapter_pb2, gateway_pb2, gateway_pb2_grpc, generation_pb2, usage_pb2

# The most bytes of weights in one upload message, as the gateway takes them.
ADAPTER_CHUNK_BYTES = 1024 * 1024


def _in_chunks(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data), ADAPTER_CHUNK_BYTES):
        yield data[at : at + ADAPTER_CHUNK_BYTES]


class MaasClient:
    """`async with MaasClient("127.0.0.1:50051", api_key) as client: ...`"""

    def __init__(
        self, target: str, api_key: str, *, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """`credentials`: TLS to a gateway that serves it (plaintext when None)."""
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._channel.close()

    def generate(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: Sequence[tuple[str, str]] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        """Streams the chunks; closing the generator early cancels the call."""
        request = generation_pb2.GenerateRequest(model=model)
        if messages:
            request.messages.messages.extend(
                generation_pb2.ChatMessage(role=role, content=content) for role, content in messages
            )
        else:
            request.prompt = prompt or ""
        if max_tokens is not None:
            request.max_tokens = max_tokens
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        request.stop.extend(stop)
        if seed is not None:
            request.seed = seed
        return self._stream(request, timeout_s)

    async def _stream(
        self, request: generation_pb2.GenerateRequest, timeout_s: float | None
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        call = self._stub.Generate(request, metadata=self._metadata, timeout=timeout_s)
        try:
            async for chunk in call:
                yield chunk
        finally:
            call.cancel()

    async def list_models(self) -> list[generation_pb2.ModelInfo]:
        reply = await self._stub.ListModels(
            gateway_pb2.ListModelsRequest(), metadata=self._metadata
        )
        return list(reply.models)

    async def count_tokens(self, model: str, prompt: str) -> generation_pb2.CountTokensResponse:
        return await self._stub.CountTokens(
            generation_pb2.CountTokensRequest(model=model, prompt=prompt), metadata=self._metadata
        )

    async def usage(self) -> usage_pb2.UsageSummary:
        return (await self.usage_report()).summary

    async def usage_report(
        self,
        group_by: usage_pb2.UsageGrouping = usage_pb2.USAGE_GROUPING_UNSPECIFIED,
        start_time: timestamp_pb2.Timestamp | None = None,
    ) -> usage_pb2.GetUsageResponse:
        request = gateway_pb2.GetUsageRequest(group_by=group_by, start_time=start_time)
        return await self._stub.GetUsage(request, metadata=self._metadata)

    async def create_adapter(
        self, name: str, base_model: str, config_json: bytes, weights: bytes | Iterable[bytes]
    ) -> adapter_pb2.Adapter:
        """Uploads a private LoRA adapter: the spec, then the weights in chunks
        of at most ADAPTER_CHUNK_BYTES (`weights` whole, or already in such
        chunks, read as they are sent: see `maas_cli.adapter_files`)."""
        chunks = _in_chunks(weights) if isinstance(weights, bytes) else weights

        async def parts() -> AsyncIterator[adapter_pb2.AdapterUpload]:
            yield adapter_pb2.AdapterUpload(
                spec=adapter_pb2.AdapterSpec(
                    name=name, base_model=base_model, config_json=config_json
                )
            )
            for chunk in chunks:
                yield adapter_pb2.AdapterUpload(weights_chunk=chunk)

        return await self._stub.CreateAdapter(parts(), metadata=self._metadata)

    async def list_adapters(self) -> list[adapter_pb2.Adapter]:
        reply = await self._stub.ListAdapters(
            adapter_pb2.ListAdaptersRequest(), metadata=self._metadata
        )
        return list(reply.adapters)

    async def delete_adapter(self, name: str) -> adapter_pb2.Adapter:
        reply = await self._stub.DeleteAdapter(
            adapter_pb2.DeleteAdapterRequest(name=name), metadata=self._metadata
        )
        return reply.adapter
