"""The policy's hands: auth's restriction rpc and the router's ejection rpc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from google.protobuf import duration_pb2

from maas.v1 import auth_pb2, auth_pb2_grpc, router_pb2, router_pb2_grpc
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity, channel
from services.anomaly.core import AnomalyCore
from services.anomaly.policy import Policy, PolicyRunner, RestrictionOrder
from services.anomaly.settings import PolicySettings
from services.common.balanced import balanced_options, balanced_target

# Auth refuses a reason longer than this (services/auth/restrictions.py MAX_TEXT);
# an alert's detail can run longer, and a cut reason beats a refused restriction.
REASON_LIMIT = 512


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

    async def restrict(self, order: RestrictionOrder) -> str:
        if self._auth is None:
            raise RuntimeError("no auth address configured for the policy")
        restriction = await self._auth.Restrict(
            restrict_request(order), metadata=self._metadata, timeout=self._timeout
        )
        return restriction.restriction_id

    async def eject(self, address: str, duration_s: float, reason: str) -> None:
        if self._router is None:
            raise RuntimeError("no router address configured for the policy")
        await self._router.EjectReplica(
            router_pb2.EjectReplicaRequest(address=address, duration_s=duration_s, reason=reason),
            timeout=self._timeout,
        )


def restrict_request(order: RestrictionOrder) -> auth_pb2.RestrictRequest:
    """The auth rpc's request for an order."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(order.duration_s * 1e9))
    request = auth_pb2.RestrictRequest(
        action=(
            auth_pb2.RESTRICTION_ACTION_SUSPEND
            if order.suspend
            else auth_pb2.RESTRICTION_ACTION_THROTTLE
        ),
        requests_per_minute=0 if order.suspend else order.requests_per_minute,
        duration=duration,
        reason=order.reason[:REASON_LIMIT],
        actor=order.actor,
        alert_id=order.alert_id,
    )
    if order.subject == "key":
        request.key_id = order.target
    else:
        request.tenant_id = order.target
    return request


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
            # Every auth replica, round robin; restrictions are not retried (a
            # repeated Restrict would be a second restriction in the audit trail).
            auth_target = balanced_target("policy.auth_address", settings.auth_address)
            auth_ch = channel(
                auth_target, telemetry, options=balanced_options(auth_target, ()), security=security
            )
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
