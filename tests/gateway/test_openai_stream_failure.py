"""A generation that fails after its first chunk: the HTTP status is out by
then, so a stream ends with an OpenAI `error` event, and a whole body gets
the error's status. The failure comes from a fake core (named as such): a
replica dying mid-stream is real, but no test can make one die on cue."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import httpx
from opentelemetry.sdk.trace import TracerProvider

from gateway.core import Caller, GatewayCore
from gateway.openai_http import create_app
from maas.v1 import auth_pb2, generation_pb2
from services.common.errors import UnavailableError

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class FakeMidStreamFailureCore:
    """Yields one chunk, then fails as a replica that went away would."""

    def __init__(self) -> None:
        self.closed = False

    async def authenticate(self, caller: Caller, scope: str) -> auth_pb2.Principal:
        """Every key is good: the HTTP face checks it before reading a body."""
        return auth_pb2.Principal(tenant_id="t")

    async def generate(
        self, caller: Caller, request: generation_pb2.GenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        try:
            yield generation_pb2.GenerateResponse(
                text="Hel", token_ids=[1], usage=generation_pb2.Usage(prompt_tokens=3)
            )
            raise UnavailableError("the replica went away")
        finally:
            self.closed = True


def client(core: FakeMidStreamFailureCore) -> httpx.AsyncClient:
    app = create_app(cast(GatewayCore, core), TracerProvider().get_tracer("test"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_a_stream_that_fails_ends_with_an_error_event() -> None:
    core = FakeMidStreamFailureCore()
    async with client(core) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    first, error, done = events
    assert '"content":"Hel"' in first
    assert '"type":"service_unavailable_error"' in error and error.startswith('data: {"error":')
    assert done == "data: [DONE]"
    assert core.closed


async def test_a_whole_body_that_fails_gets_the_errors_status() -> None:
    core = FakeMidStreamFailureCore()
    async with client(core) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the replica went away"
    assert core.closed
