"""The rest of OpenAI's surface on the gateway's HTTP face, driven by the
official `openai` package against the whole mesh: the Responses API (whole,
streamed, and through `responses.stream`), the fields clients send routinely,
`/health`, logprobs keyed by the token's text, `n` choices, and each SDK
exception class from a real refusal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from maas.v1 import auth_pb2, auth_pb2_grpc
from tests.e2e.test_openai_http import billed, openai_client
from tests.mesh import Mesh, TenantKey, set_plan

SEA: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]


@pytest_asyncio.fixture
async def client(mesh: Mesh, tenant_key: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    async with openai_client(mesh, tenant_key.api_key) as client:
        yield client


async def test_responses_create_whole(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    response = await client.responses.create(
        model=mesh.model,
        input="Tell me about the sea.",
        instructions="Answer briefly.",
        max_output_tokens=8,
        temperature=0.0,
        store=False,
        metadata={"run": "test"},
    )
    assert response.object == "response"
    assert response.output_text
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.usage is not None and response.usage.output_tokens <= 8
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if response.usage.output_tokens == 8:
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    assert await billed(mesh, tenant_key, 1) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )


async def test_responses_from_a_message_list_with_a_json_schema(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = await client.responses.create(
        model=mesh.model,
        input=[
            {"role": "developer", "content": "Reply in JSON."},
            {"role": "user", "content": [{"type": "input_text", "text": "JSON:"}]},
        ],
        max_output_tokens=40,
        temperature=0.0,
        text={"format": {"type": "json_schema", "name": "ok", "schema": schema}},
    )
    assert isinstance(json.loads(response.output_text)["ok"], bool)


async def test_responses_create_streamed_sends_the_sdks_event_sequence(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    stream = await client.responses.create(
        model=mesh.model,
        input="Tell me about the sea.",
        max_output_tokens=16,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert len(deltas) > 1
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # cut by max_output_tokens, as OpenAI says it
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.output_text == text
    assert last.response.usage is not None and last.response.usage.output_tokens == 16


async def test_responses_stream_helper_gives_the_final_response_with_usage(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    # A stop string from a greedy answer, so the streamed one completes (not cut by length).
    free = await client.responses.create(
        model=mesh.model, input="def main():", max_output_tokens=64, temperature=0.0
    )
    stop = free.output_text[2:4]
    assert stop
    async with client.responses.stream(
        model=mesh.model,
        input="def main():",
        max_output_tokens=64,
        temperature=0.0,
        extra_body={"stop": [stop]},
    ) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert free.output_text.startswith(final.output_text)
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp-1"}, "previous_response_id"),  # nothing is stored
        ({"max_output_tokens": 100_000}, "max_output_tokens"),  # the replica's, renamed
        ({"input": []}, "input"),  # the core's, renamed
    ],
)
async def test_responses_refusals_name_the_parameter(
    mesh: Mesh, client: AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": mesh.model, "input": "hi", "max_output_tokens": 2}
    request.update(fields)
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(**request)
    assert info.value.param == param


async def test_fields_clients_send_routinely_are_accepted(mesh: Mesh, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=2,
        metadata={"run": "test"},
        store=False,
        service_tier="auto",
        user="end-user-1",
        reasoning_effort="low",
        modalities=["text"],
        parallel_tool_calls=False,
        prediction={"type": "content", "content": "The sea"},
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        extra_body={"prompt_cache_key": "k", "safety_identifier": "s"},
    )
    chunks = [chunk async for chunk in reply]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

    completion = await client.completions.create(
        model=mesh.model, prompt="The sea", max_tokens=2, user="u", extra_body={"store": False}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "functions"),
    ],
)
async def test_a_field_that_would_change_the_answer_is_refused_by_name(
    mesh: Mesh, client: AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=mesh.model, messages=SEA, max_tokens=2, **fields)
    assert info.value.param == param
    assert param in info.value.message


async def test_health_on_the_http_port_needs_no_key(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.http) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("stream", [False, True])
async def test_completion_logprobs_are_keyed_by_the_tokens_text(
    mesh: Mesh, client: AsyncOpenAI, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": mesh.model,
        "prompt": "The sea is",
        "max_tokens": 8,
        "temperature": 0.0,
        "logprobs": 2,
    }
    if stream:
        chunks = [c async for c in await client.completions.create(**request, stream=True)]
        choices = [c.choices[0] for c in chunks if c.choices]
    else:
        choices = (await client.completions.create(**request)).choices
    text = "".join(c.text for c in choices)
    tokens: list[str] = []
    offsets: list[int] = []
    for choice in choices:
        if choice.logprobs is None:
            continue
        assert choice.logprobs.tokens is not None and choice.logprobs.top_logprobs is not None
        assert choice.logprobs.text_offset is not None
        tokens += choice.logprobs.tokens
        offsets += choice.logprobs.text_offset
        for top in choice.logprobs.top_logprobs:
            assert len(top) == 2 and not any(k.startswith("token_id:") for k in top)
    assert len(tokens) == 8
    assert "".join(tokens) == text
    assert offsets == [len("".join(tokens[:i])) for i in range(len(tokens))]


async def test_chat_logprobs_carry_the_tokens_text_and_bytes(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(
        model=mesh.model, messages=SEA, max_tokens=6, temperature=0.0, logprobs=True
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(e.token for e in logprobs.content) == reply.choices[0].message.content
    for entry in logprobs.content:
        assert entry.bytes == list(entry.token.encode())


async def test_n_choices_streamed_on_chat_and_completions(mesh: Mesh, client: AsyncOpenAI) -> None:
    chat = await client.chat.completions.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=6,
        n=2,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in chat]
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(texts.values()) and texts[0] != texts[1]
    finished = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(c.index for c in finished) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    whole = await client.completions.create(
        model=mesh.model,
        prompt="The sea",
        max_tokens=5,
        n=2,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in whole.choices] == [0, 1]
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    streamed = await client.completions.create(
        model=mesh.model,
        prompt="The sea",
        max_tokens=5,
        n=2,
        seed=7,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    indexes = {c.choices[0].index async for c in streamed}
    assert indexes == {0, 1}


async def test_each_refusal_is_its_sdk_exception_class(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="no-such-model", messages=SEA, max_tokens=2)
    assert not_found.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="hi", max_output_tokens=2)

    async with openai_client(mesh, "maas_nosuchkey0_notasecret") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.responses.create(model=mesh.model, input="hi", max_output_tokens=2)

    # A key that may read usage but not generate.
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        reader = await auth_pb2_grpc.AuthStub(ch).CreateApiKey(
            auth_pb2.CreateApiKeyRequest(
                tenant_id=tenant_key.tenant_id, name="reader", scopes=["usage:read"]
            ),
            metadata=admin,
        )
    async with openai_client(mesh, reader.api_key) as reading:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await reading.chat.completions.create(model=mesh.model, messages=SEA, max_tokens=2)
    assert denied.value.status_code == 403

    await set_plan(mesh, tenant_key.tenant_id, auth_pb2.Plan(requests_per_minute=1))
    await client.responses.create(model=mesh.model, input="hi", max_output_tokens=2)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model=mesh.model, input="hi", max_output_tokens=2)
    assert int(limited.value.response.headers["retry-after"]) > 0
