"""maas.v1.Auth and maas.v1.Metering over a real gRPC server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import auth_pb2, auth_pb2_grpc, metering_pb2, metering_pb2_grpc
from tests.auth.conftest import ADMIN_TOKEN
from tests.support import bad_request_fields

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def record(request_id: str, tenant_id: str, completion: int = 7) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=request_id,
        tenant_id=tenant_id,
        key_id="k",
        model="tiny",
        prompt_tokens=3,
        completion_tokens=completion,
        start_time=ts(1_800_000_000),
        end_time=ts(1_800_000_001),
        status=metering_pb2.REQUEST_STATUS_COMPLETED,
    )


async def test_keys_authenticate_until_revoked(auth_channel: grpc.aio.Channel) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    tenant = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="acme"), metadata=ADMIN)
    created = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="ci"), metadata=ADMIN
    )
    assert created.api_key.startswith(f"maas_{created.key.key_id}_")
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=created.api_key))
    assert principal.tenant_id == tenant.tenant_id
    listed = await stub.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=tenant.tenant_id), metadata=ADMIN
    )
    assert [k.key_id for k in listed.keys] == [created.key.key_id]
    await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=created.key.key_id), metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=created.api_key))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_admin_rpcs_need_the_admin_token(
    auth_channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=metadata)
    assert info.value.code() == code


async def test_empty_tenant_name_is_invalid_argument_naming_it(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateTenant(auth_pb2.CreateTenantRequest(name=""), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["name"]


async def test_record_usage_once_however_often_called(auth_channel: grpc.aio.Channel) -> None:
    stub = metering_pb2_grpc.MeteringStub(auth_channel)
    replies = [await stub.RecordUsage(metering_pb2.RecordUsageRequest(record=record("r1", "t1")))]
    replies += await asyncio.gather(
        *(
            stub.RecordUsage(metering_pb2.RecordUsageRequest(record=record("r1", "t1")))
            for _ in range(20)
        )
    )
    assert [r.duplicate for r in replies].count(False) == 1
    summary = await stub.GetUsage(metering_pb2.MeteringGetUsageRequest(tenant_id="t1"))
    assert (summary.summary.requests, summary.summary.completion_tokens) == (1, 7)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordUsage(
            metering_pb2.RecordUsageRequest(record=record("r1", "t1", completion=8))
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_record_usage_batch_judges_each_record_on_its_own(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = metering_pb2_grpc.MeteringStub(auth_channel)
    await stub.RecordUsage(metering_pb2.RecordUsageRequest(record=record("b-0", "tb")))
    no_status = record("b-bad", "tb")
    no_status.ClearField("status")
    batch = [
        record("b-0", "tb"),  # a replay of a stored record
        record("b-1", "tb"),
        record("b-0", "tb", completion=99),  # the same id with other numbers
        no_status,
        record("", "tb"),
        *(record(f"b-{i}", "tb") for i in range(2, 200)),
    ]
    reply = await stub.RecordUsageBatch(metering_pb2.RecordUsageBatchRequest(records=batch))

    assert len(reply.results) == len(batch)
    codes = [r.error.code for r in reply.results]
    assert (
        codes[:5]
        == [0, 0, grpc.StatusCode.ALREADY_EXISTS.value[0]]
        + [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2
    )
    assert set(codes[5:]) == {0}
    assert [r.duplicate for r in reply.results[:2]] == [True, False]
    assert reply.results[1].record == batch[1]
    violations = []
    for result in reply.results[3:5]:
        bad_request, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
        first, second = result.error.details
        assert first.Unpack(bad_request) and second.Unpack(info)
        violations += [v.field for v in bad_request.field_violations]
        assert (info.reason, info.metadata["field"]) == ("INVALID_ARGUMENT", violations[-1])
    assert violations == ["records[3].status", "records[4].request_id"]
    # Every stored record counts once: b-0 (earlier) and b-1..b-199.
    summary = await stub.GetUsage(metering_pb2.MeteringGetUsageRequest(tenant_id="tb"))
    assert (summary.summary.requests, summary.summary.completion_tokens) == (200, 200 * 7)


async def test_record_usage_batch_over_the_limit_names_the_field(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = metering_pb2_grpc.MeteringStub(auth_channel)
    batch = [record(f"big-{i}", "tbig") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordUsageBatch(metering_pb2.RecordUsageBatchRequest(records=batch))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["records"]
    summary = await stub.GetUsage(metering_pb2.MeteringGetUsageRequest(tenant_id="tbig"))
    assert summary.summary.requests == 0


async def test_health_serving(auth_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(auth_channel)
    for name in ("maas.v1.Auth", "maas.v1.Metering"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_admin_scoped_keys_administer_and_tenant_keys_do_not(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    ops = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="ops"), metadata=ADMIN)
    admin_key = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=ops.tenant_id, scopes=["admin"]), metadata=ADMIN
    )
    plain_key = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=ops.tenant_id), metadata=ADMIN
    )
    as_admin = (("authorization", f"Bearer {admin_key.api_key}"),)
    listed = await stub.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=ops.tenant_id), metadata=as_admin
    )
    assert {k.key_id for k in listed.keys} == {admin_key.key.key_id, plain_key.key.key_id}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListApiKeys(
            auth_pb2.ListApiKeysRequest(tenant_id=ops.tenant_id),
            metadata=(("authorization", f"Bearer {plain_key.api_key}"),),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("request_id", "tenant_id", "field"),
    [
        ("", "t1", "record.request_id"),
        ("x" * 129, "t1", "record.request_id"),
        ("has space", "t1", "record.request_id"),
        ("ok\x00", "t1", "record.request_id"),
        ("r1", "", "record.tenant_id"),
        ("r1", "é" * 3, "record.tenant_id"),
    ],
)
async def test_bad_ids_are_invalid_argument(
    auth_channel: grpc.aio.Channel, request_id: str, tenant_id: str, field: str
) -> None:
    stub = metering_pb2_grpc.MeteringStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordUsage(
            metering_pb2.RecordUsageRequest(record=record(request_id, tenant_id))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [field]


async def test_a_huge_tenant_name_is_invalid_argument(auth_channel: grpc.aio.Channel) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="n" * 1000), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["name"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"tenant_id": "t1", "request_id": "r1", "idempotency_key": "k" * 10_000},
            "idempotency_key",
        ),
        ({"tenant_id": "t1", "request_id": "has space", "idempotency_key": "k"}, "request_id"),
        ({"tenant_id": "", "request_id": "r1", "idempotency_key": "k"}, "tenant_id"),
    ],
)
async def test_a_release_naming_bad_ids_is_invalid_argument(
    auth_channel: grpc.aio.Channel, fields: dict[str, str], named: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Release(auth_pb2.ReleaseRequest(reservation_id="gone", **fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [named]


@pytest.mark.parametrize("reservation_id", ["", "r" * 10_000, "has space", "nul\x00"])
async def test_a_commit_or_release_of_a_bad_id_is_invalid_argument(
    auth_channel: grpc.aio.Channel, reservation_id: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    for call in (
        stub.Commit(auth_pb2.CommitRequest(reservation_id=reservation_id, used_tokens=1)),
        stub.Release(auth_pb2.ReleaseRequest(reservation_id=reservation_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(info.value) == ["reservation_id"]


@pytest.mark.parametrize("key_id", ["k" * 10_000, "has space", "nul\x00"])
async def test_a_reservation_naming_a_bad_key_id_is_invalid_argument(
    auth_channel: grpc.aio.Channel, key_id: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Reserve(
            auth_pb2.ReserveRequest(
                tenant_id="t1", request_id="r1", model="m", estimated_tokens=1, key_id=key_id
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["key_id"]


@pytest.mark.parametrize("reservation_id", ["", "r" * 10_000, "has space"])
async def test_a_renewal_of_a_bad_id_is_invalid_argument(
    auth_channel: grpc.aio.Channel, reservation_id: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Renew(auth_pb2.RenewRequest(reservation_id=reservation_id))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["reservation_id"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"estimated_tokens": 2**64 - 1}, "estimated_tokens"),
        ({"estimated_tokens": 10, "max_completion_tokens": 2**63 - 1}, "max_completion_tokens"),
        (
            {"estimated_tokens": 10, "prompt_tokens": 6, "max_completion_tokens": 5},
            "max_completion_tokens",
        ),
    ],
)
async def test_a_hostile_reserve_estimate_is_invalid_argument_naming_it(
    auth_channel: grpc.aio.Channel, fields: dict[str, int], named: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        request = auth_pb2.ReserveRequest(tenant_id="t1", request_id="r1", model="m")
        for name, value in fields.items():
            setattr(request, name, value)
        await stub.Reserve(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [named]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"used_tokens": 2**64 - 1}, "used_tokens"),
        ({"used_tokens": 10, "prompt_tokens": 5, "cached_tokens": 6}, "cached_tokens"),
        ({"used_tokens": 10, "prompt_tokens": 5, "completion_tokens": 6}, "completion_tokens"),
    ],
)
async def test_a_hostile_commit_usage_is_invalid_argument_naming_it(
    auth_channel: grpc.aio.Channel, fields: dict[str, int], named: str
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Commit(auth_pb2.CommitRequest(reservation_id="gone", **fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [named]
