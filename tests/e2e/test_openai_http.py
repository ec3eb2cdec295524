"""The gateway's OpenAI-compatible HTTP face, driven by the official `openai`
package against the whole mesh: the same auth, quotas, routing, metering and
tracing as the gRPC API, in OpenAI's shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from maas.v1 import auth_pb2
from maas_cli.client import MaasClient
from tests.mesh import Mesh, TenantKey, set_plan
from tests.support import eventually

SEA: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]


def openai_client(mesh: Mesh, api_key: str) -> AsyncOpenAI:
    # No retries: a 429 or 503 must reach the test, not be waited out.
    return AsyncOpenAI(base_url=f"{mesh.http}/v1", api_key=api_key, max_retries=0)


@pytest_asyncio.fixture
async def client(mesh: Mesh, tenant_key: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    async with openai_client(mesh, tenant_key.api_key) as client:
        yield client


async def billed(mesh: Mesh, tenant_key: TenantKey, requests: int) -> tuple[int, int]:
    """(prompt, completion) tokens in the ledger once it holds `requests` requests."""
    async with MaasClient(mesh.gateway, tenant_key.api_key) as maas:

        async def recorded() -> bool:
            return (await maas.usage()).requests == requests

        await eventually(recorded)
        summary = await maas.usage()
    return summary.prompt_tokens, summary.completion_tokens


async def test_chat_streams_in_chunks_with_the_billed_usage_last(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=16,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, "the answer should arrive as a stream, not one message"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "length" and set(finished[:-1]) == {None}

    *before, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in before)
    assert last.usage.completion_tokens == 16
    assert last.usage.total_tokens == last.usage.prompt_tokens + 16
    assert await billed(mesh, tenant_key, 1) == (last.usage.prompt_tokens, 16)


async def test_chat_without_streaming_n_choices(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=6,
        n=2,
        seed=7,
        extra_body={"ignore_eos": True},
    )

    assert reply.object == "chat.completion"
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.message.role == "assistant"
        assert choice.message.content
        assert choice.finish_reason == "length"
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 2 * 6
    assert await billed(mesh, tenant_key, 1) == (reply.usage.prompt_tokens, 12)


async def test_completions_whole_and_cut_by_a_stop_string(mesh: Mesh, client: AsyncOpenAI) -> None:
    free = await client.completions.create(
        model=mesh.model, prompt="def main():", max_tokens=64, temperature=0.0
    )
    assert free.object == "text_completion"
    text = free.choices[0].text
    assert len(text) > 4
    stop = text[2:4]

    cut = await client.completions.create(
        model=mesh.model, prompt="def main():", max_tokens=64, temperature=0.0, stop=[stop]
    )
    assert stop not in cut.choices[0].text
    assert text.startswith(cut.choices[0].text)
    assert cut.choices[0].finish_reason == "stop"


async def test_completions_stream(mesh: Mesh, client: AsyncOpenAI) -> None:
    # Enough tokens that the stream cannot be one message: the mesh coalesces
    # what a slow reader has not taken yet, and on a starved machine 12 tokens
    # once arrived as a single chunk.
    stream = await client.completions.create(
        model=mesh.model,
        prompt="import os",
        max_tokens=64,
        stream=True,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is None  # not asked for


async def test_the_event_stream_on_the_wire_is_shaped_as_openais(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    async with httpx.AsyncClient(base_url=mesh.http) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {tenant_key.api_key}"},
            json={
                "model": mesh.model,
                "messages": SEA,
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [event for event in response.text.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    *chunks, usage = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    head = {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    for chunk in chunks:
        assert set(chunk) == head and chunk["usage"] is None
        [choice] = chunk["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert set(usage) == head and usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 4


async def test_logprobs_and_a_json_schema(mesh: Mesh, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert reply.usage is not None and len(logprobs.content) == reply.usage.completion_tokens
    for entry in logprobs.content:
        assert not entry.token.startswith("token_id:") and entry.logprob <= 0
        assert len(entry.top_logprobs) == 2

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    constrained = await client.chat.completions.create(
        model=mesh.model,
        messages=[{"role": "user", "content": "JSON:"}],
        max_tokens=40,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}},
    )
    content = constrained.choices[0].message.content
    assert content is not None
    assert isinstance(json.loads(content)["ok"], bool)


async def test_models_list_and_retrieve(mesh: Mesh, client: AsyncOpenAI) -> None:
    models = [model async for model in client.models.list()]
    assert [m.id for m in models] == [mesh.model]
    assert models[0].object == "model"
    assert (await client.models.retrieve(mesh.model)).id == mesh.model
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bad_key_is_an_authentication_error(mesh: Mesh, stream: bool) -> None:
    async with openai_client(mesh, "maas_nosuchkey0_notasecret") as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(
                model=mesh.model,
                messages=SEA,
                max_tokens=2,
                stream=stream,
            )
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


async def test_over_the_plan_is_a_rate_limit_error_with_retry_after(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    await set_plan(mesh, tenant_key.tenant_id, auth_pb2.Plan(requests_per_minute=1))
    await client.chat.completions.create(model=mesh.model, messages=SEA, max_tokens=2)

    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model=mesh.model,
                messages=SEA,
                max_tokens=2,
                stream=stream,
            )
        assert info.value.status_code == 429
        assert 0 < int(info.value.response.headers["retry-after"]) <= 60
        assert info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 5.0}, "temperature"),  # the core's rule
        ({"messages": []}, "messages"),  # the core's, under the OpenAI name
        ({"top_logprobs": 3}, "top_logprobs"),  # the HTTP face's: needs logprobs
        ({"max_tokens": 100_000}, "max_tokens"),  # the replica's, through the router
        ({"n": "two"}, "n"),  # not even the right type
        ({"extra_body": {"bogus": 1}}, "bogus"),  # unknown parameters are not ignored
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
async def test_a_bad_parameter_is_a_bad_request_naming_it(
    mesh: Mesh, client: AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": mesh.model, "messages": SEA, "max_tokens": 2}
    request.update(fields)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**request)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


async def test_a_client_that_goes_away_stops_the_generation_and_is_billed(
    mesh: Mesh, tenant_key: TenantKey, client: AsyncOpenAI
) -> None:
    stream = await client.completions.create(
        model=mesh.model, prompt="Once upon a time", max_tokens=1500, stream=True
    )
    received = 0
    async for _chunk in stream:
        received += 1
        if received >= 3:
            break
    await stream.close()

    await eventually(lambda: mesh.engine.num_unfinished_requests() == 0)
    assert mesh.engine.load().running == 0
    _, completion_tokens = await billed(mesh, tenant_key, 1)
    # Billed for what was generated before the disconnect reached the engine, not for 1500.
    assert received <= completion_tokens < 1500


def _spans(mesh: Mesh, service: str, trace_id: int) -> list[ReadableSpan]:
    return [
        s
        for s in mesh.spans[service].get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id
    ]


def _one(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, f"{len(found)} {kind.name} spans named {name}"
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_an_http_request_is_one_trace_across_the_mesh_with_its_request_id(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    trace_id, caller_span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    request_id = "http-trace-1"
    response = await client.chat.completions.with_raw_response.create(
        model=mesh.model,
        messages=SEA,
        max_tokens=4,
        stream=True,
        extra_headers={
            "traceparent": f"00-{trace_id:032x}-{caller_span_id:016x}-01",
            "x-request-id": request_id,
        },
    )
    assert response.headers["x-client-request-id"] == request_id
    mesh_request_id = response.headers["x-request-id"]
    assert mesh_request_id != request_id  # minted by the mesh
    stream = response.parse()
    assert isinstance(stream, openai.AsyncStream)
    chunks: list[ChatCompletionChunk] = [chunk async for chunk in stream]
    assert chunks[0].id == f"chatcmpl-{mesh_request_id}"

    def traced(service: str, name: str) -> bool:
        return any(s.name == name for s in _spans(mesh, service, trace_id))

    # Direct routing: the router admits and picks (Route), the gateway calls the replica.
    direct = mesh.routing == "direct"
    router_rpc = "/maas.v1.Router/Route" if direct else "/maas.v1.Router/Generate"
    replica_caller = "gateway" if direct else "router"
    # Spans end as each hop closes its side of the stream, not all at once.
    await eventually(
        lambda: (
            traced("gateway", "POST /v1/chat/completions")
            and traced("gateway", router_rpc)
            and traced("router", router_rpc)
            and traced(replica_caller, "/maas.v1.Inference/Generate")
            and traced("inference", "/maas.v1.Inference/Generate")
        )
    )
    gateway = _spans(mesh, "gateway", trace_id)
    http = _one(gateway, "POST /v1/chat/completions", SpanKind.SERVER)
    assert _parent_of(http) == caller_span_id
    assert http.attributes is not None
    assert http.attributes["maas.request_id"] == mesh_request_id
    assert http.attributes["maas.client_request_id"] == request_id
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["http.route"] == "/v1/chat/completions"

    to_router = _one(gateway, router_rpc, SpanKind.CLIENT)
    assert _parent_of(to_router) == _id_of(http)
    router = _one(_spans(mesh, "router", trace_id), router_rpc, SpanKind.SERVER)
    assert _parent_of(router) == _id_of(to_router)
    to_inference = _one(
        _spans(mesh, replica_caller, trace_id), "/maas.v1.Inference/Generate", SpanKind.CLIENT
    )
    inference = _one(
        _spans(mesh, "inference", trace_id), "/maas.v1.Inference/Generate", SpanKind.SERVER
    )
    assert _parent_of(inference) == _id_of(to_inference)
    if direct:
        assert _parent_of(to_inference) == _id_of(http)
    # Auth was asked inside the same request, under the same span.
    to_auth = _one(gateway, "/maas.v1.Auth/Authenticate", SpanKind.CLIENT)
    assert _parent_of(to_auth) == _id_of(http)
