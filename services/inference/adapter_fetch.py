"""Fetches a private adapter's files from the adapter registry (auth's
FetchAdapter stream) into a local cache directory, as PEFT lays them out:
adapter_config.json and adapter_model.safetensors. The weights are bounded
as they arrive and their SHA-256 checked against the registry's before the
directory is used; a fetch that fails leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import structlog

from maas.v1 import adapter_registry_pb2, adapter_registry_pb2_grpc
from observability import Telemetry
from observability.channels import channel
from services.common.balanced import balanced_options, balanced_target
from services.common.errors import (
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)
from services.common.security import channel_security
from services.inference.adapter_slots import AdapterFetch, FetchedAdapter
from services.inference.settings import InferenceSettings

log = structlog.get_logger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class RegistryFetch:
    """An `AdapterFetch` over the registry's FetchAdapter stream."""

    def __init__(
        self,
        stub: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub,
        cache_dir: Path,
        *,
        max_bytes: int,
    ) -> None:
        self._stub = stub
        self._cache_dir = cache_dir
        self._max_bytes = max_bytes

    async def __call__(self, adapter_id: str) -> FetchedAdapter:
        # Each fetch writes a directory of its own, handed out only once
        # complete; an adapter unloaded and fetched again at once never shares
        # files with its earlier copy, which is being removed.
        folder = Path(tempfile.mkdtemp(prefix=f"{adapter_id}-", dir=self._cache_dir))
        try:
            base_model = await self._download(adapter_id, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Unloaded, the adapter's files go: the cache holds what is loaded.
        return FetchedAdapter(
            folder, base_model, discard=lambda: shutil.rmtree(folder, ignore_errors=True)
        )

    async def _download(self, adapter_id: str, into: Path) -> str:
        request = adapter_registry_pb2.FetchAdapterRequest(adapter_id=adapter_id)
        digest = hashlib.sha256()
        received = 0
        head: adapter_registry_pb2.FetchedAdapterHead | None = None
        try:
            with (into / WEIGHTS_FILE).open("wb") as weights:
                async for part in self._stub.FetchAdapter(request):
                    which = part.WhichOneof("part")
                    if which == "head" and head is None:
                        head = part.head
                        (into / CONFIG_FILE).write_bytes(head.config_json)
                    elif which == "weights_chunk" and head is not None:
                        received += len(part.weights_chunk)
                        if received > self._max_bytes:
                            raise FailedPreconditionError(
                                f"adapter {adapter_id!r} is larger than this replica takes"
                                f" ({self._max_bytes} bytes)"
                            )
                        if received > head.adapter.size_bytes:
                            raise UnavailableError(
                                f"adapter {adapter_id!r}: the registry sent more than its size"
                            )
                        digest.update(part.weights_chunk)
                        # Off the event loop: chunks are up to 1 MiB.
                        await asyncio.to_thread(weights.write, part.weights_chunk)
                    else:
                        raise UnavailableError(f"adapter {adapter_id!r}: malformed fetch stream")
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"adapter {adapter_id!r} not found") from err
            raise UnavailableError(
                f"the adapter registry failed fetching {adapter_id!r}: {err.code().name}"
            ) from err
        if head is None:
            raise UnavailableError(f"adapter {adapter_id!r}: the registry sent nothing")
        adapter = head.adapter
        if received != adapter.size_bytes or digest.hexdigest() != adapter.sha256:
            raise UnavailableError(
                f"adapter {adapter_id!r}: the weights fetched do not match their size and SHA-256"
            )
        log.info("adapter fetched", adapter_id=adapter_id, bytes=received)
        return adapter.base_model


# A fetch only reads: safe to repeat on another replica (before its first message).
REGISTRY_RETRIED: tuple[tuple[str, str | None], ...] = (
    (adapter_registry_pb2.DESCRIPTOR.services_by_name["AdapterRegistry"].full_name, "FetchAdapter"),
)


async def unknown_adapter(adapter_id: str) -> FetchedAdapter:
    raise NotFoundError(f"adapter {adapter_id!r} is not known here (no adapter registry)")


@asynccontextmanager
async def registry_fetch(
    settings: InferenceSettings, telemetry: Telemetry
) -> AsyncIterator[AdapterFetch]:
    """Fetches from the registry at `registry_address` (with the mesh's
    service token) into `adapter_cache_dir`, or a temporary directory removed
    on exit; without a registry every adapter is NOT_FOUND."""
    if settings.registry_address is None or settings.adapter_slots <= 0:
        yield unknown_adapter
        return
    with tempfile.TemporaryDirectory(prefix="maas-adapters-") as temporary:
        cache_dir = settings.adapter_cache_dir or Path(temporary)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Every auth replica on one channel, round robin, a fetch retried on
        # another when one drops it; see services/common/balanced.py.
        target = balanced_target("registry_address", settings.registry_address)
        options = balanced_options(target, REGISTRY_RETRIED)
        ch = channel(target, telemetry, options, security=channel_security(settings))
        try:
            stub = adapter_registry_pb2_grpc.AdapterRegistryStub(ch)
            yield RegistryFetch(stub, cache_dir, max_bytes=settings.max_adapter_bytes)
        finally:
            await ch.close()
