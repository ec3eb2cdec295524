"""The HTTP face's connection bounds: a request head that arrives too slowly
is cut, and one peer's connections past the cap are closed on arrival."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from starlette.types import Receive, Scope, Send

from gateway.http_server import serving_http
from tests.support import eventually

HEAD = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        # Generous: the assertion is that it closes, not how fast.
        data = await asyncio.wait_for(reader.read(), timeout=30)
    except ConnectionResetError:
        return True
    return b"HTTP/1.1" not in data


async def served(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEAD)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=30)
    except ConnectionError:
        return False
    finally:
        writer.close()
    return status.startswith(b"HTTP/1.1 200")


@pytest.fixture
async def server_port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    head_timeout_s, cap = request.param
    async with serving_http(
        hello,
        host="127.0.0.1",
        port=0,
        grace_s=1,
        head_timeout_s=head_timeout_s,
        max_connections_per_peer=cap,
    ) as port:
        yield port


@pytest.mark.parametrize("server_port", [(0.5, 100)], indirect=True)
async def test_a_request_head_dribbled_too_slowly_is_cut(server_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n")  # no blank line: the head is not done
    await writer.drain()
    assert await closed_by_server(reader)
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", server_port)
    assert await closed_by_server(silent_reader)  # a connection that says nothing too
    writer.close()
    silent.close()
    assert await served(server_port)  # a prompt head is served as ever


@pytest.mark.parametrize("server_port", [(60.0, 8)], indirect=True)
async def test_one_peer_holds_at_most_its_cap_of_connections(server_port: int) -> None:
    async with AsyncExitStack() as stack:
        held = []
        for _ in range(8):
            _, writer = await asyncio.open_connection("127.0.0.1", server_port)
            stack.callback(writer.close)
            held.append(writer)
        extra_reader, extra = await asyncio.open_connection("127.0.0.1", server_port)
        stack.callback(extra.close)
        assert await closed_by_server(extra_reader)  # the ninth is closed on arrival
        held.pop().close()
        # One slot is free again once the server has seen that close.
        await eventually(lambda: served(server_port))
