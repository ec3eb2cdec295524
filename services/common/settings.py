"""The base of every service's settings: flags over `MAAS_*` env over defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from observability.settings import TelemetrySettings


class TlsSettings(BaseModel):
    """Transport security, embedded in every service's settings as `tls`
    (`--tls.cert`, `MAAS_ROUTER_TLS__CERT`). Unset: plaintext."""

    # PEM certificate chain and key: the listener serves TLS with them, and
    # channels present them as the client certificate (mutual TLS).
    cert: Path | None = None
    key: Path | None = None
    # PEM CA bundle that signs the mesh: channels verify servers with it (the
    # system roots when unset) and, with require_client_cert, the listener
    # verifies callers with it.
    ca: Path | None = None
    # Mutual TLS on the listener: a caller without a certificate signed by
    # `ca` fails the handshake, so every call comes from inside the mesh.
    require_client_cert: bool = False
    # The name to check the server certificate for, when it is not the host
    # being dialled (certificates issued for a service name, dialled by IP).
    server_name_override: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        if self.require_client_cert and (self.ca is None or self.cert is None):
            raise ValueError("tls.require_client_cert needs tls.ca, tls.cert and tls.key")
        return self

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    @property
    def dials_tls(self) -> bool:
        return self.cert is not None or self.ca is not None


def is_loopback(host: str) -> bool:
    """Whether a listener bound to `host` is reachable from this machine only
    (an unspecified address such as 0.0.0.0, or any other name, is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set their own `env_prefix`."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")
    # An internal service answers only the mesh, so beyond loopback it must be
    # able to tell the mesh apart: the public gateway sets this False.
    mesh_only: ClassVar[bool] = True

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    # Longer than any in-flight stream's tail should need, shorter than compose's stop grace.
    grace_period_s: float = Field(default=10.0, ge=0)
    telemetry: TelemetrySettings = TelemetrySettings()
    tls: TlsSettings = TlsSettings()
    # Shared by the services of one mesh: sent on every call to another
    # service, and required (unless the caller has a mesh client certificate)
    # by auth, router, inference and anomaly. Pass it by env, not flag: flags
    # show in `ps`.
    service_token: SecretStr | None = Field(
        default=None, min_length=16, description="the mesh's shared service token"
    )

    @model_validator(mode="after")
    def _guarded_beyond_loopback(self) -> Self:
        if (
            self.mesh_only
            and not is_loopback(self.host)
            and self.service_token is None
            and not self.tls.require_client_cert
        ):
            raise ValueError(
                f"host {self.host!r} is beyond loopback: an internal service listens there only "
                "with a service_token or mutual TLS (tls.require_client_cert), else anyone who "
                "reaches the port could call it"
            )
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def listening_ports(self) -> set[int]:
        """Every fixed port the service listens on: gRPC, metrics, and any
        other face a subclass adds (the deploy checks read them here)."""
        ports = {self.port}
        if self.telemetry.prometheus_port:
            ports.add(self.telemetry.prometheus_port)
        return ports

    @classmethod
    def from_cli(cls, argv: list[str] | None = None) -> Self:
        """Settings from command-line flags (`--port 50051`), then env, then defaults."""
        return cls(
            _cli_parse_args=argv if argv is not None else True,
            _cli_kebab_case=True,
            _cli_implicit_flags=True,
        )
