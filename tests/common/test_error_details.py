"""The google.rpc details of mesh errors, read from real gRPC errors the way a
client library reads them (grpc_status.rpc_status.from_call): every error has
an ErrorInfo beside the details of its kind, and a hop that carries a
downstream failure on passes its status through as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from observability import setup
from observability.settings import TelemetrySettings
from services.common.errors import (
    InvalidArgumentError,
    MeshError,
    ResourceExhaustedError,
    UnauthenticatedError,
    remote_errors,
)
from services.common.serving import ServiceServer, start_server
from tests.support import free_port

Context = grpc.aio.ServicerContext[bytes, bytes]

RAISED: dict[str, Callable[[], MeshError]] = {
    "InvalidArgument": lambda: InvalidArgumentError("temperature", "must be in [0, 2]"),
    "ResourceExhausted": lambda: ResourceExhaustedError(
        "requests per minute exceeded", retry_after_s=1.5, subject="requests_per_minute"
    ),
    "Unauthenticated": lambda: UnauthenticatedError("invalid, revoked or expired API key"),
}


@dataclass
class Hops:
    below: str
    above: str


def _unary(ch: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return ch.unary_unary(method)


def _raising(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def handler(request: bytes, context: Context) -> bytes:
        raise RAISED[name]()

    return grpc.unary_unary_rpc_method_handler(handler)


def _forwarding(target: str) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def handler(request: bytes, context: Context) -> bytes:
        async with grpc.aio.insecure_channel(target) as ch:
            with remote_errors():
                reply: bytes = await _unary(ch, "/test.Below/" + request.decode())(b"")
                return reply

    return grpc.unary_unary_rpc_method_handler(handler)


async def _serve(
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]], name: str
) -> ServiceServer:
    generic = grpc.method_handlers_generic_handler(name, handlers)
    return await start_server(
        address="127.0.0.1:0",
        telemetry=setup(name, TelemetrySettings()),
        service_names=[name],
        registrars=[lambda s: s.add_generic_rpc_handlers([generic])],
    )


@pytest_asyncio.fixture
async def hops() -> AsyncIterator[Hops]:
    below = await _serve({name: _raising(name) for name in RAISED}, "test.Below")
    nowhere = f"127.0.0.1:{free_port()}"
    above = await _serve(
        {"Forward": _forwarding(f"127.0.0.1:{below.port}"), "Nowhere": _forwarding(nowhere)},
        "test.Above",
    )
    try:
        yield Hops(below=f"127.0.0.1:{below.port}", above=f"127.0.0.1:{above.port}")
    finally:
        await above.stop(0)
        await below.stop(0)


async def _status_of(target: str, method: str, request: bytes = b"") -> status_pb2.Status:
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _unary(ch, method)(request)
    status = rpc_status.from_call(info.value)
    assert status is not None, "no rich status on the error"
    assert status.code == info.value.code().value[0]
    return status


def _details(status: status_pb2.Status) -> dict[str, Message]:
    """The details by type name, unpacked; each kind at most once."""
    kinds: dict[str, type[Message]] = {
        "BadRequest": error_details_pb2.BadRequest,
        "QuotaFailure": error_details_pb2.QuotaFailure,
        "RetryInfo": error_details_pb2.RetryInfo,
        "ErrorInfo": error_details_pb2.ErrorInfo,
    }
    found: dict[str, Message] = {}
    for packed in status.details:
        name = packed.type_url.rsplit(".", 1)[-1]
        assert name in kinds and name not in found, packed.type_url
        found[name] = kinds[name]()
        assert packed.Unpack(found[name])
    return found


def _error_info(details: dict[str, Message]) -> error_details_pb2.ErrorInfo:
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    return info


async def test_every_detail_a_client_acts_on_is_on_the_wire(hops: Hops) -> None:
    bad = _details(await _status_of(hops.below, "/test.Below/InvalidArgument"))
    over = _details(await _status_of(hops.below, "/test.Below/ResourceExhausted"))
    refused = _details(await _status_of(hops.below, "/test.Below/Unauthenticated"))

    assert set(bad) == {"BadRequest", "ErrorInfo"}
    assert set(over) == {"QuotaFailure", "RetryInfo", "ErrorInfo"}
    assert set(refused) == {"ErrorInfo"}

    bad_request = bad["BadRequest"]
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("temperature", "must be in [0, 2]")
    ]
    retry, quota = over["RetryInfo"], over["QuotaFailure"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert isinstance(quota, error_details_pb2.QuotaFailure)
    assert retry.retry_delay.ToMilliseconds() == 1500
    assert [v.subject for v in quota.violations] == ["requests_per_minute"]

    infos = [_error_info(bad), _error_info(over), _error_info(refused)]
    assert [(i.reason, i.domain, dict(i.metadata)) for i in infos] == [
        ("INVALID_ARGUMENT", "maas.dev", {"field": "temperature"}),
        ("RESOURCE_EXHAUSTED", "maas.dev", {"subject": "requests_per_minute"}),
        ("UNAUTHENTICATED", "maas.dev", {}),
    ]


@pytest.mark.parametrize("name", sorted(RAISED))
async def test_a_hop_passes_a_downstream_status_through_as_it_was(hops: Hops, name: str) -> None:
    direct = await _status_of(hops.below, f"/test.Below/{name}")
    forwarded = await _status_of(hops.above, "/test.Above/Forward", name.encode())
    assert forwarded == direct


async def test_a_downstream_failure_without_details_gains_an_error_info(hops: Hops) -> None:
    status = await _status_of(hops.above, "/test.Above/Nowhere", b"Anything")
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    info = _error_info(_details(status))
    assert (info.reason, info.domain) == ("UNAVAILABLE", "maas.dev")
