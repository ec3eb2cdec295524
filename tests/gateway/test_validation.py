"""Public request validation: each bad field is named."""

from __future__ import annotations

import pytest

from gateway.validation import validate_generate
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError


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
