"""The whole mesh in one process, for tests and benchmarks: every service of
services/catalog.py built by its own factory from settings, on port 0, in
start order, each dialling the ones before it. What tests vary (TLS from a
throwaway CA, the service token, a handed-in engine, single settings,
in-memory telemetry) are options; nothing else about a service is known here
beyond what its spec declares and the few settings a mesh of one machine must
choose (`own_settings`)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.catalog import SERVICES
from services.common.settings import ServiceSettings, TlsSettings
from services.common.spec import RunningService, ServiceSpec

if TYPE_CHECKING:
    from deploy.local.throwaway_ca import MeshCertificates

# Generous for a replica's first health check on a loaded CPU; a hung start fails, not hangs.
READY_TIMEOUT_S = 60.0
# A test's in-flight streams end quickly; the public gateway gets longer to flush usage and events.
GRACE_S = 1.0
GATEWAY_GRACE_S = 2.0


@dataclass(frozen=True)
class MeshOptions:
    # Where auth's database and the gateway's usage outbox live.
    state: Path
    # The model the inference replica serves (its `model` setting).
    model: str
    # Mutual TLS on every inner hop, TLS on the gateway's public faces; None: plaintext.
    certs: MeshCertificates | None = None
    service_token: str | None = None
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Per service name, settings fields to set over the mesh's choices.
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@runtime_checkable
class AwaitsReadiness(Protocol):
    """A service that starts NOT_SERVING until something beyond it is up (the
    router until a replica serves): the mesh waits for it before going on."""

    async def wait_ready(self, timeout_s: float) -> None: ...


def tls_settings(certs: MeshCertificates | None, spec: ServiceSpec[Any]) -> TlsSettings:
    """Its own certificate; callers must present one too unless tenants call it."""
    if certs is None:
        return TlsSettings()
    identity = certs[spec.name]
    return TlsSettings(
        cert=identity.cert, key=identity.key, ca=certs.ca, require_client_cert=not spec.public
    )


def own_settings(name: str, options: MeshOptions, targets: Mapping[str, str]) -> dict[str, Any]:
    """What a mesh on one machine chooses for a service beyond ports and addresses."""
    if name == "auth":
        return {
            "admin_token": options.admin_token,
            "key_pepper": secrets.token_urlsafe(32),
            "database_path": options.state / "auth.db",
        }
    if name == "inference":
        return {"model": options.model}
    if name == "router":
        return {"replicas": [targets["inference"]]}
    if name == "gateway":
        return {"usage_outbox_path": options.state / "outbox.db"}
    return {}


def mesh_settings(
    spec: ServiceSpec[Any], options: MeshOptions, targets: Mapping[str, str]
) -> ServiceSettings:
    """A service's settings in the mesh: every port 0, the addresses of the
    services it calls (`<name>_address` fields) from `targets`, TLS and the
    token, then `options.overrides`."""
    values: dict[str, Any] = dict.fromkeys(spec.port_fields, 0)
    values["grace_period_s"] = GATEWAY_GRACE_S if spec.public else GRACE_S
    values["tls"] = tls_settings(options.certs, spec)
    values["service_token"] = options.service_token
    fields = spec.settings_type.model_fields
    for called in spec.calls:
        if spec.address_field(called) in fields:
            values[spec.address_field(called)] = targets[called]
    values |= own_settings(spec.name, options, targets)
    values |= options.overrides.get(spec.name, {})
    settings: ServiceSettings = spec.settings_type(**values)
    return settings


def plain_telemetry(name: str) -> Telemetry:
    return setup(name, TelemetrySettings())


@dataclass
class InMemoryTelemetry:
    """Telemetry whose spans and metrics stay in memory, per service name."""

    spans: dict[str, InMemorySpanExporter] = field(default_factory=dict)
    metrics: dict[str, InMemoryMetricReader] = field(default_factory=dict)

    def __call__(self, name: str) -> Telemetry:
        self.spans[name] = InMemorySpanExporter()
        self.metrics[name] = InMemoryMetricReader()
        return setup(
            name,
            TelemetrySettings(),
            span_exporter=self.spans[name],
            metric_reader=self.metrics[name],
        )


@dataclass
class RunningMesh:
    options: MeshOptions
    settings: dict[str, ServiceSettings]
    services: dict[str, RunningService]

    def target(self, name: str, port_field: str = "port") -> str:
        """ "host:port" of a service's listener (`port_field`: which of its ports)."""
        return f"{self.settings[name].host}:{self.services[name].ports[port_field]}"

    @property
    def targets(self) -> dict[str, str]:
        """Every service's gRPC "host:port", by name."""
        return {name: self.target(name) for name in self.services}


@asynccontextmanager
async def running_mesh(
    options: MeshOptions,
    *,
    dependencies: Mapping[str, Mapping[str, Any]] | None = None,
    telemetry: Callable[[str], Telemetry] = plain_telemetry,
) -> AsyncIterator[RunningMesh]:
    """Starts every service in catalog order, each once those it calls are
    ready; on exit stops them in reverse order (the gateway first).
    `dependencies`: per service name, what its factory takes instead of
    opening it (`{"inference": {"engine": engine}}`)."""
    dependencies = dependencies or {}
    mesh = RunningMesh(options, {}, {})
    async with AsyncExitStack() as stack:
        for spec in SERVICES:
            settings = mesh_settings(spec, options, mesh.targets)
            service_telemetry = telemetry(spec.name)
            # Registered first, so it shuts down after its service has stopped.
            stack.callback(service_telemetry.shutdown)
            factory = spec.load_factory()
            running = await stack.enter_async_context(
                factory(settings, service_telemetry, **dependencies.get(spec.name, {}))
            )
            if isinstance(running, AwaitsReadiness):
                await running.wait_ready(READY_TIMEOUT_S)
            mesh.settings[spec.name] = settings
            mesh.services[spec.name] = running
        yield mesh
