"""Internal services answer only the mesh: a call must carry the mesh's
service token or come over mutual TLS from a peer whose client certificate
the listener verified against the mesh CA. A tenant's API key alone is
useless against them.

One server interceptor, innermost (its refusal goes through the error-mapping
layer). The token is checked once per call from the call's metadata; only a
call without it pays for a wrapper that looks at the peer's certificate, and
that wrapper adds nothing per streamed message."""

from __future__ import annotations

import hmac
from collections.abc import Collection
from typing import Any

import grpc

from observability.channels import SERVICE_TOKEN_METADATA_KEY
from observability.handlers import Behavior, CachedRewrap, Continuation
from services.common.errors import UnauthenticatedError

# Probes (health) and tools (reflection) must reach every service.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class MeshOnlyInterceptor(grpc.aio.ServerInterceptor):
    """Admits calls that carry `service_token` (compared in constant time) or
    come from a peer with a verified client certificate; answers the rest
    UNAUTHENTICATED. `self_guarded` names methods (`/pkg.Service/Method`) that
    check a credential of their own and stay reachable without either (auth's
    admin rpcs take the admin bearer token, which the operator's CLI holds)."""

    def __init__(self, service_token: str, *, self_guarded: Collection[str] = ()) -> None:
        self._token = service_token.encode()
        self._self_guarded = frozenset(self_guarded)
        self._rewrap = CachedRewrap(_unary_needs_peer_cert, _stream_needs_peer_cert)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            method.startswith(OPEN_METHOD_PREFIXES)
            or method in self._self_guarded
            or self._carries_token(handler_call_details.invocation_metadata)
        ):
            return handler
        # Only the call's own context knows the peer's certificate.
        return self._rewrap(handler)

    def _carries_token(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == SERVICE_TOKEN_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._token)
        return False


def _require_peer_cert(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # grpc only asks for a client certificate on a listener that requires one,
    # and then verifies it against the mesh CA during the handshake: a peer
    # identity in the auth context is a mesh certificate.
    if context.peer_identities() is None:
        raise UnauthenticatedError(
            "this service answers only the mesh: send the service token or a mesh client "
            "certificate"
        )


def _unary_needs_peer_cert(behavior: Behavior) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _require_peer_cert(context)
        return await behavior(request, context)

    return wrapped


def _stream_needs_peer_cert(behavior: Behavior) -> Behavior:
    # A plain function handing back the handler's own stream: the layers
    # outside iterate it directly.
    def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _require_peer_cert(context)
        return behavior(request, context)

    return wrapped
