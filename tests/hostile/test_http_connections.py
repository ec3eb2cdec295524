"""Slowloris on the HTTP face: connections that dribble a request head hold a
socket each until the head timeout cuts them, while honest callers, over HTTP
and gRPC, are served throughout."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx

from tests.hostile.conftest import Mesh, TenantFactory, bystander

SLOW_CONNECTIONS = 300


async def cut_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        # Far past the gateway's 10 s head timeout: the check is that it cuts.
        return await asyncio.wait_for(reader.read(), timeout=60) == b""
    except ConnectionResetError:
        return True


async def test_slow_request_heads_are_cut_and_others_served(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker, honest, caller = await new_tenant(), await new_tenant(), await new_tenant()
    host, port = mesh.http.removeprefix("http://").split(":")
    async with AsyncExitStack() as stack, bystander(mesh, honest):
        readers = []
        for _ in range(SLOW_CONNECTIONS):
            reader, writer = await asyncio.open_connection(host, int(port))
            stack.callback(writer.close)
            # A head that never ends: no blank line.
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\n")
            writer.write(f"Authorization: Bearer {attacker.api_key}\r\n".encode())
            readers.append(reader)
        async with httpx.AsyncClient(timeout=60) as client:
            reply = await client.post(
                f"{mesh.http}/v1/completions",
                headers={"authorization": f"Bearer {caller.api_key}"},
                json={"model": mesh.model, "prompt": "Hello", "max_tokens": 4},
            )
        assert reply.status_code == 200
        cut = await asyncio.gather(*(cut_by_server(r) for r in readers))
        assert all(cut), f"{cut.count(False)} slow connections were never cut"
