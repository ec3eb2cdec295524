"""The console's calls into the mesh, each with the credential it needs:
the user's API key to the gateway, the user's credential as the admin bearer
to auth's admin rpcs (auth decides what it may do), and only the channel's
service token (or mesh certificate) to auth's Authenticate, the router and
anomaly, whose answers the console scopes to the user itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
    usage_pb2,
)

Metadata = tuple[tuple[str, str], ...]


def bearer(credential: str) -> Metadata:
    return (("authorization", f"Bearer {credential}"),)


def timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


@dataclass
class MeshClient:
    gateway: gateway_pb2_grpc.GatewayAsyncStub
    auth: auth_pb2_grpc.AuthAsyncStub
    billing: billing_pb2_grpc.BillingAsyncStub
    router: router_pb2_grpc.RouterAsyncStub
    anomaly: anomaly_pb2_grpc.AnomalyAsyncStub
    timeout_s: float

    @classmethod
    def over(
        cls,
        *,
        gateway: grpc.aio.Channel,
        auth: grpc.aio.Channel,
        router: grpc.aio.Channel,
        anomaly: grpc.aio.Channel,
        timeout_s: float,
    ) -> MeshClient:
        return cls(
            gateway_pb2_grpc.GatewayStub(gateway),
            auth_pb2_grpc.AuthStub(auth),
            # The price book is served by the auth process, on its channel.
            billing_pb2_grpc.BillingStub(auth),
            router_pb2_grpc.RouterStub(router),
            anomaly_pb2_grpc.AnomalyStub(anomaly),
            timeout_s,
        )

    async def authenticate(self, api_key: str) -> auth_pb2.Principal:
        return await self.auth.Authenticate(
            auth_pb2.AuthenticateRequest(api_key=api_key), timeout=self.timeout_s
        )

    async def tenants(self, credential: str) -> list[auth_pb2.Tenant]:
        """Every tenant; refused unless `credential` is the operator token."""
        response = await self.auth.ListTenants(
            auth_pb2.ListTenantsRequest(), metadata=bearer(credential), timeout=self.timeout_s
        )
        return list(response.tenants)

    async def keys(self, credential: str, tenant_id: str) -> list[auth_pb2.ApiKey]:
        response = await self.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(tenant_id=tenant_id),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )
        return list(response.keys)

    async def create_key(
        self, credential: str, tenant_id: str, name: str, expire: datetime | None
    ) -> auth_pb2.CreateApiKeyResponse:
        request = auth_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=name)
        if expire is not None:
            request.expire_time.CopyFrom(timestamp(expire))
        return await self.auth.CreateApiKey(
            request, metadata=bearer(credential), timeout=self.timeout_s
        )

    async def revoke_key(self, credential: str, key_id: str) -> auth_pb2.ApiKey:
        return await self.auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(key_id=key_id),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )

    async def prices(
        self, credential: str, model: str = "", *, history: bool = False
    ) -> list[billing_pb2.Price]:
        """The price book (any API key or the operator token may read it):
        the version in force per model, or every version with `history`."""
        response = await self.billing.ListPrices(
            billing_pb2.ListPricesRequest(model=model, include_history=history),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )
        return list(response.prices)

    async def set_price(
        self, credential: str, price: billing_pb2.Price, *, backdate: bool = False
    ) -> billing_pb2.Price:
        """A new price version; auth refuses it unless `credential` is the operator's."""
        return await self.billing.SetPrice(
            billing_pb2.SetPriceRequest(price=price, backdate=backdate),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )

    async def budgets(self, credential: str, tenant_id: str = "") -> list[billing_pb2.Budget]:
        """A tenant's budgets with what each has spent (the operator, or the
        tenant's own admin key); tenant_id empty: every tenant's (the operator)."""
        response = await self.billing.ListBudgets(
            billing_pb2.ListBudgetsRequest(tenant_id=tenant_id),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )
        return list(response.budgets)

    async def set_budget(self, credential: str, budget: billing_pb2.Budget) -> billing_pb2.Budget:
        """Sets (replaces) a budget; auth refuses it unless `credential` is the operator's."""
        return await self.billing.SetBudget(
            billing_pb2.SetBudgetRequest(budget=budget),
            metadata=bearer(credential),
            timeout=self.timeout_s,
        )

    async def models(self, api_key: str) -> list[generation_pb2.ModelInfo]:
        response = await self.gateway.ListModels(
            gateway_pb2.ListModelsRequest(), metadata=bearer(api_key), timeout=self.timeout_s
        )
        return list(response.models)

    async def usage(
        self, api_key: str, start: datetime, grouping: usage_pb2.UsageGrouping
    ) -> usage_pb2.GetUsageResponse:
        request = gateway_pb2.GetUsageRequest(start_time=timestamp(start), group_by=grouping)
        return await self.gateway.GetUsage(
            request, metadata=bearer(api_key), timeout=self.timeout_s
        )

    def generate(
        self, api_key: str, request: generation_pb2.GenerateRequest
    ) -> grpc.aio.UnaryStreamCall[generation_pb2.GenerateRequest, generation_pb2.GenerateResponse]:
        # No deadline: a stream runs as long as the model generates; the
        # caller cancels the call when the browser goes away.
        return self.gateway.Generate(request, metadata=bearer(api_key))

    async def alerts(self, tenant_id: str = "") -> list[anomaly_pb2.Alert]:
        response = await self.anomaly.ListAlerts(
            anomaly_pb2.ListAlertsRequest(tenant_id=tenant_id), timeout=self.timeout_s
        )
        return list(response.alerts)

    def watch_alerts(
        self, tenant_id: str
    ) -> grpc.aio.UnaryStreamCall[anomaly_pb2.WatchAlertsRequest, anomaly_pb2.Alert]:
        """New and updated alerts from now on. No `since`: it would also drop
        live alerts whose event time is older than it, and the page already
        lists the ones before."""
        request = anomaly_pb2.WatchAlertsRequest(tenant_id=tenant_id)
        return self.anomaly.WatchAlerts(request)

    async def replicas(self) -> list[router_pb2.Replica]:
        response = await self.router.ListReplicas(
            router_pb2.ListReplicasRequest(), timeout=self.timeout_s
        )
        return list(response.replicas)

    async def queues(self) -> router_pb2.QueueStats:
        return await self.router.GetQueueStats(
            router_pb2.GetQueueStatsRequest(), timeout=self.timeout_s
        )
