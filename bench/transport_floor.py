"""What Python gRPC itself costs on this machine, as reference rows for the
benchmarks: a service's added time can be judged only against the hop it
rides on.

    python -m bench.transport_floor noop --port P
        a server whose every Generate streams one empty message at once:
        time to its first message is the transport's share of TTFT.
    python -m bench.transport_floor proxy --port P --upstream HOST:PORT
        a pass-through hop that forwards Inference/Generate as raw bytes
        (nothing parsed, no logic): what any router in Python pays at least.

Both use uvloop and the same server options as the mesh's services."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.common.serving import SERVER_OPTIONS

GENERATE = "/maas.v1.Inference/Generate"


def _identity(payload: bytes) -> bytes:
    return payload


async def _serve(port: int, generate: Any) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_stream_rpc_method_handler(
        generate, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("maas.v1.Inference", {"Generate": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _noop(port: int) -> None:
    async def generate(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b""

    await _serve(port, generate)


async def _proxy(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    forward = channel.unary_stream(
        GENERATE, request_serializer=_identity, response_deserializer=_identity
    )

    async def generate(request: bytes, context: Any) -> AsyncIterator[bytes]:
        async for chunk in forward(request):
            yield chunk

    await _serve(port, generate)


async def ready(address: str, timeout_s: float = 60) -> None:
    """Waits until the server at `address` accepts calls."""
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("noop", "proxy"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default=None)
    args = parser.parse_args()
    import uvloop

    if args.kind == "noop":
        uvloop.run(_noop(args.port))
    else:
        if not args.upstream:
            parser.error("proxy needs --upstream")
        uvloop.run(_proxy(args.port, args.upstream))


if __name__ == "__main__":
    main()
