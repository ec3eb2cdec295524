"""The one place channels to other services are made: with the caller's
telemetry interceptors, so trace context and request id cross the hop, and
with the caller's transport security (TLS, its client certificate, the mesh's
service token) when it has any."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from observability.call_metadata import fixed_metadata_interceptors
from observability.telemetry import Telemetry

SERVICE_TOKEN_METADATA_KEY = "x-maas-service-token"

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Chat histories can be long; match the servers' 16 MiB receive limit.
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Notice a dead peer on an idle long-lived stream (health watch, events).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


@dataclass(frozen=True)
class ChannelSecurity:
    """How a service's channels reach other services. The default is
    plaintext with no token."""

    # TLS (with this service's certificate, for mutual TLS) when set.
    credentials: grpc.ChannelCredentials | None = None
    server_name_override: str | None = None
    # Sent as x-maas-service-token on every call when set.
    service_token: str | None = None

    def call_metadata(self) -> list[tuple[str, str]]:
        """What each call on an uninstrumented channel sends itself."""
        if self.service_token is None:
            return []
        return [(SERVICE_TOKEN_METADATA_KEY, self.service_token)]


PLAINTEXT = ChannelSecurity()


def channel(
    target: str,
    telemetry: Telemetry,
    options: Sequence[tuple[str, Any]] = (),
    security: ChannelSecurity = PLAINTEXT,
    *,
    instrumented: bool = True,
) -> grpc.aio.Channel:
    """`instrumented=False`: no interceptors at all; each call sends its trace
    context, request id and service token itself (see client_spans.py)."""
    interceptors = telemetry.client_interceptors() if instrumented else []
    if instrumented and security.service_token is not None:
        interceptors += fixed_metadata_interceptors(
            [(SERVICE_TOKEN_METADATA_KEY, security.service_token)]
        )
    all_options = [*CHANNEL_OPTIONS, *options]
    if security.credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)
    if security.server_name_override:
        all_options.append(("grpc.ssl_target_name_override", security.server_name_override))
    return grpc.aio.secure_channel(
        target, security.credentials, options=all_options, interceptors=interceptors
    )
