"""A service's transport security from its settings: TLS credentials for its
listener and its channels, and whether its listener answers only the mesh.
Certificate files are read here, at start-up, so a bad path fails the start."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from observability.channels import ChannelSecurity
from services.common.mesh_only import MeshOnlyInterceptor
from services.common.settings import ServiceSettings, TlsSettings


@dataclass(frozen=True)
class ServerSecurity:
    """How a listener is secured; the default is plaintext, open to anyone."""

    credentials: grpc.ServerCredentials | None = None
    mutual_tls: bool = False
    # Mesh-only when set: calls must carry it or a verified client certificate.
    service_token: str | None = None
    self_guarded: frozenset[str] = field(default_factory=frozenset)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if self.service_token is None:
            return []
        return [MeshOnlyInterceptor(self.service_token, self_guarded=self.self_guarded)]

    @property
    def transport(self) -> str:
        if self.credentials is None:
            return "plaintext"
        return "mutual-tls" if self.mutual_tls else "tls"


def _read(setting: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"tls.{setting}: cannot read {path}: {err.strerror}") from err


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS for the listener when a certificate is configured; with
    `require_client_cert`, callers must present one signed by `tls.ca`."""
    cert, key = _read("cert", tls.cert), _read("key", tls.key)
    if cert is None or key is None:
        return None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=_read("ca", tls.ca) if tls.require_client_cert else None,
        require_client_auth=tls.require_client_cert,
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """TLS for channels when a certificate or a CA is configured; the
    certificate, when there is one, goes along as the client certificate."""
    if not tls.dials_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read("ca", tls.ca),
        private_key=_read("key", tls.key),
        certificate_chain=_read("cert", tls.cert),
    )


def server_security(
    settings: ServiceSettings, *, mesh_only: bool = True, self_guarded: Collection[str] = ()
) -> ServerSecurity:
    """The listener's security. `mesh_only=False` for public listeners (the
    gateway): TLS if configured, but no service token asked of callers."""
    token = settings.service_token
    return ServerSecurity(
        credentials=server_credentials(settings.tls),
        mutual_tls=settings.tls.require_client_cert,
        service_token=token.get_secret_value() if token is not None and mesh_only else None,
        self_guarded=frozenset(self_guarded),
    )


def channel_security(settings: ServiceSettings) -> ChannelSecurity:
    """What this service's channels to other services use."""
    token = settings.service_token
    return ChannelSecurity(
        credentials=channel_credentials(settings.tls),
        server_name_override=settings.tls.server_name_override,
        service_token=token.get_secret_value() if token is not None else None,
    )
