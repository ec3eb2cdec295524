"""A streaming call the client cancels while the handler waits to send (a
slow reader) ends in the call's own task: the handler's clean-up runs there,
inside its span and request, and OpenTelemetry detaches its context cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import setup
from observability.context import REQUEST_ID_METADATA_KEY, current_request_id
from observability.settings import TelemetrySettings
from tests.support import eventually

Context = grpc.aio.ServicerContext[bytes, bytes]
REQUEST_ID = "req-cancelled"


@dataclass(frozen=True)
class CleanUp:
    in_call_task: bool
    span_id: int
    request_id: str | None


async def test_a_cancelled_stream_is_closed_in_its_own_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = InMemorySpanExporter()
    telemetry = setup("svc-flood", TelemetrySettings(), span_exporter=spans)
    sent: list[int] = []
    clean_ups: list[CleanUp] = []

    async def flood(request: bytes, context: Context) -> AsyncIterator[bytes]:
        call_task = asyncio.current_task()
        try:
            # No await of its own: the only place this call can wait, and be
            # cancelled, is the send of a response, once flow control stops it.
            while True:
                sent.append(1)
                yield b"x" * 65536
        finally:
            clean_ups.append(
                CleanUp(
                    in_call_task=asyncio.current_task() is call_task,
                    span_id=trace.get_current_span().get_span_context().span_id,
                    request_id=current_request_id(),
                )
            )

    server = grpc.aio.server(interceptors=telemetry.server_interceptors())
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.S", {"Flood": grpc.unary_stream_rpc_method_handler(flood)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            flood_call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = ch.unary_stream(
                "/test.S/Flood"
            )
            call = flood_call(b"", metadata=((REQUEST_ID_METADATA_KEY, REQUEST_ID),))
            assert await call.read()
            # Stop reading until the server is stuck on flow control.
            previous = -1
            while len(sent) != previous:
                previous = len(sent)
                await asyncio.sleep(0.05)
            call.cancel()
            await eventually(lambda: len(clean_ups) == 1 and len(spans.get_finished_spans()) == 1)
    finally:
        await server.stop(None)
        telemetry.shutdown()

    [span] = spans.get_finished_spans()
    assert span.context is not None
    assert clean_ups == [
        CleanUp(in_call_task=True, span_id=span.context.span_id, request_id=REQUEST_ID)
    ]
    detach_errors = [r for r in caplog.records if r.name == "opentelemetry.context"]
    assert detach_errors == []
