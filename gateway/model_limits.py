"""The models the mesh serves and their limits, as the gateway knows them
before admitting a request and lists them (ListModels, /v1/models): the
router's replica list, cached briefly, so polling the model list costs the
router one ListReplicas per `ttl_s`.

A request for a model not in a fresh list is refused without asking the
router again: a flood of made-up names costs one list per `ttl_s` at most.
While the router is unreachable (a restart) the last list stands: the
request goes on to the router's Route, which waits for it (routes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from maas.v1 import generation_pb2, router_pb2, router_pb2_grpc
from services.common.errors import MeshError, NotFoundError, remote_errors


def served_models(replicas: router_pb2.ListReplicasResponse) -> list[generation_pb2.ModelInfo]:
    """The models some serving replica holds, adapters included, by name; a
    base model lists the adapters any of its replicas serves."""
    models: dict[str, generation_pb2.ModelInfo] = {}
    adapters: dict[str, set[str]] = {}
    for replica in replicas.replicas:
        if replica.state != router_pb2.REPLICA_STATE_SERVING:
            continue
        base = replica.model.name
        models.setdefault(base, replica.model)
        adapters.setdefault(base, set()).update(replica.adapters)
        for adapter in replica.adapters:
            # An adapter has its base model's limits under its own name.
            adapter_info = generation_pb2.ModelInfo()
            adapter_info.CopyFrom(replica.model)
            adapter_info.name = adapter
            adapter_info.base_model = base
            del adapter_info.adapters[:]
            models.setdefault(adapter, adapter_info)
    for base, names in adapters.items():
        info = generation_pb2.ModelInfo()
        info.CopyFrom(models[base])
        del info.adapters[:]
        info.adapters.extend(sorted(names))
        models[base] = info
    return [models[name] for name in sorted(models)]


class ModelCatalog:
    def __init__(
        self,
        router: router_pb2_grpc.RouterAsyncStub,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._ttl_s = ttl_s
        self._clock = clock
        self._models: dict[str, generation_pb2.ModelInfo] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def model(self, name: str, timeout_s: float | None) -> generation_pb2.ModelInfo:
        """`name`'s limits; NOT_FOUND when no serving replica holds it."""
        await self._refresh(timeout_s)
        info = self._models.get(name)
        if info is None:
            raise NotFoundError(f"model {name!r} is not served here")
        return info

    async def served(self, timeout_s: float | None) -> list[generation_pb2.ModelInfo]:
        """Every model some serving replica holds, by name (served_models)."""
        await self._refresh(timeout_s)
        return list(self._models.values())

    async def _refresh(self, timeout_s: float | None) -> None:
        if not self._fresh():
            async with self._lock:
                # Whoever waited on the lock finds the list another caller fetched.
                if not self._fresh():
                    await self._fetch(timeout_s)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl_s

    async def _fetch(self, timeout_s: float | None) -> None:
        try:
            with remote_errors():
                replicas = await self._router.ListReplicas(
                    router_pb2.ListReplicasRequest(),
                    # A caller with no deadline must still not hang the request on a stuck router.
                    timeout=timeout_s if timeout_s is not None else 10.0,
                )
        except MeshError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE or self._fetched_at is None:
                raise
            return  # the last list stands, still stale: the next request asks again
        self._models = {m.name: m for m in served_models(replicas)}
        self._fetched_at = self._clock()
