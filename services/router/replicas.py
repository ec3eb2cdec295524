"""The replica set: which inference replicas exist, what they serve, whether
they are up. Health comes from each replica's standard gRPC health `Watch`
stream (pushed on change, not polled)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import Telemetry
from observability.channels import channel
from services.common.errors import NotFoundError, UnavailableError

log = structlog.get_logger(__name__)

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


@dataclass(eq=False)
class Replica:
    """One inference replica as the router sees it."""

    address: str
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceAsyncStub
    model: generation_pb2.ModelInfo | None = None
    adapters: tuple[str, ...] = ()
    serving: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def serves(self, model: str) -> bool:
        """Whether `model` names this replica's model or one of its adapters."""
        return self.model is not None and (model == self.model.name or model in self.adapters)


class ReplicaSet:
    """Keeps every configured replica's health and model info current."""

    def __init__(
        self,
        addresses: list[str],
        telemetry: Telemetry,
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self._replicas: list[Replica] = []
        for address in addresses:
            ch = channel(address, telemetry)
            stub = inference_pb2_grpc.InferenceStub(ch)
            self._replicas.append(Replica(address, ch, stub))
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._watchers: list[asyncio.Task[None]] = []
        # Replaced on every change so each waiter wakes exactly once per change.
        self._changed = asyncio.Event()

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    async def start(self) -> None:
        self._watchers = [asyncio.create_task(self._watch(r)) for r in self._replicas]

    async def aclose(self) -> None:
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas:
            await replica.channel.close()

    async def wait_ready(self, timeout_s: float) -> None:
        """Waits until at least one replica is serving; tests and start-up use it."""
        waits = [asyncio.create_task(r.ready.wait()) for r in self._replicas]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        if not done:
            raise TimeoutError("no inference replica became ready")

    def any_serving(self) -> bool:
        return any(r.serving for r in self._replicas)

    async def serving_changes(self) -> AsyncIterator[bool]:
        """Yields whether any replica serves, now and at every change."""
        last: bool | None = None
        while True:
            changed = self._changed
            now = self.any_serving()
            if now != last:
                yield now
                last = now
            await changed.wait()

    def pick(self, model: str) -> Replica:
        """A serving replica for `model`. One replica per model for now; choosing
        among several by load comes with flow control."""
        known = [r for r in self._replicas if r.serves(model)]
        if not known:
            raise NotFoundError(f"no replica serves model {model!r}")
        for replica in known:
            if replica.serving:
                return replica
        raise UnavailableError(f"no replica of model {model!r} is serving right now")

    async def _watch(self, replica: Replica) -> None:
        backoff = self._retry_initial_s
        health = health_pb2_grpc.HealthStub(replica.channel)
        request = health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE)
        while True:
            try:
                # wait_for_ready: a replica that is not up yet is waited for, not failed.
                async for update in health.Watch(request, wait_for_ready=True):
                    serving = update.status == health_pb2.HealthCheckResponse.SERVING
                    if serving and replica.model is None:
                        info = await replica.stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
                        replica.model = info.model
                        replica.adapters = tuple(info.adapters)
                    self._set_serving(replica, serving)
                    backoff = self._retry_initial_s
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "replica health watch broke", replica=replica.address, code=str(err.code())
                )
            self._set_serving(replica, False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry_max_s)

    def _set_serving(self, replica: Replica, serving: bool) -> None:
        if serving != replica.serving:
            log.info("replica state", replica=replica.address, serving=serving)
            replica.serving = serving
            self._changed.set()
            self._changed = asyncio.Event()
        if serving:
            replica.ready.set()
        else:
            replica.ready.clear()
