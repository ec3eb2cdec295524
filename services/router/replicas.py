"""The replica set: which inference replicas exist, what they serve, whether
they are up and how loaded, as state. Replicas join and leave at run time;
one can be drained; one that keeps failing is ejected for a while and then
tried again, unless it is the last of its model in rotation: that one is
probed one request at a time until a request succeeds on it, so a failing
model stays a slow one, never an unavailable one.

The set decides nothing on the wire: its `links` (replica_links.py) hold the
channels and watches and feed health, model info and load in through
`set_serving`, `set_model` and `set_load`. Every change wakes the waiters of
one change signal and the synchronous listeners (the dispatcher's pump)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import structlog

from maas.v1 import generation_pb2
from observability import Telemetry
from observability.channels import PLAINTEXT, ChannelSecurity
from services.common.changes import ChangeSignal
from services.common.errors import (
    FailedPreconditionError,
    MeshError,
    NotFoundError,
    UnavailableError,
)
from services.router.limiter import GradientLimiter
from services.router.pool import ModelPool
from services.router.replica import Replica, ReplicaLoad
from services.router.replica_links import ReplicaLinks
from services.router.spec import STARTING_REASON

__all__ = ["EjectionPolicy", "Replica", "ReplicaLoad", "ReplicaSet"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EjectionPolicy:
    """Outlier ejection: `failures` in a row eject a replica for `base_s`,
    doubling with each ejection in a row up to `max_s`."""

    # RouterSettings' defaults: three in a row is a pattern, not bad luck; five
    # seconds rides out a restart; a minute bounds how long capacity sits idle.
    failures: int = 3
    base_s: float = 5.0
    max_s: float = 60.0

    def ejection_s(self, ejections_in_a_row: int) -> float:
        """How long the next ejection lasts after `ejections_in_a_row` before it."""
        return min(self.base_s * 2.0**ejections_in_a_row, self.max_s)


class ReplicaSet:
    """Every replica's membership, health, model info, load and ejection."""

    def __init__(
        self,
        addresses: list[str],
        telemetry: Telemetry,
        *,
        # Reopen a broken watch soon, then no more than every 5 s (RouterSettings' defaults).
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        ejection: EjectionPolicy | None = None,
        limiter: Callable[[], GradientLimiter] = GradientLimiter,
        clock: Callable[[], float] = time.monotonic,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._ejection = ejection or EjectionPolicy()
        self._new_limiter = limiter
        self.clock = clock
        self._replicas: dict[str, Replica] = {}
        # Per model asked for, its candidates indexed; rebuilt when
        # `_membership` moves on (a replica joined, left, or changed model,
        # serving, draining or ejection).
        self._pools: dict[str, ModelPool] = {}
        self._membership = 0
        self._serving_version = -1
        self._serving = False
        # Deregistered replicas waiting for their last stream to end.
        self._leaving: dict[str, asyncio.Task[None]] = {}
        # The dispatcher pumps in the same step as a change (a waiter would
        # dispatch a turn later), so listeners stay next to the signal.
        self._listeners: list[Callable[[], None]] = []
        self._changes = ChangeSignal()
        self._started = False
        # Opens nothing until `start()`: a set never started is state alone.
        self.links = ReplicaLinks(
            self,
            telemetry,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            security=security,
        )
        for address in addresses:
            self._add(address)

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
            self.links.open(replica)

    async def aclose(self) -> None:
        for address in list(self._replicas):
            await self._forget(address)
        await self.links.aclose()

    # Membership and operators' calls.

    def register(self, address: str) -> Replica:
        """Adds a replica (or returns the known one)."""
        known = self._replicas.get(address)
        if known is not None:
            return known
        replica = self._add(address)
        if self._started:
            self.links.open(replica)
        log.info("replica registered", replica=address)
        return replica

    async def deregister(self, address: str) -> int:
        """Stops new work to the replica and forgets it once its streams end;
        returns how many were still running."""
        replica = self.get(address)
        replica.draining = True
        self._changed()
        running = replica.limiter.in_flight
        if address not in self._leaving:
            self._leaving[address] = asyncio.create_task(self._forget_when_idle(replica))
        log.info("replica deregistered", replica=address, draining_streams=running)
        return running

    def drain(self, address: str, drain: bool = True) -> Replica:
        replica = self.get(address)
        replica.draining = drain
        log.info("replica drain", replica=address, draining=drain)
        self._changed()
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
        self._wake_in(seconds)
        self._changed()
        return replica

    def restore(self, address: str) -> Replica:
        """Ends an ejection now, whoever made it."""
        replica = self.get(address)
        replica.ejected_until = 0.0
        replica.consecutive_failures = 0
        replica.probing = False
        log.info("replica restored", replica=address)
        self._changed()
        return replica

    # What the links feed in.

    def set_model(
        self,
        replica: Replica,
        model: generation_pb2.ModelInfo,
        adapters: tuple[str, ...],
        max_num_seqs: int,
        adapter_slots: int = 0,
    ) -> None:
        """What the replica serves; its batch size caps its limit. The
        serving state that follows it tells the waiters."""
        replica.model = model
        replica.adapters = adapters
        replica.adapter_slots = adapter_slots
        if max_num_seqs:
            replica.limiter.cap_at(max_num_seqs)

    def set_serving(self, replica: Replica, serving: bool) -> None:
        if serving != replica.serving:
            log.info("replica state", replica=replica.address, serving=serving)
            replica.serving = serving
            self._changed()

    def set_load(self, replica: Replica, load: ReplicaLoad) -> None:
        replica.load = load
        self._changed()

    # Readiness.

    async def wait_ready(self, timeout_s: float) -> None:
        """Waits until at least one replica is serving; tests and start-up use it."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.any_serving():
                    await self._changes.wait()
        except TimeoutError:
            raise TimeoutError("no inference replica became ready") from None

    def any_serving(self) -> bool:
        # Asked at every change (serving_changes), load reports included:
        # scanned again only when membership, serving with it, has changed.
        if self._serving_version != self._membership:
            self._serving_version = self._membership
            self._serving = any(r.serving for r in self._replicas.values())
        return self._serving

    async def serving_changes(self) -> AsyncGenerator[bool, None]:
        """Yields whether any replica serves, now and at every change."""
        last: bool | None = None
        while True:
            changed = self._changes.next
            now = self.any_serving()
            if now != last:
                yield now
                last = now
            await changed.wait()

    # Choice and outcomes.

    def candidates(self, model: str) -> list[Replica]:
        """Replicas of `model` that take work now. NOT_FOUND when none serves
        the model at all, UNAVAILABLE when none of those is up, or when some
        replica has not yet told its model (ROUTER_STARTING)."""
        return list(self.pool(model).members)

    def pool(self, model: str) -> ModelPool:
        """`candidates(model)` with their running sums and heaps (pool.py);
        the same errors. The pool's members are not to be changed."""
        pool = self._pools.get(model)
        if pool is None:
            pool = self._pools[model] = ModelPool()
        now = self.clock()
        if pool.version != self._membership or now >= pool.valid_until:
            self._rebuild(pool, model, now)
        if pool.error is not None:
            # Kept only for models served: a caller's made-up names stay out.
            del self._pools[model]
            raise pool.error()
        return pool

    def _rebuild(self, pool: ModelPool, model: str, now: float) -> None:
        known = [r for r in self._replicas.values() if r.serves(model)]
        # Members change with time alone when an ejection ends.
        ends = [r.ejected_until for r in known if r.ejected_until > now]
        valid_until = min(ends, default=math.inf)
        error: Callable[[], MeshError] | None = None
        if not known:
            if any(r.model is None for r in self._replicas.values()):
                # A replica not heard from yet (a router just started) may serve it.
                error = lambda: UnavailableError(  # noqa: E731
                    f"no replica has told its model yet; {model!r} may be served",
                    reason=STARTING_REASON,
                )
            else:
                error = lambda: NotFoundError(f"no replica serves model {model!r}")  # noqa: E731
        usable = [r for r in known if r.takes_work(now)]
        if known and not usable:
            error = lambda: UnavailableError(  # noqa: E731
                f"no replica of model {model!r} is taking work right now"
            )
        pool.rebuild(usable, self._membership, valid_until, error)

    def _watch(self, replica: Replica, membership: bool) -> None:
        if membership:
            self._membership += 1
            return
        if replica.model is None:
            return
        # The pools it can be in: its model's and its adapters' (`serves`).
        pool = self._pools.get(replica.model.name)
        if pool is not None and pool.version == self._membership:
            pool.update(replica)
        for name in replica.adapters:
            pool = self._pools.get(name)
            if pool is not None and pool.version == self._membership:
                pool.update(replica)

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
            self._changed()

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
                self._changed()
            return
        replica.probing = False
        replica.consecutive_failures = 0
        seconds = self._ejection.ejection_s(replica.ejections_in_a_row)
        replica.ejections_in_a_row += 1
        replica.ejected_until = self.clock() + seconds
        log.warning("replica ejected", replica=replica.address, seconds=seconds)
        self._wake_in(seconds)
        self._changed()

    def released(self, replica: Replica) -> None:
        """A stream on `replica` ended (deregistration waits for the last).
        Only the waiters are told: the dispatcher pumps after a release itself."""
        if replica.draining and replica.limiter.in_flight == 0:
            self._changes.notify()

    def _others_take_work(self, replica: Replica, now: float) -> bool:
        """Whether another replica of `replica`'s model takes work now."""
        model = replica.model.name if replica.model is not None else None
        return any(
            r is not replica and r.takes_work(now) and (model is None or r.serves(model))
            for r in self._replicas.values()
        )

    def _add(self, address: str) -> Replica:
        replica = Replica(address, limiter=self._new_limiter())
        self._replicas[address] = replica
        replica.watcher = self._watch
        self._membership += 1
        return replica

    async def _forget_when_idle(self, replica: Replica) -> None:
        while replica.limiter.in_flight > 0:
            await self._changes.wait()
        await self._forget(replica.address)

    async def _forget(self, address: str) -> None:
        replica = self._replicas.pop(address, None)
        if replica is not None:
            replica.watcher = None
            self._membership += 1
        leaving = self._leaving.pop(address, None)
        if leaving is not None and leaving is not asyncio.current_task():
            leaving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leaving
        await self.links.close(address)
        if replica is not None:
            replica.serving = False
            self._changed()

    def _wake_in(self, seconds: float) -> None:
        # An ejected replica comes back by itself when its time is up: wake the dispatcher then.
        asyncio.get_running_loop().call_later(seconds, self._changed)

    def _changed(self) -> None:
        self._changes.notify()
        for listener in self._listeners:
            listener()
