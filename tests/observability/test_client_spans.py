"""A call on an uninstrumented channel, traced by hand (client_spans.py),
reaches the server as an instrumented one does: the client span is the
parent of the server's, the request id and service token travel with it,
and a refused call marks the client span with its status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from observability import setup
from observability.channels import SERVICE_TOKEN_METADATA_KEY, ChannelSecurity, channel
from observability.client_spans import ClientSpans
from observability.context import REQUEST_ID_METADATA_KEY, bind_request, clear_request
from observability.settings import TelemetrySettings

Context = grpc.aio.ServicerContext[bytes, bytes]
ECHO = "/test.Echo/Echo"
REFUSE = "/test.Echo/Refuse"
TOKEN = "s" * 32


def _identity(payload: bytes) -> bytes:
    return payload


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    """A traced server whose Echo answers the metadata it got, one
    `key=value` a line, and whose Refuse answers PERMISSION_DENIED."""
    spans = InMemorySpanExporter()
    telemetry = setup("callee", TelemetrySettings(), span_exporter=spans)

    async def echo(request: bytes, context: Context) -> bytes:
        pairs = context.invocation_metadata() or ()
        return "\n".join(f"{k}={v!s}" for k, v in pairs if isinstance(v, str)).encode()

    async def refuse(request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        raise AssertionError("abort returns never")

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
        for name, fn in (("Echo", echo), ("Refuse", refuse))
    }
    srv = grpc.aio.server(interceptors=telemetry.server_interceptors())
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}", spans
    finally:
        await srv.stop(None)
        telemetry.shutdown()


async def test_a_call_traced_by_hand_is_one_trace_with_its_ids(
    server: tuple[str, InMemorySpanExporter],
) -> None:
    address, callee_spans = server
    caller_spans = InMemorySpanExporter()
    telemetry = setup("caller", TelemetrySettings(), span_exporter=caller_spans)
    security = ChannelSecurity(service_token=TOKEN)
    spans = ClientSpans(telemetry.tracer(), security.call_metadata())
    ch = channel(address, telemetry, security=security, instrumented=False)
    echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(ECHO)
    refuse: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(REFUSE)
    try:
        bind_request("req-by-hand")
        with telemetry.tracer().start_as_current_span("caller-work"):
            with spans.call(ECHO) as metadata:
                seen = await echo(b"", metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError), spans.call(REFUSE) as metadata:
                await refuse(b"", metadata=metadata)
    finally:
        clear_request()
        await ch.close()
        telemetry.shutdown()

    sent = dict(line.split("=", 1) for line in seen.decode().splitlines())
    assert sent[REQUEST_ID_METADATA_KEY] == "req-by-hand"
    assert sent[SERVICE_TOKEN_METADATA_KEY] == TOKEN
    client = {s.name: s for s in caller_spans.get_finished_spans() if s.kind == SpanKind.CLIENT}
    served = {s.name: s for s in callee_spans.get_finished_spans() if s.kind == SpanKind.SERVER}
    work = next(s for s in caller_spans.get_finished_spans() if s.name == "caller-work")
    assert work.context is not None
    for method in (ECHO, REFUSE):
        caller_parent, callee_parent = client[method].parent, served[method].parent
        assert caller_parent is not None and callee_parent is not None
        assert client[method].context is not None and served[method].context is not None
        assert caller_parent.span_id == work.context.span_id
        assert callee_parent.span_id == client[method].context.span_id
        assert served[method].context.trace_id == work.context.trace_id
    assert client[ECHO].status.status_code == StatusCode.UNSET
    assert client[REFUSE].status.status_code == StatusCode.ERROR
    attributes = client[REFUSE].attributes
    assert attributes is not None
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
