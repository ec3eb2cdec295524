"""`/health` on the HTTP port: no key, nothing called; 503 naming the
channels that cannot carry a call, read from real gRPC channels' state."""

from __future__ import annotations

import socket
from typing import cast

import grpc
import httpx
from opentelemetry.sdk.trace import TracerProvider

from gateway.core import GatewayCore
from gateway.http_health import Readiness, channels_readiness
from gateway.openai_http import create_app
from tests.support import eventually


def client(not_ready: Readiness) -> httpx.AsyncClient:
    # No core: /health must not touch it (a call on None would fail the test).
    app = create_app(
        cast(GatewayCore, None), TracerProvider().get_tracer("test"), not_ready=not_ready
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_health_is_200_without_a_key_while_the_channels_can_carry_calls() -> None:
    async with client(lambda: []) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_health_is_503_naming_a_channel_whose_peer_is_gone() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}") as router:
        not_ready = channels_readiness({"router": router})
        # Asking starts the connection; its refusal puts the channel in TRANSIENT_FAILURE.
        await eventually(lambda: not_ready() == ["router"])
        async with client(not_ready) as http:
            response = await http.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "not_ready": ["router"]}
