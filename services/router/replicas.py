"""The replica set: which inference replicas exist, what they serve, whether
they are up and how loaded. Health comes from each replica's standard gRPC
health `Watch` and load from its `WatchLoad` stream (both pushed on change,
not polled). Replicas join and leave at run time; one can be drained; one
that keeps failing is ejected for a while and then tried again, unless it is
the last of its model in rotation: that one is probed one request at a time
until a request succeeds on it, so a failing model stays a slow one, never
an unavailable one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity, channel
from services.common.errors import FailedPreconditionError, NotFoundError, UnavailableError
from services.router.limiter import GradientLimiter

log = structlog.get_logger(__name__)

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
# Past this KV-cache use an engine starts preempting: send it nothing new.
KV_CACHE_HIGH = 0.95
# Requests at a time on a failing replica kept in rotation: each failure then
# costs one caller, and the first success ends the probe.
PROBE_CONCURRENCY = 1


@dataclass(frozen=True)
class EjectionPolicy:
    """Outlier ejection: `failures` in a row eject a replica for `base_s`,
    doubling with each ejection in a row up to `max_s`."""

    failures: int = 3
    base_s: float = 5.0
    max_s: float = 60.0


@dataclass(eq=False)
class Replica:
    """One inference replica as the router sees it."""

    address: str
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceAsyncStub
    model: generation_pb2.ModelInfo | None = None
    adapters: tuple[str, ...] = ()
    serving: bool = False
    draining: bool = False
    load: inference_pb2.Load = field(default_factory=inference_pb2.Load)
    limiter: GradientLimiter = field(default_factory=GradientLimiter)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    consecutive_failures: int = 0
    ejections_in_a_row: int = 0
    ejected_until: float = 0.0
    # Failing, but not ejected: the last of its model in rotation.
    probing: bool = False
    # A stable number per address for rendezvous hashing (prefix affinity).
    address_hash: int = 0

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.address.encode(), digest_size=8).digest()
        self.address_hash = int.from_bytes(digest, "big")

    def serves(self, model: str) -> bool:
        """Whether `model` names this replica's model or one of its adapters."""
        return self.model is not None and (model == self.model.name or model in self.adapters)

    def takes_work(self, now: float) -> bool:
        """Up, not drained, not ejected."""
        return self.serving and not self.draining and now >= self.ejected_until

    def has_room(self, reserve: int = 0) -> bool:
        """Under its concurrency limit (less `reserve` slots), with its engine's
        batch not full by its own count (other callers' requests included:
        past that, requests wait in the engine, where they can no longer be
        ordered fairly), and with KV cache to spare.

        Requests reported waiting are not a queue by themselves: every request
        waits in the engine until its next step, so holding back whenever one
        is reported would cut a burst into one engine step per load report.
        A lasting queue shows in the time requests wait before being
        scheduled, which shrinks the limit."""
        load = self.load
        if self.probing and self.limiter.in_flight >= PROBE_CONCURRENCY:
            return False
        return (
            self.limiter.has_room(reserve)
            and load.running + load.waiting < self.limiter.max_limit
            and load.kv_cache_usage < KV_CACHE_HIGH
        )

    @property
    def slots(self) -> int:
        """Requests it may run at once now: its limit, or one while probed."""
        return PROBE_CONCURRENCY if self.probing else int(self.limiter.limit)

    def utilization(self) -> float:
        return self.limiter.in_flight / max(1.0, self.slots)


class ReplicaSet:
    """Keeps every replica's health, model info and load current."""

    def __init__(
        self,
        addresses: list[str],
        telemetry: Telemetry,
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        ejection: EjectionPolicy | None = None,
        limiter: Callable[[], GradientLimiter] = GradientLimiter,
        clock: Callable[[], float] = time.monotonic,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._telemetry = telemetry
        self._security = security
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._ejection = ejection or EjectionPolicy()
        self._new_limiter = limiter
        self.clock = clock
        self._replicas: dict[str, Replica] = {}
        self._watchers: dict[str, list[asyncio.Task[None]]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._started = False
        # Replaced on every change so each waiter wakes exactly once per change.
        self._changed = asyncio.Event()
        for address in addresses:
            self._create(address)

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def get(self, address: str) -> Replica:
        replica = self._replicas.get(address)
        if replica is None:
            raise NotFoundError(f"no replica at {address!r}")
        return replica

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called (synchronously) whenever a replica's state or load changes."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self._started = True
        for replica in self._replicas.values():
            self._start_watching(replica)

    async def aclose(self) -> None:
        for address in list(self._replicas):
            await self._forget(address)

    def register(self, address: str) -> Replica:
        """Adds a replica (or returns the known one)."""
        known = self._replicas.get(address)
        if known is not None:
            return known
        replica = self._create(address)
        if self._started:
            self._start_watching(replica)
        log.info("replica registered", replica=address)
        return replica

    async def deregister(self, address: str) -> int:
        """Stops new work to the replica and forgets it once its streams end;
        returns how many were still running."""
        replica = self.get(address)
        replica.draining = True
        self._notify()
        running = replica.limiter.in_flight
        task = asyncio.create_task(self._forget_when_idle(replica))
        self._watchers.setdefault(address, []).append(task)
        log.info("replica deregistered", replica=address, draining_streams=running)
        return running

    def drain(self, address: str, drain: bool = True) -> Replica:
        replica = self.get(address)
        replica.draining = drain
        log.info("replica drain", replica=address, draining=drain)
        self._notify()
        return replica

    def eject(self, address: str, seconds: float, reason: str) -> Replica:
        """Takes the replica out of rotation for `seconds` (an operator's or a
        policy's call); its running streams finish."""
        replica = self.get(address)
        now = self.clock()
        if replica.takes_work(now) and not self._others_take_work(replica, now):
            # Ejecting the last replica in rotation would turn a slow or
            # failing model into an unavailable one.
            raise FailedPreconditionError(
                f"{address} is the last replica of its model in rotation; not ejecting it"
            )
        replica.ejected_until = max(replica.ejected_until, now + seconds)
        log.warning("replica ejected by request", replica=address, seconds=seconds, reason=reason)
        asyncio.get_running_loop().call_later(seconds, self._notify)
        self._notify()
        return replica

    def restore(self, address: str) -> Replica:
        """Ends an ejection now, whoever made it."""
        replica = self.get(address)
        replica.ejected_until = 0.0
        replica.consecutive_failures = 0
        replica.probing = False
        log.info("replica restored", replica=address)
        self._notify()
        return replica

    async def wait_ready(self, timeout_s: float) -> None:
        """Waits until at least one replica is serving; tests and start-up use it."""
        waits = [asyncio.create_task(r.ready.wait()) for r in self._replicas.values()]
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
        return any(r.serving for r in self._replicas.values())

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

    def candidates(self, model: str) -> list[Replica]:
        """Replicas of `model` that take work now. NOT_FOUND when none serves
        the model at all, UNAVAILABLE when none of those is up."""
        known = [r for r in self._replicas.values() if r.serves(model)]
        if not known:
            raise NotFoundError(f"no replica serves model {model!r}")
        now = self.clock()
        usable = [r for r in known if r.takes_work(now)]
        if not usable:
            raise UnavailableError(f"no replica of model {model!r} is taking work right now")
        return usable

    def pick(self, model: str) -> Replica:
        """Any replica of `model` taking work, least loaded first (for calls
        that skip the queue, like CountTokens)."""
        return min(self.candidates(model), key=Replica.utilization)

    def record_success(self, replica: Replica) -> None:
        replica.consecutive_failures = 0
        replica.ejections_in_a_row = 0
        if replica.probing:
            replica.probing = False
            log.info("replica probe succeeded; back to its full limit", replica=replica.address)
            self._notify()

    def record_failure(self, replica: Replica) -> None:
        """A call failed on the replica's side (never a caller's doing);
        enough in a row eject it, or, while it is the last of its model in
        rotation, hold it to one request at a time until one succeeds."""
        replica.consecutive_failures += 1
        if replica.consecutive_failures < self._ejection.failures:
            return
        if not self._others_take_work(replica, self.clock()):
            if not replica.probing:
                replica.probing = True
                log.warning(
                    "replica failing but the last of its model in rotation:"
                    " probing it one request at a time instead of ejecting it",
                    replica=replica.address,
                    failures=replica.consecutive_failures,
                )
                self._notify()
            return
        replica.probing = False
        replica.consecutive_failures = 0
        seconds = min(self._ejection.base_s * 2**replica.ejections_in_a_row, self._ejection.max_s)
        replica.ejections_in_a_row += 1
        replica.ejected_until = self.clock() + seconds
        log.warning("replica ejected", replica=replica.address, seconds=seconds)
        # It comes back by itself when the time is up: wake the dispatcher then.
        asyncio.get_running_loop().call_later(seconds, self._notify)
        self._notify()

    def _others_take_work(self, replica: Replica, now: float) -> bool:
        """Whether another replica of `replica`'s model takes work now."""
        model = replica.model.name if replica.model is not None else None
        return any(
            r is not replica and r.takes_work(now) and (model is None or r.serves(model))
            for r in self._replicas.values()
        )

    def _create(self, address: str) -> Replica:
        ch = channel(address, self._telemetry, security=self._security)
        replica = Replica(
            address, ch, inference_pb2_grpc.InferenceStub(ch), limiter=self._new_limiter()
        )
        self._replicas[address] = replica
        return replica

    def _start_watching(self, replica: Replica) -> None:
        self._watchers[replica.address] = [
            asyncio.create_task(self._watch_health(replica)),
            asyncio.create_task(self._watch_load(replica)),
        ]

    async def _forget_when_idle(self, replica: Replica) -> None:
        while replica.limiter.in_flight > 0:
            changed = self._changed
            await changed.wait()
        await self._forget(replica.address)

    async def _forget(self, address: str) -> None:
        replica = self._replicas.pop(address, None)
        current = asyncio.current_task()
        tasks = [t for t in self._watchers.pop(address, []) if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if replica is not None:
            replica.serving = False
            await replica.channel.close()
            self._signal_change()
            self._notify()

    async def _watch_health(self, replica: Replica) -> None:
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
                        if info.max_num_seqs:
                            replica.limiter.cap_at(info.max_num_seqs)
                    self._set_serving(replica, serving)
                    backoff = self._retry_initial_s
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "replica health watch broke", replica=replica.address, code=str(err.code())
                )
            self._set_serving(replica, False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry_max_s)

    async def _watch_load(self, replica: Replica) -> None:
        backoff = self._retry_initial_s
        while True:
            try:
                async for load in replica.stub.WatchLoad(
                    inference_pb2.WatchLoadRequest(), wait_for_ready=True
                ):
                    replica.load = load
                    backoff = self._retry_initial_s
                    self._notify()
            except grpc.aio.AioRpcError:
                pass  # the health watch reports the replica's state
            replica.load = inference_pb2.Load()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry_max_s)

    def _set_serving(self, replica: Replica, serving: bool) -> None:
        if serving != replica.serving:
            log.info("replica state", replica=replica.address, serving=serving)
            replica.serving = serving
            self._signal_change()
            self._notify()
        if serving:
            replica.ready.set()
        else:
            replica.ready.clear()

    def released(self, replica: Replica) -> None:
        """A stream on `replica` ended (deregistration waits for the last)."""
        if replica.draining and replica.limiter.in_flight == 0:
            self._signal_change()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
