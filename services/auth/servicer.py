"""maas.v1.Auth and maas.v1.Metering: thin layers over the cores."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
from google.protobuf import duration_pb2

from maas.v1 import auth_pb2, auth_pb2_grpc, metering_pb2, metering_pb2_grpc, usage_pb2
from services.auth import billing_convert, convert
from services.auth.billing import BillingCore
from services.auth.core import (
    AuthCore,
    MeteringCore,
    check_id,
    require_operator,
    require_tenant,
)
from services.auth.models import OPERATOR, Admin, UsageRecord
from services.auth.pricing import micros
from services.auth.quota import Held, Quotas, Usage
from services.auth.restrictions import Restrictions
from services.common.errors import MeshError, UnauthenticatedError

Context = grpc.aio.ServicerContext[Any, Any]

# The rpcs that call AdminGuard: they stay reachable from outside the mesh
# (the operator's CLI, a tenant's admin tooling) because an admin credential
# guards them.
ADMIN_RPCS = (
    "CreateTenant",
    "ListTenants",
    "CreateApiKey",
    "ListApiKeys",
    "RevokeApiKey",
    "SetPlan",
    "Restrict",
    "LiftRestriction",
    "ListRestrictions",
    "ListAuditRecords",
)


class AdminGuard:
    """Admin rpcs need `authorization: Bearer <credential>`: the operator token
    (every admin rpc, every tenant), or an API key with the `admin` scope (its
    own tenant only)."""

    def __init__(self, operator_token: str, core: AuthCore) -> None:
        self._token = operator_token.encode()
        self._core = core

    async def check(self, context: Context) -> Admin:
        credential = self._credential(context)
        if hmac.compare_digest(credential.encode(), self._token):
            return OPERATOR
        return await self._core.admin(credential)  # UNAUTHENTICATED if bad

    async def anyone(self, context: Context) -> Admin:
        """The operator, or the tenant of any valid API key, whatever its
        scopes: for what every caller may read (the price book)."""
        credential = self._credential(context)
        if hmac.compare_digest(credential.encode(), self._token):
            return OPERATOR
        principal = await self._core.authenticate(credential)  # UNAUTHENTICATED if bad
        return Admin(principal.tenant_id, principal.key_id)

    def _credential(self, context: Context) -> str:
        for key, value in context.invocation_metadata() or ():
            if key != "authorization":
                continue
            text = value if isinstance(value, str) else value.decode()
            scheme, _, credential = text.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                break
            return credential
        raise UnauthenticatedError("admin rpcs need 'authorization: Bearer <admin credential>'")

    async def operator(self, context: Context, rpc: str) -> Admin:
        """The operator, else PERMISSION_DENIED: `rpc` is mesh-wide."""
        admin = await self.check(context)
        require_operator(admin, rpc)
        return admin

    async def of_tenant(self, context: Context, tenant_id: str) -> Admin:
        """The operator or `tenant_id`'s own admin, else PERMISSION_DENIED."""
        admin = await self.check(context)
        require_tenant(admin, tenant_id)
        return admin


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(
        self, core: AuthCore, guard: AdminGuard, quotas: Quotas, restrictions: Restrictions
    ) -> None:
        self._core = core
        self._guard = guard
        self._quotas = quotas
        self._restrictions = restrictions

    async def Restrict(
        self, request: auth_pb2.RestrictRequest, context: Context
    ) -> auth_pb2.Restriction:
        await self._guard.operator(context, "Restrict")
        restriction = await self._restrictions.restrict(convert.restrict_from_proto(request))
        return convert.restriction_to_proto(restriction, self._restrictions.active(restriction))

    async def LiftRestriction(
        self, request: auth_pb2.LiftRestrictionRequest, context: Context
    ) -> auth_pb2.Restriction:
        await self._guard.operator(context, "LiftRestriction")
        check_id("restriction_id", request.restriction_id)
        lifted = await self._restrictions.lift(
            request.restriction_id, request.actor, request.reason
        )
        return convert.restriction_to_proto(lifted, self._restrictions.active(lifted))

    async def ListRestrictions(
        self, request: auth_pb2.ListRestrictionsRequest, context: Context
    ) -> auth_pb2.ListRestrictionsResponse:
        await self._guard.of_tenant(context, request.tenant_id)
        found = await self._restrictions.find(request.tenant_id, request.include_inactive)
        return auth_pb2.ListRestrictionsResponse(
            restrictions=[
                convert.restriction_to_proto(r, self._restrictions.active(r)) for r in found
            ]
        )

    async def ListAuditRecords(
        self, request: auth_pb2.ListAuditRecordsRequest, context: Context
    ) -> auth_pb2.ListAuditRecordsResponse:
        await self._guard.of_tenant(context, request.tenant_id)
        entries = await self._restrictions.audit(request.tenant_id, request.limit)
        return auth_pb2.ListAuditRecordsResponse(
            records=[convert.audit_to_proto(e) for e in entries]
        )

    async def SetPlan(self, request: auth_pb2.SetPlanRequest, context: Context) -> auth_pb2.Tenant:
        await self._guard.operator(context, "SetPlan")
        priority = (
            convert.priority_from_proto(request.priority)
            if request.priority != auth_pb2.PRIORITY_UNSPECIFIED
            else None
        )
        tenant = await self._core.set_plan(
            request.tenant_id, convert.plan_from_proto(request.plan), priority
        )
        return convert.tenant_to_proto(tenant)

    async def Reserve(
        self, request: auth_pb2.ReserveRequest, context: Context
    ) -> auth_pb2.Reservation:
        check_id("request_id", request.request_id)
        check_id("tenant_id", request.tenant_id)
        if request.idempotency_key:
            check_id("idempotency_key", request.idempotency_key)
        if request.key_id:
            # It names the key's budget counters: an id like any other.
            check_id("key_id", request.key_id)
        held = await self._quotas.reserve(
            request.tenant_id,
            request.request_id,
            request.model,
            request.estimated_tokens,
            request.key_id,
            request.idempotency_key,
            prompt_tokens=request.prompt_tokens,
            max_completion_tokens=request.max_completion_tokens,
        )
        return self._reservation(held)

    async def Renew(self, request: auth_pb2.RenewRequest, context: Context) -> auth_pb2.Reservation:
        check_id("reservation_id", request.reservation_id)
        held = await self._quotas.renew(request.reservation_id)
        return self._reservation(held)

    def _reservation(self, held: Held) -> auth_pb2.Reservation:
        lease = duration_pb2.Duration()
        lease.FromNanoseconds(int(self._quotas.lease_s * 1e9))
        return auth_pb2.Reservation(
            reservation_id=held.reservation_id,
            tokens=held.tokens,
            expire_time=convert.timestamp(held.expire_time),
            lease=lease,
        )

    async def Commit(
        self, request: auth_pb2.CommitRequest, context: Context
    ) -> auth_pb2.CommitResponse:
        check_id("reservation_id", request.reservation_id)
        used = Usage(
            request.used_tokens,
            prompt=request.prompt_tokens,
            cached=request.cached_tokens,
            completion=request.completion_tokens,
        )
        settled = await self._quotas.commit_usage(request.reservation_id, used)
        return auth_pb2.CommitResponse(
            returned_tokens=max(0, settled.held.tokens - used.tokens),
            cost_micros=micros(settled.cost),
            crossed=[
                auth_pb2.BudgetCrossing(
                    budget=c.subject,
                    tenant_id=c.tenant_id,
                    key_id=c.key_id,
                    spent_micros=c.spent_micros,
                    threshold_micros=c.soft_micros,
                    limit_micros=c.limit_micros,
                )
                for c in settled.crossings
            ],
        )

    async def Release(
        self, request: auth_pb2.ReleaseRequest, context: Context
    ) -> auth_pb2.ReleaseResponse:
        if request.reservation_id or not request.idempotency_key:
            check_id("reservation_id", request.reservation_id)
        if request.idempotency_key:
            # Named only to free the key of a forgotten reservation: ids like Reserve's.
            check_id("tenant_id", request.tenant_id)
            check_id("request_id", request.request_id)
            check_id("idempotency_key", request.idempotency_key)
        await self._quotas.release(
            request.reservation_id,
            tenant_id=request.tenant_id,
            request_id=request.request_id,
            idempotency_key=request.idempotency_key,
        )
        return auth_pb2.ReleaseResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: Context
    ) -> auth_pb2.Principal:
        return convert.principal_to_proto(await self._core.authenticate(request.api_key))

    async def CreateTenant(
        self, request: auth_pb2.CreateTenantRequest, context: Context
    ) -> auth_pb2.Tenant:
        await self._guard.operator(context, "CreateTenant")
        tenant = await self._core.create_tenant(
            request.name,
            convert.priority_from_proto(request.priority),
            convert.plan_from_proto(request.plan) if request.HasField("plan") else None,
        )
        return convert.tenant_to_proto(tenant)

    async def ListTenants(
        self, request: auth_pb2.ListTenantsRequest, context: Context
    ) -> auth_pb2.ListTenantsResponse:
        await self._guard.operator(context, "ListTenants")
        tenants = await self._core.list_tenants()
        return auth_pb2.ListTenantsResponse(tenants=[convert.tenant_to_proto(t) for t in tenants])

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        await self._guard.of_tenant(context, request.tenant_id)
        record, full = await self._core.create_api_key(
            request.tenant_id,
            request.name,
            list(request.scopes),
            convert.optional_time(request, "expire_time"),
        )
        return auth_pb2.CreateApiKeyResponse(key=convert.key_to_proto(record), api_key=full)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        await self._guard.of_tenant(context, request.tenant_id)
        records = await self._core.list_api_keys(request.tenant_id)
        return auth_pb2.ListApiKeysResponse(keys=[convert.key_to_proto(k) for k in records])

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.ApiKey:
        admin = await self._guard.check(context)
        return convert.key_to_proto(await self._core.revoke_api_key(request.key_id, admin))


class MeteringServicer(metering_pb2_grpc.MeteringServicer):
    def __init__(self, core: MeteringCore, billing: BillingCore) -> None:
        self._core = core
        self._billing = billing

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: Context
    ) -> metering_pb2.RecordUsageResponse:
        stored, duplicate = await self._core.record_usage(convert.usage_from_proto(request.record))
        return metering_pb2.RecordUsageResponse(
            record=convert.usage_to_proto(stored), duplicate=duplicate
        )

    async def RecordUsageBatch(
        self, request: metering_pb2.RecordUsageBatchRequest, context: Context
    ) -> metering_pb2.RecordUsageBatchResponse:
        records: list[UsageRecord | MeshError] = []
        for message in request.records:
            try:
                records.append(convert.usage_from_proto(message))
            except MeshError as err:
                records.append(err)
        reply = metering_pb2.RecordUsageBatchResponse()
        for outcome in await self._core.record_usage_batch(records):
            if isinstance(outcome, MeshError):
                reply.results.add(error=outcome.status_proto())
            else:
                stored, duplicate = outcome
                reply.results.add(record=convert.usage_to_proto(stored), duplicate=duplicate)
        return reply

    async def GetUsage(
        self, request: metering_pb2.MeteringGetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        usage = await self._billing.usage(
            request.tenant_id,
            convert.optional_time(request, "start_time"),
            convert.optional_time(request, "end_time"),
            convert.grouping_from_proto(request.group_by),
        )
        return billing_convert.usage_to_proto(usage)
