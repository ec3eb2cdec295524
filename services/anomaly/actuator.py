"""The policy's hands: auth's restriction rpc and the router's ejection rpc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from google.protobuf import duration_pb2

from maas.v1 import auth_pb2, auth_pb2_grpc, router_pb2, router_pb2_grpc
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity, channel
from services.anomaly.core import AnomalyCore
from services.anomaly.policy import Policy, PolicyRunner
from services.anomaly.settings import PolicySettings


class GrpcActuator:
    def __init__(
        self,
        settings: PolicySettings,
        auth: auth_pb2_grpc.AuthAsyncStub | None,
        router: router_pb2_grpc.RouterAsyncStub | None,
    ) -> None:
        self._timeout = settings.call_timeout_s
        self._metadata = (("authorization", f"Bearer {settings.admin_token.get_secret_value()}"),)
        self._auth = auth
        self._router = router

    async def restrict(
        self,
        *,
        subject: str,
        target: str,
        suspend: bool,
        requests_per_minute: int,
        duration_s: float,
        reason: str,
        actor: str,
        alert_id: str,
    ) -> str:
        if self._auth is None:
            raise RuntimeError("no auth address configured for the policy")
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int(duration_s * 1e9))
        request = auth_pb2.RestrictRequest(
            action=(
                auth_pb2.RESTRICTION_ACTION_SUSPEND
                if suspend
                else auth_pb2.RESTRICTION_ACTION_THROTTLE
            ),
            requests_per_minute=0 if suspend else requests_per_minute,
            duration=duration,
            reason=reason[:512],
            actor=actor,
            alert_id=alert_id,
        )
        if subject == "key":
            request.key_id = target
        else:
            request.tenant_id = target
        restriction = await self._auth.Restrict(
            request, metadata=self._metadata, timeout=self._timeout
        )
        return restriction.restriction_id

    async def eject(self, address: str, duration_s: float, reason: str) -> None:
        if self._router is None:
            raise RuntimeError("no router address configured for the policy")
        await self._router.EjectReplica(
            router_pb2.EjectReplicaRequest(address=address, duration_s=duration_s, reason=reason),
            timeout=self._timeout,
        )


@asynccontextmanager
async def running_policy(
    settings: PolicySettings,
    telemetry: Telemetry,
    core: AnomalyCore,
    security: ChannelSecurity = PLAINTEXT,
) -> AsyncIterator[PolicyRunner | None]:
    """Acts on the core's alerts while inside; None when the policy has nowhere to act."""
    if not settings.enabled:
        yield None
        return
    async with AsyncExitStack() as stack:
        auth = router = None
        if settings.auth_address:
            auth_ch = channel(settings.auth_address, telemetry, security=security)
            stack.push_async_callback(auth_ch.close)
            auth = auth_pb2_grpc.AuthStub(auth_ch)
        if settings.router_address:
            router_ch = channel(settings.router_address, telemetry, security=security)
            stack.push_async_callback(router_ch.close)
            router = router_pb2_grpc.RouterStub(router_ch)
        runner = PolicyRunner(Policy(settings), GrpcActuator(settings, auth, router), core.annotate)
        core.on_alert(runner.consider)
        runner.start()
        stack.push_async_callback(runner.aclose)
        yield runner
