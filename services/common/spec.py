"""What a service declares about itself, read by `make run`, the deploy checks,
compose and Kubernetes, and the in-process mesh builder: nothing about a
service is learnt by parsing its code or running its `--help`."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from observability import Telemetry
from services.common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
S_contra = TypeVar("S_contra", bound=ServiceSettings, contravariant=True)


class RunningService(Protocol):
    """A started service: the ports it bound, by the name of their settings field."""

    @property
    def ports(self) -> Mapping[str, int]: ...


# sysexits' EX_SOFTWARE: the process failed, not its configuration; a
# supervisor (compose, Kubernetes, `make run`) starts a fresh one.
EXIT_SERVICE_FAILED = 70


@runtime_checkable
class FailingService(Protocol):
    """A started service that can fail for good while up (the inference
    engine dying): `failed` resolves, with why, once it has; the runner then
    stops it and exits EXIT_SERVICE_FAILED."""

    @property
    def failed(self) -> Awaitable[str]: ...


class ServiceFactory(Protocol[S_contra]):
    """Builds a service from its settings, starts it, and stops it (gracefully,
    within its grace period) when the context exits. `dependencies` are the
    parts a caller may hand in instead of having them opened from settings
    (the test session's engine); a service documents the ones it takes."""

    def __call__(
        self, settings: S_contra, telemetry: Telemetry, **dependencies: Any
    ) -> AbstractAsyncContextManager[RunningService]: ...


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    # The service's one name: in logs and telemetry, compose, Kubernetes and `make run`.
    name: str
    # What `python -m` runs.
    module: str
    settings_type: type[S]
    # Full names of the gRPC services it serves; health reports each of them.
    grpc_services: tuple[str, ...]
    # "package.module:function" of its ServiceFactory, imported only when used
    # (the inference factory pulls in vLLM).
    factory: str
    # Settings fields holding its listening ports ("port", "http_port").
    port_fields: tuple[str, ...] = ("port",)
    # Settings fields holding secrets: passed by env or file, never by flag.
    secret_fields: tuple[str, ...] = ("service_token",)
    # The services it dials, by name; their addresses are its `<name>_address`
    # fields unless `address_fields` names another.
    calls: tuple[str, ...] = ()
    # (called service, settings field path) where the address is elsewhere; a
    # list field takes every replica of the called service.
    address_fields: tuple[tuple[str, str], ...] = ()
    # Settings fields holding files of durable state: `make run` keeps them in its state directory.
    state_fields: tuple[str, ...] = ()
    # Whether tenants (not only the mesh) call it.
    public: bool = False
    # An HTTP-only service (no gRPC health): the path whose 200 on its `port`
    # says it is ready; probes ask that instead of gRPC health. "": gRPC.
    http_ready: str = ""

    @property
    def health_name(self) -> str:
        """The name readiness is reported under (its first gRPC service)."""
        return self.grpc_services[0]

    def address_field(self, called: str) -> str:
        """The settings field path holding the address of the `called` service."""
        return dict(self.address_fields).get(called, f"{called}_address")

    def env_name(self, field_path: str) -> str:
        """The variable a settings field is read from ("policy.admin_token" ->
        MAAS_ANOMALY_POLICY__ADMIN_TOKEN)."""
        return self.env_prefix + field_path.replace(".", "__").upper()

    @property
    def env_prefix(self) -> str:
        return str(self.settings_type.model_config.get("env_prefix", "")).upper()

    def load_factory(self) -> ServiceFactory[S]:
        module, _, function = self.factory.partition(":")
        factory: ServiceFactory[S] = getattr(importlib.import_module(module), function)
        return factory
