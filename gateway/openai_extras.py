"""What the HTTP face does with a body field it does not serve: the one list.

OpenAI's SDK and popular clients send fields routinely that change nothing
this server does (`metadata`, `store`, `service_tier`, ...): those are
accepted and dropped, as vLLM's server does. A field that would change the
meaning of the answer and that the mesh cannot honour is refused with a 400
naming it, so a client never believes it took effect. Any other unknown name
is refused too (the model's `extra="forbid"`): a misspelt `max_token` must
not quietly generate the default length.

Only names a body model does not declare are looked up here: a field an
endpoint serves (or refuses with its own reason) is the endpoint's. Dropped
fields were read whole before this runs, so they still count toward the
body-size limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.errors import InvalidArgumentError

# Accepted and dropped: hints for OpenAI's own platform, or knobs a model
# without reasoning or audio has no use for.
IGNORED: frozenset[str] = frozenset(
    {
        "metadata",  # OpenAI's dashboard tags
        "store",  # OpenAI keeps completions for its dashboard; nothing is stored here
        "service_tier",  # OpenAI's capacity classes
        "prediction",  # predicted outputs: a speed hint, never the answer
        "reasoning_effort",  # for reasoning models; vLLM ignores it for others
        "modalities",  # text is all that is served; `audio` below asks for audio
        "verbosity",  # a reasoning-model hint
        "prompt_cache_key",  # OpenAI's cache routing; the router has its own affinity
        "safety_identifier",  # the end user, for OpenAI's abuse tracking
        "user",  # the same, older name (bodies that declare it record it)
        "truncation",  # Responses: "disabled" is the only behaviour here
        "background",  # Responses: answered in the foreground either way
        "include",  # Responses: extra output kinds, none of which are produced
    }
)

# Refused by name: each would change what comes back.
UNSERVED: Mapping[str, str] = {
    "audio": "audio output is not supported by this server",
    "logit_bias": "is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "web_search_options": "web search is not supported by this server",
    "suffix": "is not supported by this server",
    "echo": "echoing the prompt is not supported by this server",
    "previous_response_id": "responses are not stored by this server: send the whole input",
    "conversation": "conversations are not stored by this server: send the whole input",
}


def drop_or_refuse(body: Any, declared: Mapping[str, Any]) -> Any:
    """`body` without the ignored fields it does not declare; raises
    INVALID_ARGUMENT naming the first unserved one. Not a dict: left to the
    model's own validation."""
    if not isinstance(body, dict):
        return body
    for name, value in body.items():
        if name in UNSERVED and name not in declared and value is not None:
            raise InvalidArgumentError(name, UNSERVED[name])
    return {
        k: v
        for k, v in body.items()
        # An unserved field sent as null asks for nothing.
        if k in declared or (k not in IGNORED and not (k in UNSERVED and v is None))
    }
