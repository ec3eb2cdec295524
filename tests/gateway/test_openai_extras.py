"""The one list of fields the HTTP face does not serve: dropped when they
change nothing, refused by name when they would change the answer, and
looked up only for names a body does not declare."""

from __future__ import annotations

import pytest

from gateway.openai_extras import IGNORED, UNSERVED, drop_or_refuse
from gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from gateway.openai_responses_api import ResponsesRequest
from services.common.errors import InvalidArgumentError

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_no_name_is_both_ignored_and_refused() -> None:
    assert not IGNORED & set(UNSERVED)


@pytest.mark.parametrize("name", sorted(IGNORED - {"user"}))
def test_every_ignored_field_is_dropped_from_every_body(name: str) -> None:
    for body, model in (
        (CHAT, ChatCompletionRequest),
        ({"model": "m", "prompt": "hi"}, CompletionRequest),
        ({"model": "m", "input": "hi"}, ResponsesRequest),
    ):
        parsed = model.model_validate({**body, name: {"any": "value"}})
        assert name not in parsed.model_dump()


@pytest.mark.parametrize("name", ["audio", "functions", "function_call", "web_search_options"])
def test_a_meaning_changing_field_is_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ChatCompletionRequest.model_validate({**CHAT, name: {"voice": "alloy"}})
    assert info.value.message.startswith(f"{name}: ")


def test_null_asks_for_nothing() -> None:
    ChatCompletionRequest.model_validate({**CHAT, "audio": None, "functions": None})


def test_a_declared_field_is_the_bodys_own() -> None:
    # The completion body declares `user` (recorded on the span) and `suffix`.
    assert CompletionRequest.model_validate({"model": "m", "prompt": "p", "user": "u"}).user == "u"
    assert drop_or_refuse({"suffix": "x"}, {"suffix": None}) == {"suffix": "x"}


def test_an_unknown_name_is_left_to_the_model_to_refuse() -> None:
    assert drop_or_refuse({"max_token": 5}, {}) == {"max_token": 5}
    with pytest.raises(ValueError, match="max_token"):
        ChatCompletionRequest.model_validate({**CHAT, "max_token": 5})
