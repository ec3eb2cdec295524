"""The OpenAI-compatible HTTP face of the gateway: `/v1/chat/completions`,
`/v1/completions` (streamed as server-sent events or whole), `/v1/models`,
`/v1/responses` (openai_responses_api), `/v1/embeddings` (openai_embeddings),
`/health` (http_health).

It is a second transport over the same `GatewayCore` as the gRPC API: one
path for auth, quotas, routing, metering and tracing. Both generation
endpoints are one pipeline (`GenerationEndpoint` says how they differ), and
every error goes through `openai_errors.openai_error`: OpenAI's shape with the
HTTP status OpenAI's clients act on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.trace import Tracer
from starlette.datastructures import Address
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core import Caller, GatewayCore, request_id_for_call
from gateway.http_guard import CONNECTION_GONE
from gateway.http_health import Readiness, always_ready
from gateway.openai_embeddings import embeddings_route
from gateway.openai_errors import HttpError, http_error, openai_error, request_too_large
from gateway.openai_protocol import ChatCompletionRequest, CompletionRequest, GenerationBody
from gateway.openai_requests import chat_request, completion_request
from gateway.openai_responses import ChatRendering, Collected, CompletionRendering, Writing
from gateway.openai_responses_api import ResponsesRequest, ResponsesWriting, responses_request
from gateway.openai_usage import usage_route
from maas.v1 import generation_pb2
from observability.asgi import TracingMiddleware
from observability.context import REQUEST_ID_METADATA_KEY
from services.common.errors import MeshError, NotFoundError
from services.common.generation_limits import MAX_HTTP_BODY_BYTES, MAX_HTTP_HEAD_BYTES

log = structlog.get_logger(__name__)

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    # Proxies that buffer (nginx) would hold the tokens back until the end.
    "x-accel-buffering": "no",
}

Body = TypeVar("Body", bound=GenerationBody)


@dataclass(frozen=True)
class GenerationEndpoint(Generic[Body]):
    """What one OpenAI generation endpoint has of its own; the rest is shared."""

    path: str
    # The route's name, and so its OpenAPI operation id.
    name: str
    body: type[Body]
    to_request: Callable[[Body], generation_pb2.GenerateRequest]
    rendering: type[Writing]
    # How many alternatives to each sampled token the body asks for.
    top_logprobs: Callable[[Body], int | None]


CHAT = GenerationEndpoint(
    "/v1/chat/completions",
    "chat_completions",
    ChatCompletionRequest,
    chat_request,
    ChatRendering,
    lambda body: body.top_logprobs,
)
COMPLETIONS = GenerationEndpoint(
    "/v1/completions",
    "completions",
    CompletionRequest,
    completion_request,
    CompletionRendering,
    lambda body: body.logprobs,
)
RESPONSES = GenerationEndpoint(
    "/v1/responses",
    "responses",
    ResponsesRequest,
    responses_request,
    ResponsesWriting,
    lambda body: None,
)
ENDPOINTS: tuple[GenerationEndpoint[Any], ...] = (CHAT, COMPLETIONS, RESPONSES)


def create_app(
    core: GatewayCore,
    tracer: Tracer,
    *,
    max_body_bytes: int = MAX_HTTP_BODY_BYTES,
    not_ready: Readiness = always_ready,
) -> ASGIApp:
    """The HTTP face as an ASGI app, traced like the gRPC side. No body is
    read before its key is accepted, nor past `max_body_bytes`. `/health`
    answers 503 naming what `not_ready` names."""
    app = FastAPI(
        title="MaaS gateway: OpenAI-compatible API",
        # The interactive docs load their scripts from a CDN; /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    # One handler for all: Starlette picks a handler by class, and one for
    # Exception runs outside the others (Starlette logs that exception itself).
    for error_class in (MeshError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(error_class, _error_response_for)
    for endpoint in ENDPOINTS:
        app.add_api_route(
            endpoint.path,
            _generation_route(core, endpoint),
            methods=["POST"],
            name=endpoint.name,
            response_model=None,
        )

    app.add_api_route(
        "/v1/embeddings",
        embeddings_route(core, caller_of),
        methods=["POST"],
        name="embeddings",
        response_model=None,
    )

    app.add_api_route(
        "/v1/usage",
        usage_route(core, caller_of),
        methods=["GET"],
        name="usage",
        response_model=None,
    )

    @app.get("/health")
    async def health() -> Response:
        missing = not_ready()
        if missing:
            return JSONResponse({"status": "unavailable", "not_ready": missing}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        models = await core.list_models(caller_of(request))
        return {"object": "list", "data": [_model_object(m) for m in models]}

    # `:path`: hub model names hold a slash ("org/model").
    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        for model in await core.list_models(caller_of(request)):
            if model.name == name:
                return _model_object(model)
        raise NotFoundError(f"model {name!r} is not served here")

    return TracingMiddleware(GuardedBodies(app, core, max_body_bytes), tracer)


def _generation_route(core: GatewayCore, endpoint: GenerationEndpoint[Body]) -> Callable[..., Any]:
    async def generate(body: Body, request: Request) -> Response:
        _record_end_user(body.user)
        rendering = endpoint.rendering(
            request_id=request_id_for_call(),
            model=body.model,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            top_logprobs=endpoint.top_logprobs(body) or 0,
        )
        generate = endpoint.to_request(body)
        rendering.requested(body)
        return GenerationResponse(core, caller_of(request), generate, rendering, body.stream)

    # FastAPI reads the body's model (validation, OpenAPI schema) from the annotation.
    generate.__annotations__["body"] = endpoint.body
    return generate


class GuardedBodies:
    """What a request with a body costs before the endpoint sees it: its
    declared size is checked first (413), then its key (401, and reported as
    any refused key is), and only then is the body read, and cut off at the
    limit whatever Content-Length said (a chunked body says nothing). Nothing
    is read from the socket before that: uvicorn stops reading a body nobody
    receives, and closes the connection after a refusal."""

    def __init__(self, app: ASGIApp, core: GatewayCore, max_body_bytes: int) -> None:
        self._app = app
        self._core = core
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        # h11 bounds the head it buffers; this bounds what one that arrived whole may hold.
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HTTP_HEAD_BYTES:
            await _send_error_response(
                send,
                request_too_large(
                    431, f"request headers: over the limit of {MAX_HTTP_HEAD_BYTES} bytes"
                ),
            )
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max):
            await self._refuse_size(send)
            return
        try:
            await self._core.authenticate(caller_of(request), "generate")
        except MeshError as err:
            await _send_error_response(send, http_error(err))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Gone before the body ended: nothing to answer.
                return
            body += message.get("body", b"")
            if len(body) > self._max:
                await self._refuse_size(send)
                return
            if not message.get("more_body", False):
                break
        await self._app(scope, _replaying(bytes(body), receive), send)

    async def _refuse_size(self, send: Send) -> None:
        await _send_error_response(
            send, request_too_large(413, f"request body: over the limit of {self._max} bytes")
        )


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read given back first, whole."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error_response(send: Send, error: HttpError) -> None:
    body = json.dumps(error.body, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), *error.headers.items()]
    await _send_whole(send, error.status, headers, body)


def caller_of(request: Request) -> Caller:
    return Caller(
        credentials=request.headers.get("authorization"),
        peer=_peer(request.client),
        client_request_id=request.headers.get(REQUEST_ID_METADATA_KEY),
        gone=request.scope.get("state", {}).get(CONNECTION_GONE),
        request_bytes=_declared_length(request),
    )


def _declared_length(request: Request) -> int:
    """The body's Content-Length (the guard has bounded it before the body is
    read); 0 when absent or not a number."""
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() else 0


def _peer(client: Address | None) -> str:
    """The client's address in gRPC's peer form, so anomaly reads both alike."""
    if client is None:
        return ""
    if ":" in client.host:
        return f"ipv6:[{client.host}]:{client.port}"
    return f"ipv4:{client.host}:{client.port}"


def _record_end_user(user: str | None) -> None:
    if user:
        trace.get_current_span().set_attribute("maas.end_user", user)


_KIND_NAMES = {
    generation_pb2.MODEL_KIND_CHAT: "chat",
    generation_pb2.MODEL_KIND_COMPLETION: "completion",
    generation_pb2.MODEL_KIND_EMBEDDING: "embedding",
}


def _model_object(model: generation_pb2.ModelInfo) -> dict[str, Any]:
    """OpenAI's model object (id, object, created, owned_by), then what the
    library says of it; `parent` and `max_model_len` as vLLM names them."""
    return {
        "id": model.name,
        "object": "model",
        # The mesh does not know when a model was made; when it was listed is honest.
        "created": int(time.time()),
        # A replica that predates owners is the mesh's own.
        "owned_by": model.owner or "maas",
        "kind": _KIND_NAMES.get(model.kind),
        "max_model_len": model.max_context_length,
        "description": model.description,
        "parent": model.base_model or None,
        "adapters": list(model.adapters),
        "pricing": _pricing(model),
    }


def _pricing(model: generation_pb2.ModelInfo) -> dict[str, Any] | None:
    """The price in force in micro-units per million tokens; `unpriced` when
    the book has none; None when the book could not be read."""
    if model.unpriced:
        return {"unpriced": True}
    if not model.HasField("price"):
        return None
    price = model.price
    return {
        "unpriced": False,
        "currency": price.currency,
        "prompt_micros_per_million": price.prompt_micros_per_million,
        "cached_prompt_micros_per_million": price.cached_prompt_micros_per_million,
        "completion_micros_per_million": price.completion_micros_per_million,
        "effective_at": price.effective_time.seconds,
    }


def _error_response(error: HttpError) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


class GenerationResponse(Response):
    """Runs one generation and writes it: as server-sent events when streamed,
    else as one body. An error before the first chunk gets its own HTTP status;
    one after it (headers are out) ends the stream with an `error` event.

    The generation runs in a task of its own that owns the core's stream from
    opening to closing (the trace context of its downstream calls must not
    cross tasks), and that task is cancelled when the client disconnects:
    disconnect is abort, down to the engine."""

    def __init__(
        self,
        core: GatewayCore,
        caller: Caller,
        request: generation_pb2.GenerateRequest,
        rendering: Writing,
        stream: bool,
    ) -> None:
        super().__init__()
        self._core = core
        self._caller = caller
        self._request = request
        self._rendering = rendering
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with asyncio.TaskGroup() as tasks:
            writing = tasks.create_task(self._write(send))
            watching = tasks.create_task(_cancel_on_disconnect(receive, writing))
            writing.add_done_callback(lambda _: watching.cancel())

    async def _write(self, send: Send) -> None:
        streaming = False  # once the event stream's head is out, an error goes into it
        try:
            async with aclosing(self._core.generate(self._caller, self._request)) as chunks:
                first = await anext(chunks)
                if not self._stream:
                    await self._send_body(send, first, chunks)
                    return
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": _encoded(list(SSE_HEADERS.items())),
                    }
                )
                streaming = True
                await self._send_events(send, first, chunks)
        except Exception as exc:
            if not isinstance(exc, MeshError):
                message = "generation failed mid-stream" if streaming else "generation failed"
                log.exception(message, exc_info=exc)
            error = openai_error(exc, self._rendering.params)
            if not streaming:
                await _send_error_response(send, error)
                return
            for event in self._rendering.failure(error.body):
                await _send_part(send, event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_body(
        self,
        send: Send,
        first: generation_pb2.GenerateResponse,
        rest: AsyncGenerator[generation_pb2.GenerateResponse, None],
    ) -> None:
        collected = Collected()
        collected.add(first)
        async for chunk in rest:
            collected.add(chunk)
        body = json.dumps(self._rendering.body(collected), separators=(",", ":")).encode()
        await _send_whole(send, 200, [("content-type", "application/json")], body)

    async def _send_events(
        self,
        send: Send,
        first: generation_pb2.GenerateResponse,
        rest: AsyncGenerator[generation_pb2.GenerateResponse, None],
    ) -> None:
        rendering = self._rendering
        for event in rendering.events(first):
            await _send_part(send, event)
        usage = first.usage
        async for chunk in rest:
            usage = chunk.usage
            for event in rendering.events(chunk):
                await _send_part(send, event)
        for event in rendering.closing(usage):
            await _send_part(send, event)


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[None]) -> None:
    # The body was read before the endpoint ran; what comes now is the end.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


def _encoded(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(key.encode("latin-1"), value.encode("latin-1")) for key, value in headers]


async def _send_whole(
    send: Send, status: int, headers: Sequence[tuple[str, str]], body: bytes
) -> None:
    all_headers = [*headers, ("content-length", str(len(body)))]
    await send({"type": "http.response.start", "status": status, "headers": _encoded(all_headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_part(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _error_response_for(request: Request, exc: Exception) -> Response:
    return _error_response(openai_error(exc))
