"""`maas chat` against the mesh: lines piped on stdin, one streamed answer
each, and every request carrying the conversation so far."""

from __future__ import annotations

import json

import grpc

from maas.v1 import gateway_pb2_grpc, generation_pb2
from tests.e2e.cli import maas
from tests.mesh import Mesh, TenantKey


async def prompt_tokens(mesh: Mesh, api_key: str, messages: list[tuple[str, str]]) -> int:
    """What the gateway counts for these messages as one request's prompt."""
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).CountTokens(
            generation_pb2.CountTokensRequest(
                model=mesh.model,
                messages=generation_pb2.ChatMessages(
                    messages=[generation_pb2.ChatMessage(role=r, content=c) for r, c in messages]
                ),
            ),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    return int(reply.token_count)


async def test_chat_answers_each_line_with_the_history_in_context(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    flags = ["--api-key", tenant_key.api_key, "--max-tokens", "4", "--seed", "7"]
    flags += ["--temperature", "0.5", "--top-p", "0.9", "--system", "Be brief."]
    result = await maas(mesh, "chat", *flags, "--json", stdin="Hello there\nAnd the sea?\n")
    conversation = json.loads(result.stdout)
    first, second = conversation["turns"]
    assert (first["user"], second["user"]) == ("Hello there", "And the sea?")
    assert first["usage"]["completion_tokens"] == second["usage"]["completion_tokens"] == 4

    system = ("system", "Be brief.")
    alone = await prompt_tokens(mesh, tenant_key.api_key, [system, ("user", "And the sea?")])
    with_history = await prompt_tokens(
        mesh,
        tenant_key.api_key,
        [system, ("user", "Hello there"), ("assistant", first["assistant"]),
         ("user", "And the sea?")],
    )  # fmt: skip
    # The second request was the whole conversation, not the new line alone.
    assert second["usage"]["prompt_tokens"] == with_history > alone
    assert first["usage"]["prompt_tokens"] == await prompt_tokens(
        mesh, tenant_key.api_key, [system, ("user", "Hello there")]
    )


async def test_chat_streams_each_answer_and_ends_at_exit(mesh: Mesh, tenant_key: TenantKey) -> None:
    flags = ["--api-key", tenant_key.api_key, "--max-tokens", "3", "--stop", "\n\n"]
    result = await maas(mesh, "chat", *flags, stdin="one\n\ntwo\n/exit\nnever asked\n")
    # One usage line per answer on stderr; the answers themselves on stdout.
    usage_lines = [line for line in result.stderr.splitlines() if "completion tokens" in line]
    assert len(usage_lines) == 2
    assert result.stdout.count("\n") >= 2
