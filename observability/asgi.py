"""The HTTP counterpart of the gRPC server interceptors, as ASGI middleware:
the caller's W3C trace context in, one server span per request, the request
id minted for the request (this face is the mesh's public edge: a caller's
`x-request-id` is only a label) and sent back in the response's
`x-request-id` header, the caller's own as `x-client-request-id`."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.context import (
    REQUEST_ID_METADATA_KEY,
    clear_request,
    current_client_request_id,
    edge_echo,
    enter_edge_call,
)


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self._app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        # ASGI servers lower-case header names.
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        # The request's task inherits the context of whoever started the
        # server; nothing bound there belongs to this request.
        request_id = enter_edge_call(headers.get(REQUEST_ID_METADATA_KEY))
        echo = [(k.encode(), v.encode()) for k, v in edge_echo()]
        method = scope["method"]
        with self._tracer.start_as_current_span(
            # Renamed after routing: by the route's template, one name per endpoint.
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "maas.request_id": request_id,
                "maas.client_request_id": current_client_request_id() or "",
            },
        ) as span:

            async def send_with_request_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    # By OTel's HTTP conventions a 4xx is the client's error,
                    # not the server span's.
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), *echo],
                    }
                await send(message)

            try:
                await self._app(scope, receive, send_with_request_id)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if isinstance(template, str):
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                clear_request()
