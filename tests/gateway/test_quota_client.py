"""The gateway's calls to auth have a deadline: a hung auth fails a request,
never holds it."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from gateway.quota import QuotaClient
from maas.v1 import auth_pb2_grpc


async def test_reserve_against_a_hung_auth_ends_at_its_deadline() -> None:
    # A peer that accepts connections and never says a word: a hung process.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    try:
        port = hung.getsockname()[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            quotas = QuotaClient(auth_pb2_grpc.AuthStub(channel), timeout_s=0.2)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                # The outer bound only keeps a broken build from hanging the suite.
                await asyncio.wait_for(quotas.reserve("t", "r", "m", 5), timeout=30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        hung.close()
