"""One call is one trace across two in-process services, each with its own
providers: the client span of A is the parent of B's server span, the request
id travels with it, and a streaming handler keeps its span current."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from observability import Telemetry, setup
from observability.channels import channel
from observability.context import REQUEST_ID_METADATA_KEY, current_request_id
from observability.settings import TelemetrySettings
from tests.support import eventually

Context = grpc.aio.ServicerContext[bytes, bytes]
REQUEST_ID = "req-hops-1"
CHUNKS = 4


@dataclass(frozen=True)
class Seen:
    """What a handler saw of its context at one point."""

    where: str
    request_id: str | None
    trace_id: int
    span_id: int
    request_ids_in_metadata: tuple[str, ...] = ()
    has_traceparent: bool = False


def _seen(where: str, context: Context | None = None) -> Seen:
    span_context = trace.get_current_span().get_span_context()
    metadata = tuple(context.invocation_metadata() or ()) if context else ()
    return Seen(
        where=where,
        request_id=current_request_id(),
        trace_id=span_context.trace_id,
        span_id=span_context.span_id,
        request_ids_in_metadata=tuple(
            str(value) for key, value in metadata if key == REQUEST_ID_METADATA_KEY
        ),
        has_traceparent=any(key == "traceparent" for key, _ in metadata),
    )


def _unary(ch: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return ch.unary_unary(method)


def _stream(ch: grpc.aio.Channel, method: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return ch.unary_stream(method)


@dataclass
class Pair:
    a_target: str
    a_spans: InMemorySpanExporter
    b_spans: InMemorySpanExporter
    seen: list[Seen] = field(default_factory=list)

    def where(self, where: str) -> list[Seen]:
        return [s for s in self.seen if s.where == where]


def _b_handlers(seen: list[Seen]) -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: Context) -> bytes:
        seen.append(_seen("b.echo", context))
        return (current_request_id() or "").encode()

    async def count(request: bytes, context: Context) -> AsyncIterator[bytes]:
        seen.append(_seen("b.count.start", context))
        for i in range(CHUNKS):
            # Across both a yield and a real suspension of the task.
            await asyncio.sleep(0.001)
            seen.append(_seen("b.count.chunk"))
            yield str(i).encode()
        seen.append(_seen("b.count.end"))

    return grpc.method_handlers_generic_handler(
        "test.B",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


def _a_handlers(seen: list[Seen], to_b: grpc.aio.Channel) -> grpc.GenericRpcHandler:
    b_echo = _unary(to_b, "/test.B/Echo")
    b_count = _stream(to_b, "/test.B/Count")

    async def echo(request: bytes, context: Context) -> bytes:
        seen.append(_seen("a.echo", context))
        return await b_echo(request)

    async def echo_own_id(request: bytes, context: Context) -> bytes:
        return await b_echo(request, metadata=((REQUEST_ID_METADATA_KEY, "set-by-a"),))

    async def count(request: bytes, context: Context) -> AsyncIterator[bytes]:
        async for chunk in b_count(request):
            seen.append(_seen("a.count.chunk"))
            yield chunk

    return grpc.method_handlers_generic_handler(
        "test.A",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "EchoOwnId": grpc.unary_unary_rpc_method_handler(echo_own_id),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


async def _serve(
    telemetry: Telemetry, handler: grpc.GenericRpcHandler
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=telemetry.server_interceptors())
    server.add_generic_rpc_handlers([handler])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[Pair]:
    a_spans, b_spans = InMemorySpanExporter(), InMemorySpanExporter()
    a_tel = setup("svc-a", TelemetrySettings(), span_exporter=a_spans)
    b_tel = setup("svc-b", TelemetrySettings(), span_exporter=b_spans)
    seen: list[Seen] = []
    b_server, b_target = await _serve(b_tel, _b_handlers(seen))
    to_b = channel(b_target, a_tel)
    a_server, a_target = await _serve(a_tel, _a_handlers(seen, to_b))
    try:
        yield Pair(a_target, a_spans, b_spans, seen)
    finally:
        await a_server.stop(None)
        await to_b.close()
        await b_server.stop(None)
        a_tel.shutdown()
        b_tel.shutdown()


def _one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, f"{len(found)} {kind.name} spans named {name}: {spans}"
    return found[0]


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _assert_one_trace_across_the_hop(pair: Pair, a_method: str, b_method: str) -> None:
    a_server = _one(pair.a_spans.get_finished_spans(), a_method, SpanKind.SERVER)
    a_client = _one(pair.a_spans.get_finished_spans(), b_method, SpanKind.CLIENT)
    b_server = _one(pair.b_spans.get_finished_spans(), b_method, SpanKind.SERVER)

    assert len({_trace_id(a_server), _trace_id(a_client), _trace_id(b_server)}) == 1
    # B's server span <- A's client span <- A's server span (the root: the test
    # calls A without telemetry).
    assert _parent_id(b_server) == _span_id(a_client)
    assert b_server.parent is not None and b_server.parent.is_remote
    assert _parent_id(a_client) == _span_id(a_server)
    assert a_server.parent is None

    for span in (a_server, a_client):
        assert span.resource.attributes["service.name"] == "svc-a"
    assert b_server.resource.attributes["service.name"] == "svc-b"


async def test_unary_call_is_one_trace_with_one_request_id(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.a_target) as ch:
        reply = await _unary(ch, "/test.A/Echo")(
            b"hi", metadata=((REQUEST_ID_METADATA_KEY, REQUEST_ID),)
        )

    assert reply == REQUEST_ID.encode()
    await eventually(lambda: len(pair.b_spans.get_finished_spans()) == 1)
    _assert_one_trace_across_the_hop(pair, "/test.A/Echo", "/test.B/Echo")

    [a_seen] = pair.where("a.echo")
    [b_seen] = pair.where("b.echo")
    assert a_seen.request_id == b_seen.request_id == REQUEST_ID
    assert b_seen.request_ids_in_metadata == (REQUEST_ID,)
    # The hop speaks W3C trace context.
    assert b_seen.has_traceparent
    # Inside each handler the current span is that service's server span.
    b_server = _one(pair.b_spans.get_finished_spans(), "/test.B/Echo", SpanKind.SERVER)
    a_server = _one(pair.a_spans.get_finished_spans(), "/test.A/Echo", SpanKind.SERVER)
    assert b_seen.span_id == _span_id(b_server)
    assert a_seen.span_id == _span_id(a_server)


async def test_streaming_call_keeps_its_span_current_and_crosses_the_hop(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.a_target) as ch:
        call = _stream(ch, "/test.A/Count")(b"", metadata=((REQUEST_ID_METADATA_KEY, REQUEST_ID),))
        chunks = [chunk async for chunk in call]

    assert chunks == [str(i).encode() for i in range(CHUNKS)]
    await eventually(lambda: len(pair.a_spans.get_finished_spans()) == 2)
    _assert_one_trace_across_the_hop(pair, "/test.A/Count", "/test.B/Count")

    b_server = _one(pair.b_spans.get_finished_spans(), "/test.B/Count", SpanKind.SERVER)
    a_server = _one(pair.a_spans.get_finished_spans(), "/test.A/Count", SpanKind.SERVER)
    b_seen = pair.where("b.count.start") + pair.where("b.count.chunk") + pair.where("b.count.end")
    a_seen = pair.where("a.count.chunk")
    assert len(b_seen) == CHUNKS + 2
    assert len(a_seen) == CHUNKS
    # Before the first yield, after every resume, and after the last one.
    assert {s.span_id for s in b_seen} == {_span_id(b_server)}
    assert {s.span_id for s in a_seen} == {_span_id(a_server)}
    assert {s.request_id for s in (*a_seen, *b_seen)} == {REQUEST_ID}
    assert pair.where("b.count.start")[0].has_traceparent


async def test_a_request_id_the_caller_sets_is_kept(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.a_target) as ch:
        reply = await _unary(ch, "/test.A/EchoOwnId")(
            b"", metadata=((REQUEST_ID_METADATA_KEY, REQUEST_ID),)
        )

    assert reply == b"set-by-a"
    [b_seen] = pair.where("b.echo")
    assert b_seen.request_ids_in_metadata == ("set-by-a",)


async def test_no_request_id_leaks_into_a_call_that_has_none(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.a_target) as ch:
        await _unary(ch, "/test.A/Echo")(b"", metadata=((REQUEST_ID_METADATA_KEY, "first"),))
        reply = await _unary(ch, "/test.A/Echo")(b"")

    assert reply == b""
    assert [s.request_id for s in pair.where("b.echo")] == ["first", None]
    assert [s.request_ids_in_metadata for s in pair.where("b.echo")] == [("first",), ()]


async def test_coroutine_style_streaming_handlers_are_traced(pair: Pair) -> None:
    """grpc's own health Watch writes with context.write instead of yielding;
    the OTel wrapper alone would fail to iterate it."""
    async with grpc.aio.insecure_channel(pair.a_target) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

    def watch_spans() -> list[ReadableSpan]:
        return [
            s for s in pair.a_spans.get_finished_spans() if s.name == "/grpc.health.v1.Health/Watch"
        ]

    await eventually(lambda: len(watch_spans()) == 1)


def test_setup_puts_w3c_trace_context_on_the_wire() -> None:
    configured = propagate.get_global_textmap()
    # As if OTEL_PROPAGATORS named only a propagator without traceparent.
    propagate.set_global_textmap(CompositePropagator([]))
    try:
        setup("svc-w3c", TelemetrySettings()).shutdown()
        assert "traceparent" in propagate.get_global_textmap().fields
    finally:
        propagate.set_global_textmap(configured)
    # The default one is left as it is.
    setup("svc-w3c", TelemetrySettings()).shutdown()
    assert propagate.get_global_textmap() is configured
