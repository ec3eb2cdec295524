"""Fetching an adapter's files over the registry's FetchAdapter stream: the
files land whole, and weights larger than allowed, or not matching their
size and SHA-256, are refused leaving nothing behind. The registry here is
a fake (named so): the real one cannot be made to send corrupt weights."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from maas.v1 import adapter_pb2, adapter_registry_pb2, adapter_registry_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.common.errors import FailedPreconditionError, NotFoundError, UnavailableError
from services.common.serving import start_server
from services.inference.adapter_fetch import CONFIG_FILE, WEIGHTS_FILE, RegistryFetch

ADAPTER = "ad-" + "a" * 24
CONFIG = b'{"peft_type": "LORA", "r": 4}'
WEIGHTS = bytes(range(256)) * 20


class FakeRegistry(adapter_registry_pb2_grpc.AdapterRegistryServicer):
    """Sends one adapter, its weights in `chunks`, described as `declared`."""

    def __init__(self, chunks: list[bytes], declared: bytes = WEIGHTS) -> None:
        self.chunks = chunks
        self.declared = declared

    async def FetchAdapter(
        self, request: adapter_registry_pb2.FetchAdapterRequest, context: Any
    ) -> AsyncIterator[adapter_registry_pb2.AdapterPart]:
        if request.adapter_id != ADAPTER:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such adapter")
        adapter = adapter_pb2.Adapter(
            adapter_id=ADAPTER,
            base_model="m",
            size_bytes=len(self.declared),
            sha256=hashlib.sha256(self.declared).hexdigest(),
        )
        yield adapter_registry_pb2.AdapterPart(
            head=adapter_registry_pb2.FetchedAdapterHead(adapter=adapter, config_json=CONFIG)
        )
        for chunk in self.chunks:
            yield adapter_registry_pb2.AdapterPart(weights_chunk=chunk)

    # Nothing but fetching is asked of it here.
    async def CreateAdapter(self, request_iterator: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")

    async def ListAdapters(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")

    async def ResolveAdapter(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")

    async def DeleteAdapter(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")


@asynccontextmanager
async def fetch_from(
    registry: FakeRegistry, cache: Path, max_bytes: int = 1 << 20
) -> AsyncIterator[RegistryFetch]:
    telemetry = setup("registry", TelemetrySettings())
    server = await start_server(
        address="127.0.0.1:0",
        telemetry=telemetry,
        service_names=["maas.v1.AdapterRegistry"],
        registrars=[
            lambda s: adapter_registry_pb2_grpc.add_AdapterRegistryServicer_to_server(registry, s)
        ],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = adapter_registry_pb2_grpc.AdapterRegistryStub(ch)
            yield RegistryFetch(stub, cache, max_bytes=max_bytes)
    finally:
        await server.stop(0)
        telemetry.shutdown()


async def test_each_fetch_lands_whole_in_a_directory_of_its_own(tmp_path: Path) -> None:
    async with fetch_from(FakeRegistry([WEIGHTS[:1000], WEIGHTS[1000:]]), tmp_path) as fetch:
        fetched = await fetch(ADAPTER)
        assert fetched.base_model == "m" and fetched.path.parent == tmp_path
        assert (fetched.path / CONFIG_FILE).read_bytes() == CONFIG
        assert (fetched.path / WEIGHTS_FILE).read_bytes() == WEIGHTS
        # Fetched again while the first copy is discarded: a place of its own.
        again = await fetch(ADAPTER)
        assert again.path != fetched.path and again.discard is not None
        assert fetched.discard is not None
        fetched.discard()
        assert [p for p in tmp_path.iterdir()] == [again.path]
        assert (again.path / WEIGHTS_FILE).read_bytes() == WEIGHTS


@pytest.mark.parametrize(
    ("registry", "error"),
    [
        (FakeRegistry([WEIGHTS[:-1] + b"x"]), UnavailableError),  # same size, other bytes
        (FakeRegistry([WEIGHTS[:100]]), UnavailableError),  # cut short
        (FakeRegistry([WEIGHTS, b"more"]), UnavailableError),  # past its declared size
        (FakeRegistry([WEIGHTS] * 3, declared=WEIGHTS * 3), FailedPreconditionError),  # too big
    ],
)
async def test_bad_weights_are_refused_leaving_nothing(
    registry: FakeRegistry, error: type[Exception], tmp_path: Path
) -> None:
    async with fetch_from(registry, tmp_path, max_bytes=2 * len(WEIGHTS)) as fetch:
        with pytest.raises(error):
            await fetch(ADAPTER)
    assert list(tmp_path.iterdir()) == []


async def test_an_unknown_adapter_is_not_found(tmp_path: Path) -> None:
    async with fetch_from(FakeRegistry([WEIGHTS]), tmp_path) as fetch:
        with pytest.raises(NotFoundError):
            await fetch("ad-" + "0" * 24)
    assert list(tmp_path.iterdir()) == []
