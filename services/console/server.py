"""Builds the console: channels to the mesh, the session store, the web app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from gateway.http_server import serving_http
from observability import Telemetry
from observability.channels import channel
from services.common.security import channel_security
from services.console.app import create_app
from services.console.mesh_client import MeshClient
from services.console.sessions import Sessions
from services.console.settings import ConsoleSettings
from services.router.spec import CALLER_CHANNEL_OPTIONS


@dataclass(frozen=True)
class RunningConsole:
    port: int

    @property
    def ports(self) -> dict[str, int]:
        return {"port": self.port}


@asynccontextmanager
async def serving(settings: ConsoleSettings, telemetry: Telemetry) -> AsyncIterator[RunningConsole]:
    """Serves the console over HTTP (HTTPS with a certificate in `tls`); on
    exit lets open pages and streams finish for the grace period, then
    closes its channels."""
    async with AsyncExitStack() as stack:
        security = channel_security(settings)
        channels = {
            name: channel(address, telemetry, CALLER_CHANNEL_OPTIONS, security=security)
            for name, address in (
                ("gateway", settings.gateway_address),
                ("auth", settings.auth_address),
                ("router", settings.router_address),
                ("anomaly", settings.anomaly_address),
            )
        }
        for ch in channels.values():
            stack.push_async_callback(ch.close)
        mesh = MeshClient.over(**channels, timeout_s=settings.call_timeout_s)
        sessions = Sessions(ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions)
        app = create_app(mesh, sessions, secure_cookie=settings.cookie_secure)
        port = await stack.enter_async_context(
            serving_http(
                app,
                host=settings.host,
                port=settings.port,
                grace_s=settings.grace_period_s,
                tls=settings.tls,
            )
        )
        yield RunningConsole(port)
