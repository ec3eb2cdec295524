"""Every input is bounded before it costs anything: oversized or impossible
requests are refused by name before quota, router or engine see them, an
unauthenticated huge body is refused before it is read, and a pathological
constraint stalls nobody. Each attack runs beside a well-behaved tenant."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import grpc
import pytest

from maas.v1 import auth_pb2, gateway_pb2, gateway_pb2_grpc, generation_pb2
from services.common.generation_limits import (
    MAX_CONSTRAINT_BYTES,
    MAX_MODEL_NAME_BYTES,
    MAX_PUBLIC_MESSAGE_BYTES,
    MAX_PUBLIC_METADATA_BYTES,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
)
from tests.hostile.conftest import Mesh, TenantFactory, bystander, set_plan
from tests.support import bad_request_fields

HUNDRED_MB = 100 * 1024 * 1024
# Minutes of xgrammar's JSON-schema conversion (quadratic in the repeat count).
PATHOLOGICAL_SCHEMA = json.dumps({"type": "string", "pattern": "(a|b){1,20000}"})


async def generate(
    mesh: Mesh, api_key: str, request: generation_pb2.GenerateRequest, timeout_s: float = 60.0
) -> grpc.aio.AioRpcError:
    """Sends `request`; returns the error it must end with."""
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=timeout_s
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    return info.value


async def unfinished_post(mesh: Mesh, declared: int) -> bytes:
    """An unauthenticated POST declaring `declared` bytes of body that sends
    only its first 64 KiB, then waits: only a server that answers without
    reading the body can answer at all."""
    url = urlsplit(mesh.http)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        f"content-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + b"[" * 65536)
    await writer.drain()
    answer = await reader.read()  # the server closes after refusing
    writer.close()
    return answer


async def test_an_unauthenticated_100mb_post_is_refused_before_its_body(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    async with bystander(mesh, await new_tenant()):
        too_big = await unfinished_post(mesh, HUNDRED_MB)
        # Within the size limit, the missing key is what is refused, still unread.
        keyless = await unfinished_post(mesh, 8 * 1024 * 1024)
    assert too_big.startswith(b"HTTP/1.1 413 ")
    assert b"over the limit of" in too_big
    assert keyless.startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize("timeout_s", [None, 60.0])
async def test_a_huge_max_tokens_is_invalid_argument_naming_it(
    mesh: Mesh, new_tenant: TenantFactory, timeout_s: float | None
) -> None:
    attacker = await new_tenant()
    async with bystander(mesh, await new_tenant()):
        request = generation_pb2.GenerateRequest(
            model=mesh.model, prompt="Tell me everything.", max_tokens=100_000_000
        )
        err = await generate(mesh, attacker.api_key, request, timeout_s or 600.0)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_request_fields(err) == ["max_tokens"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": "m" * (MAX_MODEL_NAME_BYTES + 1)}, "model"),
        ({"stop": ["s"] * (MAX_STOP_STRINGS + 1)}, "stop"),
        ({"stop": ["s" * (MAX_STOP_LENGTH + 1)]}, "stop[0]"),
        ({"stop_token_ids": list(range(1000))}, "stop_token_ids"),
        ({"regex": "a" * (MAX_CONSTRAINT_BYTES + 1)}, "regex"),
        ({"json_schema": json.dumps({"x": "a" * MAX_CONSTRAINT_BYTES})}, "json_schema"),
        ({"json_schema": "[" * 60_000}, "json_schema"),
    ],
)
async def test_oversized_fields_are_refused_by_name(
    mesh: Mesh, new_tenant: TenantFactory, fields: dict[str, object], named: str
) -> None:
    attacker = await new_tenant()
    request = generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=4)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    async with bystander(mesh, await new_tenant()):
        err = await generate(mesh, attacker.api_key, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_request_fields(err) == [named]
    # Refused before quota: nothing was reserved, nothing billed.
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        usage = await gateway_pb2_grpc.GatewayStub(channel).GetUsage(
            gateway_pb2.GetUsageRequest(),
            metadata=(("authorization", f"Bearer {attacker.api_key}"),),
        )
    assert usage.summary.requests == 0


async def test_a_pathological_constraint_stalls_nobody(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    request = generation_pb2.GenerateRequest(
        model=mesh.model, prompt="Answer:", max_tokens=8, json_schema=PATHOLOGICAL_SCHEMA
    )
    async with bystander(mesh, await new_tenant(), requests=6):
        errors = await asyncio.gather(
            *(generate(mesh, attacker.api_key, request) for _ in range(3))
        )
    for err in errors:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert bad_request_fields(err) == ["json_schema"]


async def test_an_unknown_model_is_not_found_before_any_quota(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    # One request a minute: were the refusals reserved, the second would be
    # RESOURCE_EXHAUSTED rather than NOT_FOUND.
    await set_plan(mesh, attacker.tenant_id, auth_pb2.Plan(requests_per_minute=1))
    async with bystander(mesh, await new_tenant()):
        for _ in range(3):
            err = await generate(
                mesh, attacker.api_key, generation_pb2.GenerateRequest(model="nope", prompt="hi")
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()


async def test_counting_tokens_is_charged_like_a_request(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    await set_plan(mesh, attacker.tenant_id, auth_pb2.Plan(requests_per_minute=2))
    bystanding = bystander(mesh, await new_tenant())
    async with bystanding, grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("authorization", f"Bearer {attacker.api_key}"),)
        count = generation_pb2.CountTokensRequest(model=mesh.model, prompt="Count me.")
        for _ in range(2):
            assert (await stub.CountTokens(count, metadata=metadata)).token_count > 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CountTokens(count, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_prompt_too_big_for_the_context_is_refused_before_tokenizing(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    # Far more bytes than the context holds even at the longest token's length.
    info = mesh.engine.model_info
    prompt = "z" * (info.max_context_length * info.max_token_bytes + 1)
    async with bystander(mesh, await new_tenant()):
        err = await generate(
            mesh, attacker.api_key, generation_pb2.GenerateRequest(model=mesh.model, prompt=prompt)
        )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_request_fields(err) == ["prompt"]
    assert "bytes" in (err.details() or "")


async def test_a_message_or_metadata_past_the_public_bounds_is_refused_unread(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    huge = generation_pb2.GenerateRequest(
        model=mesh.model, prompt="a" * (MAX_PUBLIC_MESSAGE_BYTES + 1), max_tokens=4
    )
    ordinary = generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=4)
    metadata = (
        ("authorization", f"Bearer {attacker.api_key}"),
        ("x-padding", "p" * (MAX_PUBLIC_METADATA_BYTES + 1)),
    )
    async with bystander(mesh, await new_tenant()):
        err = await generate(mesh, attacker.api_key, huge)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        async with grpc.aio.insecure_channel(mesh.gateway) as channel:
            call = gateway_pb2_grpc.GatewayStub(channel).Generate(
                ordinary, metadata=metadata, timeout=60
            )
            with pytest.raises(grpc.aio.AioRpcError) as padded:
                async for _ in call:
                    pass
        # gRPC's own refusal, before the gateway's code runs.
        assert padded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
