"""Nothing logs prompt or completion text unless `telemetry.log_content` is on."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Literal

import grpc
import pytest
import structlog

from maas.v1 import gateway_pb2_grpc, generation_pb2, inference_pb2, inference_pb2_grpc
from observability import setup
from observability.logging import configure_logging
from observability.settings import TelemetrySettings
from services.inference.engine import Engine
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from tests.security.conftest import SecureMesh


@contextmanager
def logging_everything(
    *, log_content: bool, log_format: Literal["json", "console"] = "json"
) -> Iterator[None]:
    """Every logger at DEBUG (the engine's too) for the block; as it was after."""
    root, engine = logging.getLogger(), logging.getLogger("vllm")
    saved = (list(root.handlers), root.level, engine.level)
    configure_logging(
        "test",
        TelemetrySettings(log_level="DEBUG", log_content=log_content, log_format=log_format),
    )
    engine.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        engine.setLevel(saved[2])


def distinctive(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}-zebra-quasar"


def generation(prompt: str, **fields: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        max_tokens=24,
        ignore_eos=True,
        seed=3,
        **fields,  # type: ignore[arg-type]
    )


async def completion_text(call: AsyncIterable[generation_pb2.GenerateResponse]) -> str:
    return "".join([chunk.text async for chunk in call])


async def test_streamed_requests_leave_no_trace_of_their_text_in_the_logs_by_default(
    token_mesh: SecureMesh, capfd: pytest.CaptureFixture[str]
) -> None:
    api_key = await token_mesh.new_api_key()
    auth = (("authorization", f"Bearer {api_key}"),)
    prompt, chat, bad = distinctive("prompt"), distinctive("chat"), distinctive("bad")
    with logging_everything(log_content=False):
        structlog.get_logger("test").info("capture is live")
        async with grpc.aio.insecure_channel(token_mesh.gateway) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            request = generation(prompt, model=token_mesh.model)
            completion = await completion_text(stub.Generate(request, metadata=auth))
            chat_request = generation("", model=token_mesh.model)
            chat_request.messages.messages.add(role="user", content=chat)
            chat_completion = await completion_text(stub.Generate(chat_request, metadata=auth))
            with pytest.raises(grpc.aio.AioRpcError):
                await completion_text(
                    stub.Generate(
                        generation(bad, model=token_mesh.model, temperature=-1.0), metadata=auth
                    )
                )
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    assert "capture is live" in logs
    assert len(completion.strip()) >= 8 and len(chat_completion.strip()) >= 8
    for text in (prompt, chat, bad, completion.strip(), chat_completion.strip()):
        assert text not in logs


async def test_log_content_turns_on_a_line_with_the_prompt_and_the_completion(
    vllm_engine: Engine, capfd: pytest.CaptureFixture[str]
) -> None:
    """The same capture as above sees content once the setting is on."""
    telemetry = setup("inference", TelemetrySettings(log_content=True))
    prompt = distinctive("prompt")
    async with AsyncExitStack() as stack:
        settings = InferenceSettings(
            model=vllm_engine.model_info.name,
            port=0,
            grace_period_s=1.0,
            # One message per delta, as this test has always read them.
            stream_messages_per_s=0,
            telemetry=TelemetrySettings(log_content=True),
        )
        server = await stack.enter_async_context(
            serving_inference(settings, telemetry, engine=vllm_engine)
        )
        with logging_everything(log_content=True):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                request = inference_pb2.InferenceGenerateRequest(
                    request=generation(prompt, model=vllm_engine.model_info.name)
                )
                completion = await completion_text(
                    inference_pb2_grpc.InferenceStub(ch).Generate(request)
                )
    telemetry.shutdown()
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    assert prompt in logs
    assert completion.strip() and completion.strip()[:8] in logs


def test_content_fields_are_redacted_unless_log_content(
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = distinctive("field")
    with logging_everything(log_content=False):
        structlog.get_logger("test").info("one", prompt=secret, completion=secret, model="m")
    off = capfd.readouterr().err
    with logging_everything(log_content=True):
        structlog.get_logger("test").info("two", prompt=secret)
    on = capfd.readouterr().err
    assert "one" in off and '"model": "m"' in off
    assert secret not in off
    assert secret in on


def test_console_tracebacks_show_local_variables_only_with_log_content(
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = distinctive("local")

    def handler(prompt: str) -> None:
        raise ValueError("the engine refused the request")

    def fail_and_log() -> None:
        try:
            handler(secret)
        except ValueError:
            structlog.get_logger("test").exception("unhandled error")

    with logging_everything(log_content=False, log_format="console"):
        fail_and_log()
    off = capfd.readouterr().err
    with logging_everything(log_content=True, log_format="console"):
        fail_and_log()
    on = capfd.readouterr().err
    assert "the engine refused the request" in off
    assert secret not in off
    assert secret in on
