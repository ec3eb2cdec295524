"""Suspending and throttling a tenant or one key: enforcement at Reserve,
expiry, an admin's reversal, the audit trail and persistence across a
restart, on both stores; and the admin rpcs over gRPC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.v1 import auth_pb2, auth_pb2_grpc
from services.auth.core import AuthCore
from services.auth.models import RestrictionAction
from services.auth.quota import Quotas
from services.auth.restrictions import Restrictions, RestrictRequest, SuspendedError
from services.auth.store import AuthStore
from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tests.auth.conftest import ADMIN_TOKEN, QuotaStates


class Wall:
    """A settable wall clock, so expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


async def tenant_with_two_keys(core: AuthCore) -> tuple[str, str, str]:
    tenant = await core.create_tenant("acme")
    first, _ = await core.create_api_key(tenant.tenant_id, "laptop")
    second, _ = await core.create_api_key(tenant.tenant_id, "server")
    return tenant.tenant_id, first.key_id, second.key_id


def suspend(key_id: str = "", tenant_id: str = "", minutes: float = 15) -> RestrictRequest:
    return RestrictRequest(
        action=RestrictionAction.SUSPEND,
        duration=timedelta(minutes=minutes),
        reason="leaked key",
        actor="policy:request_rate_spike",
        key_id=key_id,
        tenant_id=tenant_id,
        alert_id="a1",
    )


async def test_a_suspended_key_is_refused_and_its_sibling_is_not_until_lifted(
    store: AuthStore, auth_core: AuthCore, wall: Wall, quota_states: QuotaStates
) -> None:
    tenant_id, leaked, other = await tenant_with_two_keys(auth_core)
    state = quota_states(wall=wall)
    restrictions = Restrictions(store, wall=wall, shared=state)
    quotas = Quotas(store, restrictions=restrictions, state=state)
    made = await restrictions.restrict(suspend(key_id=leaked))
    assert made.tenant_id == tenant_id and made.key_id == leaked

    with pytest.raises(SuspendedError, match=r"key suspended until .*: leaked key"):
        await quotas.reserve(tenant_id, "r1", "tiny", 10, key_id=leaked)
    held = await quotas.reserve(tenant_id, "r2", "tiny", 10, key_id=other)
    await quotas.release(held.reservation_id)

    wall.now += timedelta(minutes=1)
    lifted = await restrictions.lift(made.restriction_id, "admin", "false alarm")
    assert lifted.lifted_by == "admin" and lifted.lifted_at == wall.now
    held = await quotas.reserve(tenant_id, "r3", "tiny", 10, key_id=leaked)
    await quotas.release(held.reservation_id)

    trail = await restrictions.audit(tenant_id, 0)
    assert [(e.action, e.actor) for e in trail] == [
        ("lift", "admin"),
        ("restrict", "policy:request_rate_spike"),
    ]
    assert "false alarm" in trail[0].detail
    assert f"suspend key:{leaked}" in trail[1].detail


async def test_a_suspended_tenant_refuses_every_key(
    store: AuthStore, auth_core: AuthCore, wall: Wall, quota_states: QuotaStates
) -> None:
    tenant_id, first, second = await tenant_with_two_keys(auth_core)
    state = quota_states(wall=wall)
    restrictions = Restrictions(store, wall=wall, shared=state)
    quotas = Quotas(store, restrictions=restrictions, state=state)
    await restrictions.restrict(suspend(tenant_id=tenant_id))
    for i, key in enumerate((first, second, "")):
        with pytest.raises(SuspendedError, match="tenant suspended"):
            await quotas.reserve(tenant_id, f"r{i}", "tiny", 10, key_id=key)


async def test_a_throttle_caps_the_rate_and_says_when_to_come_back(
    store: AuthStore, auth_core: AuthCore, wall: Wall, quota_states: QuotaStates
) -> None:
    tenant_id, key, other = await tenant_with_two_keys(auth_core)
    clock = [0.0]
    state = quota_states(lambda: clock[0], wall)
    restrictions = Restrictions(store, wall=wall, shared=state)
    quotas = Quotas(store, restrictions=restrictions, clock=lambda: clock[0], state=state)
    made = await restrictions.restrict(
        RestrictRequest(
            action=RestrictionAction.THROTTLE,
            duration=timedelta(hours=1),
            reason="spike",
            actor="admin",
            key_id=key,
            requests_per_minute=2,
        )
    )
    for i in range(2):
        await quotas.reserve(tenant_id, f"r{i}", "tiny", 10, key_id=key)
    with pytest.raises(ResourceExhaustedError) as refused:
        await quotas.reserve(tenant_id, "r2", "tiny", 10, key_id=key)
    assert refused.value.subject == f"restriction:{made.restriction_id}"
    assert 29 <= refused.value.retry_after_s <= 30  # one request's worth of 2 a minute
    await quotas.reserve(tenant_id, "r3", "tiny", 10, key_id=other)  # the sibling is free

    clock[0] += 30.0
    await quotas.reserve(tenant_id, "r4", "tiny", 10, key_id=key)


async def test_a_restriction_ends_by_itself_at_its_expiry(
    store: AuthStore, auth_core: AuthCore, wall: Wall, quota_states: QuotaStates
) -> None:
    tenant_id, key, _ = await tenant_with_two_keys(auth_core)
    state = quota_states(wall=wall)
    restrictions = Restrictions(store, wall=wall, shared=state)
    quotas = Quotas(store, restrictions=restrictions, state=state)
    made = await restrictions.restrict(suspend(key_id=key, minutes=10))
    assert [r.restriction_id for r in await restrictions.find(tenant_id, False)] == [
        made.restriction_id
    ]

    wall.now += timedelta(minutes=10)
    await quotas.reserve(tenant_id, "r1", "tiny", 10, key_id=key)
    assert await restrictions.find(tenant_id, False) == []
    assert [r.restriction_id for r in await restrictions.find(tenant_id, True)] == [
        made.restriction_id
    ]
    # Lifting what already ended changes nothing and audits nothing.
    await restrictions.lift(made.restriction_id, "admin", "")
    assert [e.action for e in await restrictions.audit(tenant_id, 0)] == ["restrict"]


async def test_restrictions_outlive_a_restart_of_auth(
    store: AuthStore, auth_core: AuthCore, wall: Wall, quota_states: QuotaStates
) -> None:
    tenant_id, key, _ = await tenant_with_two_keys(auth_core)
    await Restrictions(store, wall=wall, shared=quota_states(wall=wall)).restrict(
        suspend(key_id=key)
    )
    quota_states.forget()  # the quota state is lost too: the store is the record
    state = quota_states(wall=wall)
    restarted = Restrictions(store, wall=wall, shared=state)
    await restarted.load()
    with pytest.raises(SuspendedError):
        await Quotas(store, restrictions=restarted, state=state).reserve(
            tenant_id, "r", "tiny", 1, key_id=key
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenant_id": "t", "key_id": "k"}, "subject"),
        ({"key_id": ""}, "subject"),
        ({"action": RestrictionAction.THROTTLE}, "requests_per_minute"),
        ({"duration": timedelta(days=31)}, "duration"),
        ({"duration": timedelta(0)}, "duration"),
        ({"reason": " "}, "reason"),
        ({"actor": ""}, "actor"),
    ],
)
async def test_bad_restrictions_name_the_field(
    store: AuthStore, auth_core: AuthCore, change: dict[str, object], field: str
) -> None:
    _, key, _ = await tenant_with_two_keys(auth_core)
    base = suspend(key_id=key)
    fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
    with pytest.raises(InvalidArgumentError) as err:
        await Restrictions(store).restrict(RestrictRequest(**(fields | change)))
    assert err.value.field == field


async def test_unknown_subjects_and_ids_are_not_found(store: AuthStore) -> None:
    restrictions = Restrictions(store)
    with pytest.raises(NotFoundError):
        await restrictions.restrict(suspend(key_id="nope"))
    with pytest.raises(NotFoundError):
        await restrictions.restrict(suspend(tenant_id="nope"))
    with pytest.raises(NotFoundError):
        await restrictions.lift("nope", "admin", "")


async def test_the_admin_rpcs_restrict_lift_and_audit_over_grpc(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    tenant = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="acme"), metadata=admin)
    key = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="k"), metadata=admin
    )
    request = auth_pb2.RestrictRequest(
        key_id=key.key.key_id,
        action=auth_pb2.RESTRICTION_ACTION_SUSPEND,
        duration=duration_pb2.Duration(seconds=600),
        reason="leaked",
        actor="admin",
    )
    with pytest.raises(grpc.aio.AioRpcError) as no_admin:
        await stub.Restrict(request)
    assert no_admin.value.code() == grpc.StatusCode.UNAUTHENTICATED

    made = await stub.Restrict(request, metadata=admin)
    assert made.active and made.tenant_id == tenant.tenant_id

    reserve = auth_pb2.ReserveRequest(
        tenant_id=tenant.tenant_id, request_id="r1", model="tiny", estimated_tokens=5
    )
    reserve.key_id = key.key.key_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Reserve(reserve)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "suspended" in (refused.value.details() or "")

    bad = auth_pb2.RestrictRequest()
    bad.CopyFrom(request)
    bad.ClearField("duration")
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.Restrict(bad, metadata=admin)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(invalid.value)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "duration"

    lifted = await stub.LiftRestriction(
        auth_pb2.LiftRestrictionRequest(restriction_id=made.restriction_id, actor="admin"),
        metadata=admin,
    )
    assert not lifted.active and lifted.HasField("lift_time")
    await stub.Reserve(reserve)
    listed = await stub.ListRestrictions(
        auth_pb2.ListRestrictionsRequest(tenant_id=tenant.tenant_id, include_inactive=True),
        metadata=admin,
    )
    assert [r.restriction_id for r in listed.restrictions] == [made.restriction_id]
    trail = await stub.ListAuditRecords(
        auth_pb2.ListAuditRecordsRequest(tenant_id=tenant.tenant_id), metadata=admin
    )
    assert [r.action for r in trail.records] == ["lift", "restrict"]
