"""The reservation counts what the chat template renders into the prompt:
the tools' schemas and the history's tool calls, not only the turns' text.
Otherwise a tenant could send a prompt of schemas and reserve for a "hi"."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.quota import BYTES_PER_TOKEN, estimate_split
from maas.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2_grpc, generation_pb2
from services.mesh import MeshOptions, running_mesh

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
# Within every tool bound (128 tools, 1024-character descriptions), together
# about 40 KB of schema: over ten thousand prompt tokens.
BIG_TOOLS = [
    generation_pb2.Tool(
        name=f"lookup_{i}",
        description="d" * 1000,
        parameters=json.dumps({"type": "object", "properties": {"q": {"type": "string"}}}),
    )
    for i in range(32)
]
SCHEMA_BYTES = sum(len(t.name) + len(t.description) + len(t.parameters) for t in BIG_TOOLS)
TOKENS_PER_MINUTE = 2000


def chat(*tools: generation_pb2.Tool) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=MODEL,
        messages=generation_pb2.ChatMessages(
            messages=[generation_pb2.ChatMessage(role="user", content="hi")]
        ),
        max_tokens=8,
        tools=list(tools),
    )


def test_the_tools_schemas_count_as_prompt() -> None:
    bare, bare_completion = estimate_split(chat(), 1024)
    tooled, tooled_completion = estimate_split(chat(*BIG_TOOLS), 1024)
    assert tooled - bare >= SCHEMA_BYTES // BYTES_PER_TOKEN
    assert tooled_completion == bare_completion == 8


def test_a_history_s_tool_calls_and_the_named_function_count_as_prompt() -> None:
    arguments = json.dumps({"q": "x" * 9000})
    call = generation_pb2.ToolCall(id="call_1", name="lookup_0", arguments=arguments)
    history = chat(*BIG_TOOLS[:1])
    history.messages.messages.extend(
        [
            generation_pb2.ChatMessage(role="assistant", tool_calls=[call]),
            generation_pb2.ChatMessage(role="tool", content="ok", tool_call_id="c" * 256),
        ]
    )
    bare, _ = estimate_split(chat(*BIG_TOOLS[:1]), 1024)
    with_history, _ = estimate_split(history, 1024)
    assert with_history - bare >= (9000 + 256) // BYTES_PER_TOKEN

    named = chat(*BIG_TOOLS[:1])
    named.tool_choice.function = "lookup_0"
    assert estimate_split(named, 1024)[0] > bare


async def test_large_tools_cannot_under_reserve_the_tokens_per_minute(tmp_path: Path) -> None:
    options = MeshOptions(state=tmp_path, model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            auth = auth_pb2_grpc.AuthStub(ch)
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(
                    name=f"t-{secrets.token_hex(4)}",
                    plan=auth_pb2.Plan(tokens_per_minute=TOKENS_PER_MINUTE),
                ),
                metadata=admin,
            )
            key = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
        caller = (("authorization", f"Bearer {key.api_key}"),)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            # The same chat with one small tool fits the minute's tokens...
            async for _chunk in gateway.Generate(chat(BIG_TOOLS[0]), metadata=caller):
                pass
            # ...with its schemas rendered into the prompt it never can: refused
            # before it runs (auth names the request's size against the plan),
            # not billed past the plan after.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _chunk in gateway.Generate(chat(*BIG_TOOLS), metadata=caller):
                    pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens per minute" in (refused.value.details() or "")
    # The prompt is what must shrink: a smaller max_tokens would not help.
    assert "prompt" in (refused.value.details() or "")
