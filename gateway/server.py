"""Builds the gateway: its downstream channels, background writers and server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from gateway.adapters import AdapterGate, AdapterResolver
from gateway.authn import Authenticator
from gateway.constraints import ConstraintChecker
from gateway.core import GatewayCore
from gateway.http_health import channels_readiness
from gateway.http_server import serving_http
from gateway.metrics import GatewayMetrics
from gateway.model_limits import ModelCatalog
from gateway.model_prices import PriceBook
from gateway.openai_http import create_app
from gateway.outbox import UsageOutbox
from gateway.outbox_dir import OutboxAdopter, close_own, own_outbox
from gateway.pacing import Paced
from gateway.quota import QuotaClient, budget_event
from gateway.refusal_holds import RefusalHolds
from gateway.refusals import RefusalBudget, read_budget
from gateway.routes import Direct, Proxy, ReplicaChannels, Routing
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from maas.v1 import (
    adapter_registry_pb2,
    adapter_registry_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    router_pb2_grpc,
)
from observability import Telemetry
from observability.channels import channel
from observability.client_spans import ClientSpans
from services.common.balanced import balanced_options, balanced_target
from services.common.events import EventPublisher
from services.common.security import channel_security, server_security
from services.common.serving import PUBLIC_SERVER_OPTIONS, ServiceServer, start_server
from services.router.spec import CALLER_CHANNEL_OPTIONS

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
_AUTH = auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name
_METERING = metering_pb2.DESCRIPTOR.services_by_name["Metering"].full_name
_REGISTRY = adapter_registry_pb2.DESCRIPTOR.services_by_name["AdapterRegistry"].full_name
# The gateway's calls to auth that a replica dying under them may hand to
# another: each is safe to repeat (gateway/quota.py says why for each).
# Metering: every record is idempotent by request id, the query only reads.
# The adapter registry's lookups only read.
AUTH_RETRIED: tuple[tuple[str, str | None], ...] = (
    *((_AUTH, method) for method in ("Authenticate", "Reserve", "Renew", "Commit", "Release")),
    (_METERING, None),
    *((_REGISTRY, method) for method in ("ResolveAdapter", "ListAdapters")),
)


@dataclass
class RunningGateway:
    """The gateway's gRPC server and, unless disabled, its HTTP face."""

    grpc: ServiceServer
    http_port: int | None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def ports(self) -> dict[str, int]:
        ports = {"port": self.grpc.port}
        if self.http_port is not None:
            ports["http_port"] = self.http_port
        return ports


@asynccontextmanager
async def serving(settings: GatewaySettings, telemetry: Telemetry) -> AsyncIterator[RunningGateway]:
    """Serves the gateway (gRPC, and HTTP when `http_port` is set); on exit
    stops taking calls, lets streams finish, then flushes usage records and
    events before closing channels."""
    async with AsyncExitStack() as stack:
        security = channel_security(settings)
        router_ch = channel(
            settings.router_address, telemetry, CALLER_CHANNEL_OPTIONS, security=security
        )
        # Every auth replica on one channel, round robin; see services/common/balanced.py.
        auth_target = balanced_target("auth_address", settings.auth_address)
        auth_ch = channel(
            auth_target,
            telemetry,
            options=balanced_options(auth_target, AUTH_RETRIED),
            security=security,
        )
        anomaly_ch = channel(settings.anomaly_address, telemetry, security=security)
        for ch in (router_ch, auth_ch, anomaly_ch):
            stack.push_async_callback(ch.close)

        events = EventPublisher(anomaly_ch, max_queue=settings.event_queue_size)
        await events.start()
        stack.push_async_callback(events.aclose)
        metrics = GatewayMetrics(telemetry.meter())
        metering = metering_pb2_grpc.MeteringStub(auth_ch)
        if settings.usage_outbox_dir is None:
            usage = UsageOutbox(settings.usage_outbox_path, metering, metrics=metrics)
            await usage.open()
            stack.push_async_callback(usage.aclose, settings.grace_period_s)
        else:
            own = own_outbox(settings.usage_outbox_dir)
            usage = UsageOutbox(own.path, metering, metrics=metrics)
            try:
                await usage.open()
            except BaseException:
                own.remove()
                raise
            stack.push_async_callback(close_own, usage, own, settings.grace_period_s)
            adopter = OutboxAdopter(
                settings.usage_outbox_dir,
                metering,
                interval_s=settings.usage_outbox_adopt_interval_s,
                metrics=metrics,
            )
            adopter.start()
            stack.push_async_callback(adopter.aclose)

        # Every request reserves and settles: those calls trace by hand (quota.py says why).
        quota_ch = channel(
            auth_target,
            telemetry,
            options=balanced_options(auth_target, AUTH_RETRIED),
            security=security,
            instrumented=False,
        )
        stack.push_async_callback(quota_ch.close)
        quotas = QuotaClient(
            auth_pb2_grpc.AuthStub(quota_ch),
            timeout_s=settings.quota_call_timeout_s,
            # A crossed budget threshold is an alert in anomaly, as the events are.
            on_crossed=lambda crossing: events.publish(budget_event(crossing)),
            spans=ClientSpans(telemetry.tracer(), security.call_metadata()),
        )
        stack.push_async_callback(quotas.aclose, settings.grace_period_s)
        constraints = ConstraintChecker(
            workers=settings.constraint_workers, timeout_s=settings.constraint_compile_timeout_s
        )
        stack.push_async_callback(constraints.aclose)
        router = router_pb2_grpc.RouterStub(router_ch)
        catalog = ModelCatalog(router, ttl_s=settings.model_list_ttl_s)
        registry = adapter_registry_pb2_grpc.AdapterRegistryStub(auth_ch)
        adapters = AdapterGate(
            registry,
            catalog,
            AdapterResolver(
                registry,
                ttl_s=settings.adapter_cache_ttl_s,
                max_entries=settings.adapter_cache_size,
                max_lists=settings.adapter_list_cache_size,
                lookup_timeout_s=settings.auth_timeout_s,
            ),
        )
        routing: Routing = Proxy(router)
        if settings.routing == "direct":
            channels = ReplicaChannels(
                telemetry, security=security, max_idle=settings.max_idle_replica_channels
            )
            # Route calls carry the tracing metadata themselves (routes.py says why).
            route_ch = channel(
                settings.router_address,
                telemetry,
                CALLER_CHANNEL_OPTIONS,
                security=security,
                instrumented=False,
            )
            stack.push_async_callback(route_ch.close)
            routing = Direct(router_pb2_grpc.RouterStub(route_ch), channels)
        # After the server stops (callbacks run last first): streams end, then channels close.
        stack.push_async_callback(routing.aclose)
        holds = RefusalHolds(
            per_caller=settings.refusal_holds_per_caller,
            total=settings.refusal_holds,
            max_hold_s=settings.refusal_hold_max_s,
            total_bytes=settings.refusal_hold_bytes,
            on_held=lambda subject: metrics.refusals_held.add(1, {"subject": subject}),
            on_unheld=lambda subject: metrics.refusals_unheld.add(1, {"subject": subject}),
        )
        metrics.watch_holds(lambda: holds.holding)
        core = GatewayCore(
            authenticator=Authenticator(
                auth_pb2_grpc.AuthStub(auth_ch),
                ttl_s=settings.auth_cache_ttl_s,
                max_entries=settings.auth_cache_size,
                timeout_s=settings.auth_timeout_s,
                negative_ttl_s=settings.auth_negative_ttl_s,
                negative_max_entries=settings.auth_negative_cache_size,
            ),
            router=router,
            routing=Paced(routing, settings.stream_messages_per_s),
            metering=metering,
            usage=usage,
            events=events,
            metrics=metrics,
            quotas=quotas,
            catalog=catalog,
            constraints=constraints,
            prices=PriceBook(
                billing_pb2_grpc.BillingStub(auth_ch), ttl_s=settings.model_list_ttl_s
            ),
            progress_interval_s=settings.usage_progress_interval_s,
            refusals=RefusalBudget(
                per_s=settings.refusals_per_s,
                burst=settings.refusal_burst,
                subject="refused_requests",
            ),
            auth_failures=RefusalBudget(
                per_s=settings.auth_failures_per_s,
                burst=settings.auth_failure_burst,
                subject="failed_authentications",
            ),
            reads=read_budget(settings.reads_per_s, settings.read_burst),
            adapters=adapters,
            holds=holds,
        )
        servicer = GatewayServicer(core)
        server = await start_server(
            address=settings.address,
            telemetry=telemetry,
            service_names=[SERVICE_NAME],
            registrars=[lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s)],
            # Public: TLS when configured, but callers are tenants, not the mesh.
            security=server_security(settings, mesh_only=False),
            options=PUBLIC_SERVER_OPTIONS,
        )
        http = AsyncExitStack()

        async def stop_serving() -> None:
            # Both faces drain at once: shutting down takes one grace period, not two.
            await asyncio.gather(server.stop(settings.grace_period_s), http.aclose())

        stack.push_async_callback(stop_serving)
        http_port = None
        if settings.http_port is not None:
            http_port = await http.enter_async_context(
                serving_http(
                    create_app(
                        core,
                        telemetry.tracer(),
                        max_body_bytes=settings.http_max_body_bytes,
                        not_ready=channels_readiness({"router": router_ch, "auth": auth_ch}),
                    ),
                    host=settings.host,
                    port=settings.http_port,
                    grace_s=settings.grace_period_s,
                    tls=settings.tls,
                    head_timeout_s=settings.http_head_timeout_s,
                    max_connections_per_peer=settings.http_max_connections_per_peer,
                )
            )
        yield RunningGateway(server, http_port)
