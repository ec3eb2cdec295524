"""The OpenAI HTTP face fuzzed by schemathesis against its own OpenAPI schema
(GET /openapi.json), over the real mesh: every 5xx is a defect, and so is a
stream that answers 200 and then reports a server error in an event.

Bodies come both fitting the schema (positive) and not (negative), with the
tenant's valid key and with none. Most generated bodies name the
served model and are steered past the face's known refusals, so they reach
the engine (see `steer`); every case has its token counts capped so an
example costs a few tokens. What that cap hides is checked apart: the schema
lets a client ask for max_tokens up to 2**32 - 1, which the gateway refuses
against the model's context before admission (tests/hostile/test_bounds.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error

from gateway.validation import ROLES
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.conftest import Mesh, TenantFactory, bystander

AnyCase = Case[Any]

# Schemathesis's own strategies draw from `random`; Hypothesis seeds it per example.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

# Each case runs one generation of a few tokens: about 40 per key mode fit CI's minute.
CI_EXAMPLES = 40
# Tokens an example may generate per choice; the engine's cost, not the fuzzer's reach.
TOKEN_CAP = 4
# A request that has not answered in this long is hung: a defect, not a slow engine.
CALL_TIMEOUT_S = 60.0
# The OpenAI error types the face gives for 5xx statuses (gateway/openai_errors.py).
SERVER_ERROR_TYPES = frozenset({"server_error", "service_unavailable_error", "timeout_error"})
# Their codes, which are all a Responses stream's `error` event carries.
SERVER_ERROR_CODES = frozenset(
    {"internal_error", "not_implemented", "unavailable", "deadline_exceeded"}
)


async def openapi_schema(mesh: Mesh) -> schemathesis.BaseSchema:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{mesh.http}/openapi.json")
    response.raise_for_status()
    return schemathesis.openapi.from_dict(response.json())


# How far a generated case is steered towards the engine: not at all (what
# the schema alone generates), to the served model, or past every refusal
# the face is known to give before the engine (without that, nearly every
# positive case stops at "messages[0].content: required" or the like).
# Drawn uniformly from this tuple: the engine gets two draws in three.
STEERING = ("none", "model", "engine", "engine", "engine", "engine")


def steer(case: AnyCase, how: str, model: str) -> AnyCase:
    """The case steered as `how` says, with what it may generate capped at
    TOKEN_CAP per choice. Only values of the schema's types are touched: a
    value of the wrong type is the point of a negative case."""
    body = case.body
    if not isinstance(body, dict):
        return case
    if how != "none":
        body["model"] = model
    if how == "engine":
        _past_known_refusals(body)
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens"):
        value = body.get(name)
        # Floats too: the face takes 12514.0 as 12514.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > TOKEN_CAP:
            body[name] = TOKEN_CAP
    # Chat has no default max_tokens (up to the context); set one.
    if "messages" in body and not {"max_tokens", "max_completion_tokens"} & body.keys():
        body["max_tokens"] = TOKEN_CAP
    # Nor has a response.
    if "input" in body and "max_output_tokens" not in body:
        body["max_output_tokens"] = TOKEN_CAP
    return case


# The documented ranges (protos/maas/v1/generation.proto); "model" steering
# leaves values outside them to be refused, "engine" steering drops them.
IN_RANGE: dict[str, Callable[[Any], bool]] = {
    "temperature": lambda v: 0 <= v <= 2,
    "top_p": lambda v: 0 < v <= 1,
    "min_p": lambda v: 0 <= v <= 1,
    "presence_penalty": lambda v: -2 <= v <= 2,
    "frequency_penalty": lambda v: -2 <= v <= 2,
    "repetition_penalty": lambda v: 0 < v <= 2,
    "n": lambda v: 1 <= v <= 16,
    "top_logprobs": lambda v: 0 <= v <= 20,
    "logprobs": lambda v: isinstance(v, bool) or 0 <= v <= 20,
    "seed": lambda v: 0 <= v < 2**64,
}


def _past_known_refusals(body: dict[str, Any]) -> None:
    for name, in_range in IN_RANGE.items():
        value = body.get(name)
        if isinstance(value, (int, float)) and not in_range(value):
            del body[name]
    for name in ("echo", "suffix", "best_of", "logit_bias", "tools", "tool_choice"):
        body.pop(name, None)
    if not body.get("stream"):
        body.pop("stream_options", None)
    if body.get("top_logprobs") is not None and "messages" in body:
        body["logprobs"] = True
    messages = body.get("messages")
    if isinstance(messages, list):
        if not messages:
            messages.append({"role": "user", "content": "Hello"})
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("role") not in ROLES:
                message["role"] = "user"
            content = message.get("content")
            if isinstance(content, list):
                message["content"] = [
                    {"type": "text", "text": part.get("text") or "Hello"}
                    for part in content
                    if isinstance(part, dict)
                ] or "Hello"
            elif not content:
                message["content"] = "Hello"
    prompt = body.get("prompt")
    if prompt in ("", []) or (isinstance(prompt, list) and prompt[0] in ("", [])):
        body["prompt"] = "Hello"
    elif isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
        body["prompt"] = prompt[:1]


def no_server_error_event(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """A streamed answer started with 200 may still end in an error event;
    one of a server-error type is a 5xx that came too late to be a status."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        event: dict[str, Any] = json.loads(line.removeprefix("data: "))
        error = event.get("error")
        if isinstance(error, dict) and error.get("type") in SERVER_ERROR_TYPES:
            raise AssertionError(f"the stream ended in a server error: {error}")
        if event.get("type") == "error" and event.get("code") in SERVER_ERROR_CODES:
            raise AssertionError(f"the response stream ended in a server error: {event}")
    return None


def fuzz_http_face(schema: schemathesis.BaseSchema, mesh: Mesh, api_key: str | None) -> None:
    """Runs in a worker thread: the mesh serves on the test's event loop."""
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    headers = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
    session = requests.Session()

    @fuzz_settings(CI_EXAMPLES)
    @given(case=cases, how=st.sampled_from(STEERING))
    def one_call(case: AnyCase, how: str) -> None:
        steer(case, how, mesh.model)
        case.call_and_validate(
            base_url=mesh.http,
            session=session,
            headers=headers,
            checks=[not_a_server_error, no_server_error_event],
            timeout=CALL_TIMEOUT_S,
        )

    with session:
        one_call()


@pytest.mark.parametrize("with_key", [True, False], ids=["valid-key", "no-key"])
async def test_openai_http_face_never_answers_a_server_error(
    mesh: Mesh, new_tenant: TenantFactory, with_key: bool
) -> None:
    fuzzer = await new_tenant()
    schema = await openapi_schema(mesh)
    async with bystander(mesh, await new_tenant()):
        await asyncio.to_thread(fuzz_http_face, schema, mesh, fuzzer.api_key if with_key else None)


@pytest.mark.parametrize("with_key", [True, False], ids=["valid-key", "no-key"])
@pytest.mark.parametrize("prompt", [[-1], [[2**32]]], ids=["negative", "past-uint32"])
async def test_completion_token_ids_outside_uint32_are_a_bad_request(
    mesh: Mesh, new_tenant: TenantFactory, with_key: bool, prompt: list[Any]
) -> None:
    tenant = await new_tenant()
    headers = {"authorization": f"Bearer {tenant.api_key}"} if with_key else {}
    async with httpx.AsyncClient(base_url=mesh.http, headers=headers) as client:
        response = await client.post(
            "/v1/completions", json={"model": mesh.model, "prompt": prompt, "max_tokens": 1}
        )
    # Without a key, refusing the key or the body are both fine; a crash is not.
    assert response.status_code in ({400} if with_key else {400, 401}), response.text
    if with_key:
        assert response.json()["error"]["param"] == "prompt"
