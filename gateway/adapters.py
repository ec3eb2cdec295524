"""Tenants' private adapters at the gateway: uploads checked and forwarded to
the registry (auth's AdapterRegistry) with the tenant first, and a tenant's
adapter names resolved for its requests only.

A name is resolved only when it is not a served model's: the served model
wins. Resolutions are cached per (tenant, name) for `ttl_s`, misses too, so a
flood of made-up names costs the registry one lookup per name per window, and
a tenant's list of adapters (for its model list) per tenant for `ttl_s`, so
polling the model list costs one listing per window; an adapter created or
deleted through this gateway is forgotten at once here (its name and its
tenant's list), and within `ttl_s` at every other gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from gateway.authn import within
from gateway.model_limits import ModelCatalog
from gateway.ttl_cache import TtlCache
from maas.v1 import (
    adapter_pb2,
    adapter_registry_pb2,
    adapter_registry_pb2_grpc,
    generation_pb2,
)
from services.common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    remote_errors,
)
from services.common.generation_limits import MAX_MODEL_NAME_BYTES

log = structlog.get_logger(__name__)

# The most bytes of one upload message's weights (AdapterUpload): the registry's bound too.
CHUNK_BYTES = 1024 * 1024


class UnimplementedError(MeshError):
    """A gateway built without the registry: it serves no private adapters."""

    code = grpc.StatusCode.UNIMPLEMENTED


def adapter_model(
    adapter: adapter_pb2.Adapter, base: generation_pb2.ModelInfo
) -> generation_pb2.ModelInfo:
    """The adapter as a model: its base's limits and kind (and price: it is
    billed as its base) under its own name."""
    info = generation_pb2.ModelInfo()
    info.CopyFrom(base)
    info.name = adapter.name
    info.base_model = base.name
    del info.adapters[:]
    return info


class AdapterResolver:
    """A tenant's adapter names to its adapters, and its list of them, each
    cached briefly, bounded."""

    def __init__(
        self,
        registry: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub,
        *,
        ttl_s: float,
        max_entries: int,
        # Tenants whose list is kept (a list holds up to the registry's per-tenant bound).
        max_lists: int,
        # Each lookup's most seconds (the gateway's auth_timeout_s), within the caller's.
        lookup_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._lookup_timeout_s = lookup_timeout_s
        self._names: TtlCache[tuple[str, str], adapter_pb2.Adapter | None] = TtlCache(
            ttl_s=ttl_s, max_entries=max_entries, clock=clock
        )
        self._lists: TtlCache[str, tuple[adapter_pb2.Adapter, ...]] = TtlCache(
            ttl_s=ttl_s, max_entries=max_lists, clock=clock
        )

    async def resolve(
        self, tenant_id: str, name: str, timeout_s: float | None
    ) -> adapter_pb2.Adapter | None:
        """The tenant's adapter named `name`; None when it has none.
        `timeout_s`: what the caller has left (None: no deadline)."""
        key = (tenant_id, name)
        cached = self._names.get(key)
        if cached is not None:
            return cached.value
        stamp = self._names.stamp()
        found: adapter_pb2.Adapter | None
        try:
            with remote_errors():
                found = await self._registry.ResolveAdapter(
                    adapter_registry_pb2.ResolveAdapterRequest(tenant_id=tenant_id, name=name),
                    timeout=within(timeout_s, self._lookup_timeout_s),
                )
        except MeshError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise
            found = None
        self._names.put(key, found, stamp)
        return found

    async def adapters(
        self, tenant_id: str, timeout_s: float | None
    ) -> tuple[adapter_pb2.Adapter, ...]:
        """The tenant's adapters, as the registry listed them within the TTL."""
        cached = self._lists.get(tenant_id)
        if cached is not None:
            return cached.value
        stamp = self._lists.stamp()
        with remote_errors():
            reply = await self._registry.ListAdapters(
                adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=tenant_id),
                timeout=within(timeout_s, self._lookup_timeout_s),
            )
        listed = tuple(reply.adapters)
        self._lists.put(tenant_id, listed, stamp)
        return listed

    def __len__(self) -> int:
        return len(self._names)

    def forget(self, tenant_id: str, name: str) -> None:
        """The tenant's adapter `name` changed here: its name and its list are asked again."""
        self._names.forget((tenant_id, name))
        self._lists.forget(tenant_id)


class AdapterGate:
    """The Gateway's adapter rpcs for an authenticated tenant, and the
    generation path's name resolution."""

    def __init__(
        self,
        registry: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub,
        catalog: ModelCatalog,
        resolver: AdapterResolver,
    ) -> None:
        self._registry = registry
        self._catalog = catalog
        self._resolver = resolver

    async def model(
        self, tenant_id: str, name: str, timeout_s: float | None
    ) -> tuple[generation_pb2.ModelInfo, str]:
        """`name`'s limits and, for the tenant's own adapter, its adapter_id
        (its limits are its base model's); NOT_FOUND as for an unknown model
        when it is neither served nor the tenant's."""
        try:
            return await self._catalog.model(name, timeout_s), ""
        except NotFoundError:
            adapter = await self._resolver.resolve(tenant_id, name, timeout_s)
            if adapter is None:
                raise
        try:
            base = await self._catalog.model(adapter.base_model, timeout_s)
        except NotFoundError as err:
            raise NotFoundError(
                f"model {name!r}: its base model {adapter.base_model!r} is not served here"
            ) from err
        return adapter_model(adapter, base), adapter.adapter_id

    async def listed(
        self, tenant_id: str, served: list[generation_pb2.ModelInfo], timeout_s: float | None
    ) -> list[generation_pb2.ModelInfo]:
        """`served` and the tenant's adapters on served base models, by name.
        While the registry does not answer, the served models alone."""
        try:
            adapters = await self._resolver.adapters(tenant_id, timeout_s)
        except MeshError as err:
            if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            log.warning("adapters_unlisted", error=err.message)
            return served
        by_name = {m.name: m for m in served}
        for adapter in adapters:
            base = by_name.get(adapter.base_model)
            if base is None or adapter.name in by_name:
                continue
            by_name[adapter.name] = adapter_model(adapter, base)
        return [by_name[name] for name in sorted(by_name)]

    async def create(
        self,
        tenant_id: str,
        uploads: AsyncIterator[adapter_pb2.AdapterUpload],
        timeout_s: float | None,
    ) -> adapter_pb2.Adapter:
        first = await anext(aiter(uploads), None)
        if first is None or first.WhichOneof("part") != "spec":
            raise InvalidArgumentError("spec", "must come first")
        await self._check_spec(first.spec, timeout_s)
        # Streamed as it arrives, never held whole. A request iterator, not
        # call.write(): the channel's tracing interceptor awaits the call's
        # status before writes may start. A bad message cancels the call
        # (gRPC does, when the iterator raises) and is the answer.
        refused: list[MeshError] = []

        async def forwarded() -> AsyncIterator[adapter_registry_pb2.RegistryAdapterUpload]:
            yield adapter_registry_pb2.RegistryAdapterUpload(tenant_id=tenant_id)
            yield adapter_registry_pb2.RegistryAdapterUpload(upload=first)
            async for upload in uploads:
                if upload.WhichOneof("part") != "weights_chunk":
                    refused.append(
                        InvalidArgumentError("spec", "must come once, before the weights")
                    )
                elif len(upload.weights_chunk) > CHUNK_BYTES:
                    refused.append(
                        InvalidArgumentError("weights_chunk", f"over {CHUNK_BYTES} bytes")
                    )
                if refused:
                    raise refused[0]
                yield adapter_registry_pb2.RegistryAdapterUpload(upload=upload)

        try:
            with remote_errors():
                created: adapter_pb2.Adapter = await self._registry.CreateAdapter(
                    forwarded(), timeout=timeout_s
                )
        except asyncio.CancelledError:
            if refused:
                raise refused[0] from None
            raise
        self._resolver.forget(tenant_id, created.name)
        return created

    async def _check_spec(self, spec: adapter_pb2.AdapterSpec, timeout_s: float | None) -> None:
        if not spec.base_model:
            raise InvalidArgumentError("base_model", "required")
        if len(spec.base_model.encode()) > MAX_MODEL_NAME_BYTES:
            raise InvalidArgumentError("base_model", f"over {MAX_MODEL_NAME_BYTES} bytes")
        try:
            base = await self._catalog.model(spec.base_model, timeout_s)
        except NotFoundError as err:
            raise InvalidArgumentError(
                "base_model", f"{spec.base_model!r} is not a model served here"
            ) from err
        if base.base_model:
            raise InvalidArgumentError(
                "base_model", f"{base.name!r} is an adapter, not a base model"
            )
        if base.kind == generation_pb2.MODEL_KIND_EMBEDDING:
            raise InvalidArgumentError("base_model", f"{base.name!r} is an embedding model")
        try:
            await self._catalog.model(spec.name, timeout_s)
        except NotFoundError:
            return
        raise AlreadyExistsError(
            f"{spec.name!r} is the name of a served model", metadata={"field": "name"}
        )

    async def list(
        self, tenant_id: str, timeout_s: float | None
    ) -> adapter_pb2.ListAdaptersResponse:
        with remote_errors():
            reply: adapter_pb2.ListAdaptersResponse = await self._registry.ListAdapters(
                adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=tenant_id),
                timeout=timeout_s,
            )
        return reply

    async def delete(
        self, tenant_id: str, name: str, timeout_s: float | None
    ) -> adapter_pb2.DeleteAdapterResponse:
        self._resolver.forget(tenant_id, name)
        with remote_errors():
            reply: adapter_pb2.DeleteAdapterResponse = await self._registry.DeleteAdapter(
                adapter_registry_pb2.RegistryDeleteAdapterRequest(tenant_id=tenant_id, name=name),
                timeout=timeout_s,
            )
        self._resolver.forget(tenant_id, name)
        return reply
