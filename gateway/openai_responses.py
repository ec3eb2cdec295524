"""Generation chunks as OpenAI objects: streamed chunks (`chat.completion.chunk`,
`text_completion`), whole bodies, usage.

A logprob's token is its text as the replica decoded it; from a replica that
did not say (an older one), it is written the way vLLM's
`return_tokens_as_token_ids` writes it: "token_id:<id>", since the gateway
does not tokenize."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.openai_requests import CHAT_PARAMS, COMPLETION_PARAMS
from gateway.openai_tools import joined_calls, tool_calls_json
from maas.v1 import generation_pb2

JSON = dict[str, Any]

FINISH_REASONS: Mapping[int, str] = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    # Not one of OpenAI's; vLLM's name for a generation the server cut short.
    generation_pb2.FINISH_REASON_ABORT: "abort",
    generation_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def finish_reason(response: generation_pb2.GenerateResponse) -> str | None:
    return FINISH_REASONS.get(response.finish_reason)


def token_name(token: generation_pb2.TokenLogprob) -> str:
    return token.text if token.HasField("text") else f"token_id:{token.token_id}"


def token_bytes(token: generation_pb2.TokenLogprob) -> list[int] | None:
    return list(token.text.encode()) if token.HasField("text") else None


def text_offsets(logprobs: Sequence[generation_pb2.SampledLogprob], start: int) -> list[int] | None:
    """Where each token starts in the completion, from `start`; None unless
    every token's text is known."""
    offsets = []
    for entry in logprobs:
        if not entry.sampled.HasField("text"):
            return None
        offsets.append(start)
        start += len(entry.sampled.text)
    return offsets


def usage_object(usage: generation_pb2.Usage) -> JSON:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


@dataclass
class Choice:
    """One choice of a generation, gathered from its chunks."""

    index: int
    text: list[str] = field(default_factory=list)
    logprobs: list[generation_pb2.SampledLogprob] = field(default_factory=list)
    tool_calls: list[generation_pb2.ToolCall] = field(default_factory=list)
    finish_reason: str | None = None


class Collected:
    """A whole generation, for answers that are not streamed."""

    def __init__(self) -> None:
        self._choices: dict[int, Choice] = {}
        self.usage = generation_pb2.Usage()

    def add(self, response: generation_pb2.GenerateResponse) -> None:
        choice = self._choices.setdefault(response.index, Choice(response.index))
        choice.text.append(response.text)
        choice.logprobs.extend(response.logprobs)
        choice.tool_calls.extend(response.tool_calls)
        choice.finish_reason = finish_reason(response) or choice.finish_reason
        # Running usage over every choice: the last chunk's is the total.
        self.usage.CopyFrom(response.usage)

    def choices(self) -> list[Choice]:
        return [self._choices[i] for i in sorted(self._choices)]


def sse(data: JSON | str, event: str | None = None) -> bytes:
    """One server-sent event; `event` names it (the Responses API's events do)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class Writing(ABC):
    """How one endpoint writes a generation, for one request: whole, or as
    server-sent events (what comes before, with and after the chunks)."""

    # Generation fields whose parameter on this endpoint has another name.
    params: Mapping[str, str]
    id_prefix: str

    def __init__(
        self, *, request_id: str, model: str, include_usage: bool, top_logprobs: int = 0
    ) -> None:
        self.id = f"{self.id_prefix}-{request_id}"
        self.model = model
        self.include_usage = include_usage
        # The replica adds the sampled token to the alternatives when it ranks
        # below them; OpenAI's clients expect exactly the n most likely.
        self.top_logprobs = top_logprobs
        self.created = int(time.time())

    def requested(self, body: Any) -> None:
        """Told the request's body, once it mapped; for an answer that echoes
        what was asked (the Responses API's tools); most do not."""
        return None

    @abstractmethod
    def body(self, collected: Collected) -> JSON: ...

    @abstractmethod
    def events(self, response: generation_pb2.GenerateResponse) -> list[bytes]: ...

    @abstractmethod
    def closing(self, usage: generation_pb2.Usage) -> list[bytes]: ...

    @abstractmethod
    def failure(self, error: JSON) -> list[bytes]:
        """What ends a stream that failed after its head was sent."""


class Rendering(Writing):
    """How a completions endpoint (chat or not) writes a generation, for one request."""

    chunk_object: str
    body_object: str

    def __init__(
        self, *, request_id: str, model: str, include_usage: bool, top_logprobs: int = 0
    ) -> None:
        super().__init__(
            request_id=request_id,
            model=model,
            include_usage=include_usage,
            top_logprobs=top_logprobs,
        )
        self._started: set[int] = set()

    def _head(self, obj: str) -> JSON:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chunk(self, response: generation_pb2.GenerateResponse) -> JSON:
        first = response.index not in self._started
        self._started.add(response.index)
        chunk = self._head(self.chunk_object)
        chunk["choices"] = [
            {
                "index": response.index,
                **self._delta(response, first),
                "logprobs": self._streamed_logprobs(response),
                "finish_reason": finish_reason(response),
            }
        ]
        if self.include_usage:
            # OpenAI's shape: null on every chunk but the last, which has no choices.
            chunk["usage"] = None
        return chunk

    def events(self, response: generation_pb2.GenerateResponse) -> list[bytes]:
        return [sse(self.chunk(response))]

    def closing(self, usage: generation_pb2.Usage) -> list[bytes]:
        usage_chunk = [sse(self.usage_chunk(usage))] if self.include_usage else []
        return [*usage_chunk, sse("[DONE]")]

    def failure(self, error: JSON) -> list[bytes]:
        return [sse(error), sse("[DONE]")]

    def usage_chunk(self, usage: generation_pb2.Usage) -> JSON:
        chunk = self._head(self.chunk_object)
        chunk["choices"] = []
        chunk["usage"] = usage_object(usage)
        return chunk

    def body(self, collected: Collected) -> JSON:
        body = self._head(self.body_object)
        body["choices"] = [
            {
                "index": choice.index,
                **self._whole(choice),
                "logprobs": self._logprobs(choice.logprobs) if choice.logprobs else None,
                "finish_reason": choice.finish_reason,
            }
            for choice in collected.choices()
        ]
        body["usage"] = usage_object(collected.usage)
        return body

    def _streamed_logprobs(self, response: generation_pb2.GenerateResponse) -> JSON | None:
        return self._logprobs(response.logprobs) if response.logprobs else None

    @abstractmethod
    def _delta(self, response: generation_pb2.GenerateResponse, first: bool) -> JSON: ...

    @abstractmethod
    def _whole(self, choice: Choice) -> JSON: ...

    @abstractmethod
    def _logprobs(self, logprobs: Sequence[generation_pb2.SampledLogprob]) -> JSON: ...


class ChatRendering(Rendering):
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"
    body_object = "chat.completion"
    params = CHAT_PARAMS

    def _delta(self, response: generation_pb2.GenerateResponse, first: bool) -> JSON:
        delta: JSON = {"role": "assistant"} if first else {}
        if response.tool_calls:
            delta["tool_calls"] = tool_calls_json(response.tool_calls, delta=True)
            if first:
                delta["content"] = None
        elif first or response.text:
            delta["content"] = response.text
        return {"delta": delta}

    def _whole(self, choice: Choice) -> JSON:
        if choice.tool_calls:
            calls = tool_calls_json(joined_calls(choice.tool_calls), delta=False)
            return {"message": {"role": "assistant", "content": None, "tool_calls": calls}}
        return {"message": {"role": "assistant", "content": "".join(choice.text)}}

    def _logprobs(self, logprobs: Sequence[generation_pb2.SampledLogprob]) -> JSON:
        return {
            "content": [
                {
                    "token": token_name(entry.sampled),
                    "logprob": entry.sampled.logprob,
                    "bytes": token_bytes(entry.sampled),
                    "top_logprobs": [
                        {
                            "token": token_name(top),
                            "logprob": top.logprob,
                            "bytes": token_bytes(top),
                        }
                        for top in entry.top[: self.top_logprobs]
                    ],
                }
                for entry in logprobs
            ],
            "refusal": None,
        }


class CompletionRendering(Rendering):
    id_prefix = "cmpl"
    chunk_object = "text_completion"
    body_object = "text_completion"
    params = COMPLETION_PARAMS

    def __init__(
        self, *, request_id: str, model: str, include_usage: bool, top_logprobs: int = 0
    ) -> None:
        super().__init__(
            request_id=request_id,
            model=model,
            include_usage=include_usage,
            top_logprobs=top_logprobs,
        )
        # Per choice: where its next streamed token starts in its text.
        self._offsets: dict[int, int] = {}

    def _delta(self, response: generation_pb2.GenerateResponse, first: bool) -> JSON:
        return {"text": response.text}

    def _streamed_logprobs(self, response: generation_pb2.GenerateResponse) -> JSON | None:
        start = self._offsets.get(response.index, 0)
        self._offsets[response.index] = start + len(response.text)
        return self._logprobs(response.logprobs, start) if response.logprobs else None

    def _whole(self, choice: Choice) -> JSON:
        return {"text": "".join(choice.text)}

    def _logprobs(self, logprobs: Sequence[generation_pb2.SampledLogprob], start: int = 0) -> JSON:
        return {
            "tokens": [token_name(entry.sampled) for entry in logprobs],
            "token_logprobs": [entry.sampled.logprob for entry in logprobs],
            "top_logprobs": [
                {token_name(top): top.logprob for top in entry.top[: self.top_logprobs]}
                for entry in logprobs
            ],
            # Each token's start in the completion (no echo: the prompt is not in it).
            "text_offset": text_offsets(logprobs, start),
        }
