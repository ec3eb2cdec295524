"""The router's wires to its inference replicas: one channel and stub per
replica, its standard gRPC health `Watch` and its `WatchLoad` stream (both
pushed on change, not polled), each reopened with backoff when it breaks.
What they report is fed into the replica set's state; nothing here decides
anything."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity, channel
from services.common.backoff import Backoff, reconnect_forever
from services.common.errors import UnavailableError
from services.router.replica import Replica, ReplicaLoad

log = structlog.get_logger(__name__)

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


class ReplicaFeed(Protocol):
    """Where the links report what they learn (the replica set)."""

    def set_model(
        self,
        replica: Replica,
        model: generation_pb2.ModelInfo,
        adapters: tuple[str, ...],
        max_num_seqs: int,
        adapter_slots: int = 0,
    ) -> None: ...

    def set_serving(self, replica: Replica, serving: bool) -> None: ...

    def set_load(self, replica: Replica, load: ReplicaLoad) -> None: ...


def load_from_proto(load: inference_pb2.Load) -> ReplicaLoad:
    return ReplicaLoad(
        running=load.running,
        waiting=load.waiting,
        kv_cache_usage=load.kv_cache_usage,
        tokens_in_flight=load.tokens_in_flight,
        prefix_cache_hit_rate=load.prefix_cache_hit_rate,
        loaded_adapters=tuple(load.loaded_adapters),
        adapter_loads=load.adapter_loads,
    )


@dataclass(eq=False)
class _Link:
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceAsyncStub
    watches: list[asyncio.Task[None]] = field(default_factory=list)


class ReplicaLinks:
    """Opens, watches and closes the replicas' channels for a `ReplicaFeed`."""

    def __init__(
        self,
        feed: ReplicaFeed,
        telemetry: Telemetry,
        *,
        retry_initial_s: float,
        retry_max_s: float,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._feed = feed
        self._telemetry = telemetry
        self._security = security
        self._retry_initial_s = retry_initial_s
        # A maximum under the first delay meant "never longer than the first".
        self._retry_max_s = max(retry_max_s, retry_initial_s)
        self._links: dict[str, _Link] = {}

    def open(self, replica: Replica) -> None:
        """Opens `replica`'s channel and starts watching its health and load."""
        if replica.address in self._links:
            return
        ch = channel(replica.address, self._telemetry, security=self._security)
        link = _Link(ch, inference_pb2_grpc.InferenceStub(ch))
        self._links[replica.address] = link
        link.watches = [
            asyncio.create_task(self._watch_health(replica, link)),
            asyncio.create_task(self._watch_load(replica, link)),
        ]

    def stub(self, replica: Replica) -> inference_pb2_grpc.InferenceAsyncStub:
        link = self._links.get(replica.address)
        if link is None:
            raise UnavailableError(f"no channel to replica {replica.address}")
        return link.stub

    async def close(self, address: str) -> None:
        """Stops the watches and closes the channel (running calls end)."""
        link = self._links.pop(address, None)
        if link is None:
            return
        for task in link.watches:
            task.cancel()
        for task in link.watches:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await link.channel.close()

    async def aclose(self) -> None:
        for address in list(self._links):
            await self.close(address)

    def _backoff(self) -> Backoff:
        return Backoff(self._retry_initial_s, self._retry_max_s)

    async def _watch_health(self, replica: Replica, link: _Link) -> None:
        health = health_pb2_grpc.HealthStub(link.channel)
        request = health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE)

        async def session(backoff: Backoff) -> bool:
            # wait_for_ready: a replica that is not up yet is waited for, not failed.
            async for update in health.Watch(request, wait_for_ready=True):
                serving = update.status == health_pb2.HealthCheckResponse.SERVING
                if serving and replica.model is None:
                    info = await link.stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
                    self._feed.set_model(
                        replica,
                        info.model,
                        tuple(info.adapters),
                        info.max_num_seqs,
                        info.adapter_slots,
                    )
                self._feed.set_serving(replica, serving)
                backoff.reset()
            self._feed.set_serving(replica, False)
            return False

        def broke(err: Exception) -> None:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            log.warning("replica health watch broke", replica=replica.address, code=str(code))
            self._feed.set_serving(replica, False)

        await reconnect_forever(
            session, self._backoff(), on_error=broke, errors=(grpc.aio.AioRpcError,)
        )

    async def _watch_load(self, replica: Replica, link: _Link) -> None:
        async def session(backoff: Backoff) -> bool:
            async for load in link.stub.WatchLoad(
                inference_pb2.WatchLoadRequest(), wait_for_ready=True
            ):
                self._feed.set_load(replica, load_from_proto(load))
                backoff.reset()
            self._feed.set_load(replica, ReplicaLoad())
            return False

        def broke(err: Exception) -> None:
            # The health watch reports the replica's state; its load is unknown now.
            self._feed.set_load(replica, ReplicaLoad())

        await reconnect_forever(
            session, self._backoff(), on_error=broke, errors=(grpc.aio.AioRpcError,)
        )
