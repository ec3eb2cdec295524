"""Public request validation: each bad field is named."""

from __future__ import annotations

import json

import pytest

from gateway.validation import check_against_model, validate_generate
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError
from services.common.generation_limits import (
    DEFAULT_MAX_TOKENS,
    MAX_CONSTRAINT_BYTES,
    MAX_CONSTRAINT_DEPTH,
    MAX_MESSAGES,
    MAX_MODEL_NAME_BYTES,
    MAX_PROMPT_BYTES,
    MAX_STOP_LENGTH,
    MAX_STOP_TOKEN_IDS,
    completion_limit,
)
from services.inference.engine import (
    GenerationInput,
    InvalidRequestError,
    ModelInfo,
    check_prompt_size,
)


def request(**fields: object) -> generation_pb2.GenerateRequest:
    base: dict[str, object] = {"model": "m", "prompt": "hi"}
    base.update(fields)
    return generation_pb2.GenerateRequest(**base)  # type: ignore[arg-type]


def chat(*turns: tuple[str, str]) -> generation_pb2.GenerateRequest:
    req = generation_pb2.GenerateRequest(model="m")
    req.messages.messages.extend(generation_pb2.ChatMessage(role=r, content=c) for r, c in turns)
    return req


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (request(model=""), "model"),
        (generation_pb2.GenerateRequest(model="m"), "prompt"),
        (request(prompt=""), "prompt"),
        (chat(), "messages"),
        (chat(("user", "hi"), ("wizard", "boo")), "messages[1].role"),
        (request(max_tokens=0), "max_tokens"),
        (request(temperature=-0.1), "temperature"),
        (request(temperature=float("nan")), "temperature"),
        (request(temperature=2.5), "temperature"),
        (request(top_p=0.0), "top_p"),
        (request(top_p=1.5), "top_p"),
        (request(stop=["a"] * 9), "stop"),
        (request(stop=["ok", ""]), "stop[1]"),
    ],
)
def test_bad_fields_are_named(bad: generation_pb2.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_generate(bad)
    assert info.value.field == field


@pytest.mark.parametrize(
    "good",
    [
        request(),
        request(max_tokens=1, temperature=0.0, top_p=1.0, seed=3, stop=["\n"]),
        chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "more")),
    ],
)
def test_good_requests_pass(good: generation_pb2.GenerateRequest) -> None:
    validate_generate(good)


def deep_schema(levels: int) -> str:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return json.dumps(schema)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (request(model="m" * (MAX_MODEL_NAME_BYTES + 1)), "model"),
        (request(prompt="x" * (MAX_PROMPT_BYTES + 1)), "prompt"),
        (chat(*[("user", "hi")] * (MAX_MESSAGES + 1)), "messages"),
        (chat(("user", "x" * MAX_PROMPT_BYTES), ("user", "y")), "messages"),
        (request(stop=["s" * (MAX_STOP_LENGTH + 1)]), "stop[0]"),
        (request(stop_token_ids=list(range(MAX_STOP_TOKEN_IDS + 1))), "stop_token_ids"),
        (request(regex="a" * (MAX_CONSTRAINT_BYTES + 1)), "regex"),
        (request(regex="(" * 40 + "a" + ")" * 40), "regex"),
        (request(regex="a\x00"), "regex"),
        (
            request(json_schema='{"type":"string","x":"' + "a" * MAX_CONSTRAINT_BYTES + '"}'),
            "json_schema",
        ),
        (request(json_schema=deep_schema(MAX_CONSTRAINT_DEPTH)), "json_schema"),
        # Deep enough to break Python's own JSON parser: still a named refusal.
        (request(json_schema="[" * 50_000), "json_schema"),
        (request(json_schema="[1]"), "json_schema"),
    ],
)
def test_every_bound_is_named(bad: generation_pb2.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_generate(bad)
    assert info.value.field == field


def test_bounds_leave_honest_constraints_alone() -> None:
    validate_generate(request(regex=r"\((a|b)[0-9]{1,3}\)"))
    validate_generate(request(json_schema=deep_schema(5)))


MODEL = generation_pb2.ModelInfo(
    name="m", max_context_length=2048, vocab_size=512, max_token_bytes=16
)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (request(max_tokens=100_000_000), "max_tokens"),
        (request(max_tokens=2048), "max_tokens"),
        (request(min_tokens=5000), "min_tokens"),
        (request(prompt="z" * (2048 * 16)), "prompt"),
        (chat(("user", "z" * (2048 * 8)), ("user", "z" * (2048 * 8))), "messages"),
        (request(prompt_token_ids=generation_pb2.TokenIds(ids=[1] * 2048)), "prompt_token_ids"),
        (
            request(prompt_token_ids=generation_pb2.TokenIds(ids=[1] * 1000), max_tokens=1049),
            "max_tokens",
        ),
    ],
)
def test_the_models_context_is_checked_before_admission(
    bad: generation_pb2.GenerateRequest, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_against_model(bad, MODEL)
    assert info.value.field == field


def test_what_fits_the_context_passes() -> None:
    check_against_model(request(max_tokens=2047), MODEL)
    check_against_model(request(prompt="z" * (2047 * 16)), MODEL)
    check_against_model(
        request(prompt_token_ids=generation_pb2.TokenIds(ids=[1] * 1000), max_tokens=1048), MODEL
    )


def test_the_default_completion_is_one_rule() -> None:
    assert completion_limit(None, 2047) == DEFAULT_MAX_TOKENS
    assert completion_limit(None, 10) == 10
    assert completion_limit(None, None) == DEFAULT_MAX_TOKENS
    assert completion_limit(7, 10) == 7


def test_the_replica_refuses_a_prompt_too_big_before_tokenizing() -> None:
    model = ModelInfo(name="m", max_context_length=2048, vocab_size=512, max_token_bytes=16)
    with pytest.raises(InvalidRequestError) as info:
        check_prompt_size(GenerationInput(prompt="z" * (2048 * 16)), model)
    assert info.value.field == "prompt"
    check_prompt_size(GenerationInput(prompt="z" * (2047 * 16)), model)
