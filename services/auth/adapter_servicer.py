"""maas.v1.AdapterRegistry: a thin layer over Adapters. Mesh-only: the
service-token interceptor guards it, as it guards Metering (the gateway
calls it for tenants it has authenticated; replicas fetch weights)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from maas.v1 import adapter_pb2, adapter_registry_pb2, adapter_registry_pb2_grpc
from services.auth.adapters import Adapter, Adapters, Upload, UploadPlace
from services.auth.convert import timestamp
from services.auth.core import check_id
from services.auth.servicer import Context
from services.common.errors import InvalidArgumentError


def adapter_to_proto(adapter: Adapter) -> adapter_pb2.Adapter:
    return adapter_pb2.Adapter(
        adapter_id=adapter.adapter_id,
        tenant_id=adapter.tenant_id,
        name=adapter.name,
        base_model=adapter.base_model,
        rank=adapter.rank,
        size_bytes=adapter.size_bytes,
        sha256=adapter.sha256,
        create_time=timestamp(adapter.create_time),
    )


async def _upload(
    adapters: Adapters,
    messages: AsyncIterator[adapter_registry_pb2.RegistryAdapterUpload],
    place: UploadPlace,
) -> Upload:
    """Reads the tenant, then the spec, then the weights' chunks, in that order."""
    tenant_id: str | None = None
    upload: Upload | None = None
    async for message in messages:
        part = message.WhichOneof("part")
        if tenant_id is None:
            if part != "tenant_id":
                raise InvalidArgumentError("tenant_id", "must come first")
            check_id("tenant_id", message.tenant_id)
            tenant_id = message.tenant_id
            place.claim(tenant_id)
            continue
        if part != "upload":
            raise InvalidArgumentError("tenant_id", "must come once, first")
        piece = message.upload.WhichOneof("part")
        if upload is None:
            if piece != "spec":
                raise InvalidArgumentError("spec", "must come first, after tenant_id")
            spec = message.upload.spec
            upload = await adapters.begin(tenant_id, spec.name, spec.base_model, spec.config_json)
            continue
        if piece != "weights_chunk":
            raise InvalidArgumentError("spec", "must come once, before the weights")
        upload.add(message.upload.weights_chunk)
    if tenant_id is None:
        raise InvalidArgumentError("tenant_id", "required")
    if upload is None:
        raise InvalidArgumentError("spec", "required")
    return upload


class AdapterRegistryServicer(adapter_registry_pb2_grpc.AdapterRegistryServicer):
    def __init__(self, adapters: Adapters) -> None:
        self._adapters = adapters

    async def CreateAdapter(
        self,
        request_iterator: AsyncIterator[adapter_registry_pb2.RegistryAdapterUpload],
        context: Context,
    ) -> adapter_pb2.Adapter:
        with self._adapters.uploading() as place:
            upload = await _upload(self._adapters, request_iterator, place)
            return adapter_to_proto(await self._adapters.finish(upload))

    async def ListAdapters(
        self, request: adapter_registry_pb2.RegistryListAdaptersRequest, context: Context
    ) -> adapter_pb2.ListAdaptersResponse:
        check_id("tenant_id", request.tenant_id)
        found = await self._adapters.list(request.tenant_id)
        return adapter_pb2.ListAdaptersResponse(adapters=[adapter_to_proto(a) for a in found])

    async def ResolveAdapter(
        self, request: adapter_registry_pb2.ResolveAdapterRequest, context: Context
    ) -> adapter_pb2.Adapter:
        check_id("tenant_id", request.tenant_id)
        return adapter_to_proto(await self._adapters.resolve(request.tenant_id, request.name))

    async def DeleteAdapter(
        self, request: adapter_registry_pb2.RegistryDeleteAdapterRequest, context: Context
    ) -> adapter_pb2.DeleteAdapterResponse:
        check_id("tenant_id", request.tenant_id)
        deleted = await self._adapters.delete(request.tenant_id, request.name)
        return adapter_pb2.DeleteAdapterResponse(adapter=adapter_to_proto(deleted))

    async def FetchAdapter(
        self, request: adapter_registry_pb2.FetchAdapterRequest, context: Context
    ) -> AsyncIterator[adapter_registry_pb2.AdapterPart]:
        check_id("adapter_id", request.adapter_id)
        adapter, chunks = await self._adapters.fetch(request.adapter_id)
        yield adapter_registry_pb2.AdapterPart(
            head=adapter_registry_pb2.FetchedAdapterHead(
                adapter=adapter_to_proto(adapter), config_json=adapter.config_json
            )
        )
        async for chunk in chunks:
            yield adapter_registry_pb2.AdapterPart(weights_chunk=chunk)
