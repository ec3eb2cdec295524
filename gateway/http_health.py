"""`/health` on the HTTP port: 200 while the gateway can serve, 503 when it
cannot, for load balancers and probes that speak only HTTP. No key is needed
and nothing is called: it reads the state of the gateway's channels to the
services every request needs (auth and router)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

# Broken, or closed: calls on them fail now. IDLE and CONNECTING are not:
# an idle channel reconnects on the next call, and asking starts that.
_UNUSABLE = frozenset(
    {grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN}
)

Readiness = Callable[[], list[str]]


def channels_readiness(channels: Mapping[str, grpc.aio.Channel]) -> Readiness:
    """The names of the channels that cannot carry a call now (none: ready)."""

    def not_ready() -> list[str]:
        return [
            name for name, ch in channels.items() if ch.get_state(try_to_connect=True) in _UNUSABLE
        ]

    return not_ready


def always_ready() -> list[str]:
    return []
