"""The one place channels to other services are made: with the caller's
telemetry interceptors, so trace context and request id cross the hop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from observability.telemetry import Telemetry

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Chat histories can be long; match the servers' 16 MiB receive limit.
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Notice a dead peer on an idle long-lived stream (health watch, events).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def channel(
    target: str, telemetry: Telemetry, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[*CHANNEL_OPTIONS, *options],
        interceptors=telemetry.client_interceptors(),
    )
