"""One request through gateway, auth, router and inference, and back."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2_grpc, generation_pb2
from maas_cli.client import MaasClient
from tests.mesh import AUTH_CACHE_TTL_S, Mesh, TenantFactory, TenantKey, set_plan
from tests.support import bad_request_fields, eventually


async def test_generate_streams_text_bills_once_and_reports(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    replica = mesh.targets["inference"]
    served_before = mesh.anomaly.stats().by_replica[replica]
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        chunks = [
            c
            async for c in client.generate(
                mesh.model, messages=[("user", "Tell me about the sea.")], max_tokens=16, seed=1
            )
        ]
        assert len(chunks) > 1, "the answer should arrive as a stream, not one message"
        text = "".join(c.text for c in chunks)
        assert text
        last = chunks[-1]
        assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert sum(len(c.token_ids) for c in chunks) == 16
        assert last.usage.completion_tokens == 16
        assert last.usage.prompt_tokens > 0

        async def billed() -> bool:
            return (await client.usage()).requests >= 1

        await eventually(billed)
        summary = await client.usage()
        assert summary.tenant_id == tenant_key.tenant_id
        assert summary.requests == 1
        assert summary.completion_tokens == 16
        assert summary.prompt_tokens == last.usage.prompt_tokens

    await eventually(lambda: mesh.anomaly.stats().by_tenant.get(tenant_key.tenant_id, 0) == 1)
    assert mesh.anomaly.stats().completion_tokens_by_tenant[tenant_key.tenant_id] == 16
    # The router names the replica that served it; the gateway reports it.
    assert mesh.anomaly.stats().by_replica[replica] > served_before


async def test_list_models_and_count_tokens(mesh: Mesh, tenant_key: TenantKey) -> None:
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        models = await client.list_models()
        assert [m.name for m in models] == [mesh.model]
        assert models[0].max_context_length == mesh.engine.model_info.max_context_length
        counted = await client.count_tokens(mesh.model, "Hello there, sea.")
        assert counted.token_count > 0
        chunks = [
            c async for c in client.generate(mesh.model, prompt="Hello there, sea.", max_tokens=2)
        ]
        assert chunks[-1].usage.prompt_tokens == counted.token_count


async def test_cancelled_stream_leaves_nothing_running_and_is_billed(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        stream = client.generate(mesh.model, prompt="Once upon a time", max_tokens=1500)
        received = 0
        async for chunk in stream:
            received += len(chunk.token_ids)
            if received >= 3:
                break
        await stream.aclose()

        await eventually(lambda: mesh.engine.num_unfinished_requests() == 0)
        assert mesh.engine.load().running == 0

        async def billed() -> bool:
            return (await client.usage()).requests == 1

        await eventually(billed)
        summary = await client.usage()
        # Billed for what was generated before the cancel reached the engine, not for 1500.
        assert received <= summary.completion_tokens < 1500


@pytest.mark.parametrize(
    ("api_key", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("maas_nosuchkey0_notasecret", grpc.StatusCode.UNAUTHENTICATED),
        ("not even a key", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_bad_or_missing_key_is_unauthenticated(
    mesh: Mesh, api_key: str | None, code: grpc.StatusCode
) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        call = stub.Generate(
            generation_pb2.GenerateRequest(model=mesh.model, prompt="hi"), metadata=metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == code


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"prompt": "hi", "temperature": -1.0}, "temperature"),
        ({"prompt": "hi", "top_p": 0.0}, "top_p"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "hi", "max_tokens": 100_000}, "max_tokens"),  # checked by the replica
        ({"prompt": "sea " * 5000}, "prompt"),  # longer than the context: checked by the replica
    ],
)
async def test_bad_field_is_invalid_argument_naming_it(
    mesh: Mesh, tenant_key: TenantKey, request_fields: dict[str, object], field: str
) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        request = generation_pb2.GenerateRequest(model=mesh.model, **request_fields)  # type: ignore[arg-type]
        call = stub.Generate(request, metadata=(("authorization", f"Bearer {tenant_key.api_key}"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(info.value) == [field]


async def test_unknown_model_is_not_found(mesh: Mesh, tenant_key: TenantKey) -> None:
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in client.generate("no-such-model", prompt="hi", max_tokens=2):
                pass
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_tenant_sees_only_its_own_usage(mesh: Mesh, new_tenant: TenantFactory) -> None:
    a, b = await new_tenant(), await new_tenant()
    async with MaasClient(mesh.gateway, a.api_key) as client_a:
        async for _ in client_a.generate(mesh.model, prompt="hi", max_tokens=2):
            pass

        async def billed() -> bool:
            return (await client_a.usage()).requests == 1

        await eventually(billed)
    async with MaasClient(mesh.gateway, b.api_key) as client_b:
        summary_b = await client_b.usage()
    assert summary_b.tenant_id == b.tenant_id
    assert summary_b.requests == 0
    assert summary_b.completion_tokens == 0


async def test_a_revoked_key_stops_working_within_the_cache_ttl(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        assert [m.name for m in await client.list_models()] == [mesh.model]  # now cached
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            key_id = tenant_key.api_key.split("_")[1]
            await auth_pb2_grpc.AuthStub(ch).RevokeApiKey(
                auth_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin
            )

        async def refused() -> bool:
            try:
                await client.list_models()
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

        # The bound is the gateway's cache TTL; the margin absorbs a busy machine.
        await eventually(refused, within_s=AUTH_CACHE_TTL_S + 5)


async def test_over_the_plan_is_resource_exhausted_with_retry_details(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    await set_plan(mesh, tenant_key.tenant_id, auth_pb2.Plan(requests_per_minute=1))
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        async for _ in client.generate(mesh.model, prompt="one", max_tokens=2):
            pass
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in client.generate(mesh.model, prompt="two", max_tokens=2):
                pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(info.value)
    assert status is not None
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    info = error_details_pb2.ErrorInfo()
    kinds = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
    assert kinds == {"RetryInfo", "QuotaFailure", "ErrorInfo"}
    for detail in status.details:
        for message in (retry, quota, info):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 60
    assert [v.subject for v in quota.violations] == ["requests_per_minute"]
    # Auth's own ErrorInfo, passed through the gateway as it was.
    assert (info.domain, info.reason) == ("maas.dev", "RESOURCE_EXHAUSTED")
    assert dict(info.metadata) == {"subject": "requests_per_minute"}


async def test_one_tenant_spending_its_plan_leaves_another_untouched(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    a, b = await new_tenant(), await new_tenant()
    for tenant in (a, b):
        await set_plan(mesh, tenant.tenant_id, auth_pb2.Plan(requests_per_minute=1))
    async with MaasClient(mesh.gateway, a.api_key) as client_a:
        async for _ in client_a.generate(mesh.model, prompt="a", max_tokens=2):
            pass
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in client_a.generate(mesh.model, prompt="a", max_tokens=2):
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with MaasClient(mesh.gateway, b.api_key) as client_b:
        chunks = [c async for c in client_b.generate(mesh.model, prompt="b", max_tokens=2)]
    assert chunks[-1].usage.completion_tokens == 2
