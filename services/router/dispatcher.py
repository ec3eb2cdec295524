"""Admission and dispatch: a request waits in its model's fair queue until a
replica of that model has room, then holds a lease on that replica until its
stream ends. Testable without gRPC: it sees replicas only through their
limiters, reported load and state."""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from services.common.errors import (
    DeadlineExceededError,
    MeshError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.router.choice import choose_for_adapter_in, choose_in, round_robin
from services.router.fair_queue import Entry, FairQueue, QueueFullError
from services.router.headroom import LightHeadroom
from services.router.limiter import Ewma, RecentQuantile
from services.router.pool import ModelPool
from services.router.replica import Replica
from services.router.replicas import ReplicaSet
from services.router.spec import STOPPING_REASON
from services.router.tenants import ActiveTenants

# Tenants remembered per model for the reserve's fair share: enough for every
# tenant active in a minute on a busy mesh, bounded against made-up tenant ids.
MAX_REMEMBERED_TENANTS = 10_000
# Recent stream lengths behind the retry-after estimate, and how long a lease
# lasts per token: a few dozen, so both follow a change of workload within
# seconds without jumping at one odd stream.
DURATION_WINDOW = 40
S_PER_TOKEN_WINDOW = 64
# A high quantile, not a mean: a request dispatched with just the mean left
# before its deadline is cut mid-stream half the time.
S_PER_TOKEN_QUANTILE = 0.9
# Bounds on the retry-after a shed caller is told: at least a moment (never
# "retry at once"), at most the longest a request waits without a deadline.
MIN_RETRY_AFTER_S = 0.1
MAX_RETRY_AFTER_S = 30.0
# What a request refused by a stopping router is told to wait: about a
# router's restart to SERVING (bench/router_restart.py measured 1-2 s).
RESTART_RETRY_AFTER_S = 1.0


class RouterStoppingError(UnavailableError):
    """The router is stopping: a request it had not yet placed on a replica
    is refused, retryable (nothing reached a replica), with when to retry."""

    def __init__(self, retry_after_s: float = RESTART_RETRY_AFTER_S) -> None:
        super().__init__(
            "the router is restarting; the request reached no replica, retry it",
            reason=STOPPING_REASON,
        )
        self.retry_after_s = retry_after_s

    def details(self) -> Sequence[Message]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        return (error_details_pb2.RetryInfo(retry_delay=delay),)


@dataclass(frozen=True)
class FlowPolicy:
    """The knobs of admission; RouterSettings fills them."""

    # Waiting requests per model: some seconds of a busy mesh's work, bounded
    # so a flood is refused at once rather than queued past its usefulness.
    max_queue: int = 1024
    # Per tenant and model: a quarter of the queue, so one tenant cannot fill it.
    max_queue_per_tenant: int = 256
    # A waiting request gains one priority class per this: batch work waits, never starves.
    aging_s: float = 5.0
    # For requests that carry no deadline: about as long as a client waits.
    max_queue_wait_s: float = 30.0
    # How far past its load share a prefix-preferred replica may go: a cache
    # hit is worth a little imbalance, not a hot spot.
    affinity_slack: float = 0.25
    # The least time to first token assumed when shedding for a deadline: a
    # prefill is never free.
    min_first_token_s: float = 0.05
    # "affinity": least utilized with prefix affinity; "least_loaded": without
    # affinity; "round_robin": in turn (a baseline for benchmarks).
    choice: Literal["affinity", "least_loaded", "round_robin"] = "affinity"
    # Share of each replica's slots kept for tenants holding fewer slots than
    # their fair share among the tenants seen in the last `tenant_memory_s`: a
    # light tenant's request starts at once even while a flood keeps every
    # other slot busy (slots can stay busy for seconds: equal-length requests
    # free up together). A tenant alone uses every slot. A tenth: a light
    # tenant's few requests, at a small cost to a flood.
    reserved_share: float = 0.1
    # A minute: long enough to cover a light tenant's pause between requests.
    tenant_memory_s: float = 60.0
    # Free slots kept for light tenants while they run, in square roots of
    # the slots they hold (headroom.py): 2 leaves one of about 50 of their
    # arrivals without a free slot. 0: only the reserve.
    light_headroom: float = 2.0
    # Requests with a private adapter prefer replicas holding it loaded, then
    # ones with a free adapter slot (choose_for_adapter). Off: `choice` alone,
    # adapters ignored (a baseline for benchmarks).
    adapter_affinity: bool = True
    # An adapter no request has used for this long may be evicted for
    # another's; sooner, the other's requests wait (a request that has waited
    # this long may evict any idle one). Evicting an adapter between two of
    # its requests costs a reload for each switch; a short hold lets an
    # adapter's requests run together.
    adapter_idle_s: float = 0.3  # RouterSettings' default (see there)


@dataclass(frozen=True)
class Ticket:
    """What the dispatcher needs to know about a request."""

    tenant: str
    priority: int
    model: str
    cost: float  # estimated tokens
    weight: float = 1.0
    deadline: float | None = None  # on the replica set's clock
    prefix_key: int | None = None
    exclude: frozenset[str] = frozenset()  # replicas that already failed it
    adapter_id: str = ""  # a tenant's private adapter ("": the base model)
    received_at: float | None = None  # on the replica set's clock


class StreamEnd(enum.Enum):
    """How a leased stream ended."""

    # Ran to its end: its length is a sample of how long requests hold a replica.
    FINISHED = "finished"
    # Cut short or never started, not by the replica's fault (a cancel, a
    # deadline, an abort, the caller's own error): its length says nothing.
    CUT = "cut"
    # The replica's own fault, never its caller's: counts towards ejecting it.
    REPLICA_FAILED = "replica_failed"


@dataclass(frozen=True)
class Outcome:
    """What a lease's stream told about its replica. `first_token_s` (dispatch
    to first chunk) and `queued_s` (the engine's queueing, as the replica
    reported it) feed the replica's limiter: a first chunk is a true measure
    of the replica however the stream ended later, and a stream cut before
    one gives none."""

    end: StreamEnd
    first_token_s: float | None = None
    queued_s: float = 0.0


# A lease handed back unused: nothing learnt about its replica.
UNUSED = Outcome(StreamEnd.CUT)


@dataclass(eq=False)
class Lease:
    """A request's hold on a replica, from dispatch to the end of its stream."""

    replica: Replica
    ticket: Ticket
    queued_s: float
    dispatched_at: float
    # Order among the replica's waiting requests, lower first: the priority
    # class, then whether the tenant held less than its fair share of slots.
    engine_priority: int = 0
    released: bool = field(default=False)


class Dispatcher:
    def __init__(self, replicas: ReplicaSet, policy: FlowPolicy | None = None) -> None:
        self._replicas = replicas
        self._policy = policy or FlowPolicy()
        self._clock = replicas.clock
        self._queues: dict[str, FairQueue] = {}
        self._duration_s = Ewma(window=DURATION_WINDOW)
        # Seconds a lease lasts per estimated token, over recent streams that
        # ran to their end: with a request's estimate, how long it will hold a
        # replica.
        self._s_per_token = RecentQuantile(window=S_PER_TOKEN_WINDOW, q=S_PER_TOKEN_QUANTILE)
        self._pumping = False
        self._pump_again = False
        self._turn = itertools.count()
        # Per model, the tenants sharing its slots (for the reserve) and the
        # requests each holds.
        self._tenants: dict[str, ActiveTenants] = {}
        self._headroom: dict[str, LightHeadroom] = {}
        self.shed: Counter[str] = Counter()
        self.on_shed: Callable[[str], None] = lambda reason: None
        self._stopping = False
        self._hold_timer: asyncio.TimerHandle | None = None
        # Within one model's pump, the queue's entries found unplaceable
        # (by id; the entry kept so its id is not reused), and the fair share
        # and light headroom they were judged under (_blocked_still).
        self._blocked: dict[int, Entry] = {}
        self._blocked_under: tuple[float, int] = (0.0, 0)
        # Whether the last _from_reserve found every waiting head blocked,
        # each of a tenant under its share: then _place, which past the head
        # tries the same heads (and does no more for a tenant under its
        # share), would find none, and the second scan is spared.
        self._every_head_blocked = False
        replicas.on_change(self.pump)

    @property
    def queues(self) -> dict[str, FairQueue]:
        return self._queues

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def stop(self) -> int:
        """Refuses every request not yet placed, those waiting and those still
        to come, with a retryable UNAVAILABLE (the router is stopping); leases
        already granted run on. Returns how many waiting requests it refused."""
        self._stopping = True
        refused = 0
        for queue in self._queues.values():
            while (entry := queue.pop()) is not None:
                future = entry.item[1]
                if not future.done():
                    future.set_exception(RouterStoppingError())
                    refused += 1
        return refused

    async def acquire(self, ticket: Ticket) -> Lease:
        """A lease on a replica for `ticket`, at once when one has room and
        nobody is waiting ahead, else after its turn in the queue.
        RESOURCE_EXHAUSTED when the queue is full, DEADLINE_EXCEEDED when its
        deadline passes (or cannot be met) while it waits; UNAVAILABLE
        (retryable) once the router is stopping."""
        if self._stopping:
            raise RouterStoppingError()
        candidates = self._replicas.pool(ticket.model)
        self._saw(ticket)
        now = self._clock()
        wait_s = self._policy.max_queue_wait_s
        if ticket.deadline is not None:
            # Leave the replica the time it needs to finish: a request that
            # would hit its deadline mid-stream wastes the replica's work.
            wait_s = min(wait_s, ticket.deadline - now - self._run_time_s(ticket, candidates))
            if wait_s <= 0:
                raise self._shed("deadline", DeadlineExceededError("the deadline cannot be met"))
        queue = self._queues.get(ticket.model)
        if not queue:
            replica = self._place(candidates, ticket)
            if replica is not None:
                return self._grant(replica, ticket, now, now, candidates)
        if queue is None:
            queue = self._queues[ticket.model] = FairQueue(
                max_total=self._policy.max_queue,
                max_per_tenant=self._policy.max_queue_per_tenant,
                aging_s=self._policy.aging_s,
                clock=self._clock,
                on_tenant=self._waiting_changed(ticket.model),
            )
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        try:
            entry = queue.push(
                ticket.tenant, ticket.priority, ticket.cost, ticket.weight, (ticket, future)
            )
        except QueueFullError as err:
            raise self._shed(
                err.reason,
                ResourceExhaustedError(
                    f"the router's queue for {ticket.model!r} is full ({err.reason})",
                    retry_after_s=self._retry_after(queue, candidates),
                    subject=f"router:{err.reason}",
                ),
            ) from None
        self.pump()
        try:
            done, _ = await asyncio.wait({future}, timeout=wait_s)
        except asyncio.CancelledError:
            self._abandon(queue, entry, future)
            raise
        if not done:
            self._abandon(queue, entry, future)
            if ticket.deadline is not None:
                raise self._shed(
                    "deadline", DeadlineExceededError("the deadline passed while queued")
                )
            raise self._shed(
                "queue_timeout",
                ResourceExhaustedError(
                    f"waited {wait_s:.0f} s for a replica of {ticket.model!r}",
                    retry_after_s=self._retry_after(queue, candidates),
                    subject="router:queue_timeout",
                ),
            )
        return future.result()

    def release(self, lease: Lease, outcome: Outcome) -> None:
        """Ends the lease; `outcome` feeds the replica's limiter, its ejection
        count and the estimate of how long requests hold a replica (only from
        streams that ran to their end: cut ones would make them look short)."""
        if lease.released:
            return
        lease.released = True
        replica = lease.replica
        first_token_s = outcome.first_token_s
        if first_token_s is not None:
            replica.limiter.on_sample(first_token_s, replica.limiter.in_flight, outcome.queued_s)
        replica.limiter.release()
        if lease.ticket.adapter_id:
            replica.adapter_ended(lease.ticket.adapter_id, self._clock())
        self._tenants_of(lease.ticket.model).ended(lease.ticket.tenant)
        self._headroom_of(lease.ticket.model).ended(lease.ticket.tenant)
        self._replicas.released(replica)
        if outcome.end is StreamEnd.REPLICA_FAILED:
            self._replicas.record_failure(replica)
        elif first_token_s is not None:
            self._replicas.record_success(replica)
        if outcome.end is StreamEnd.FINISHED:
            held_s = self._clock() - lease.dispatched_at
            self._duration_s.add(held_s)
            self._s_per_token.add(held_s / max(1.0, lease.ticket.cost))
        self.pump()

    def pump(self) -> None:
        """Dispatches waiting requests while replicas have room."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                for model, queue in list(self._queues.items()):
                    self._pump_model(model, queue)
        finally:
            self._pumping = False

    def _pump_model(self, model: str, queue: FairQueue) -> None:
        # Placing a request only uses up room, so a request found blocked
        # stays blocked for the rest of the pump, but for what _grant and
        # _blocked_still clear it on: each scan past the head then skips the
        # heads it already tried, instead of trying every tenant's again.
        self._blocked.clear()
        self._blocked_under = (0.0, 0)
        while (entry := queue.peek()) is not None:
            ticket, future = entry.item
            if future.done():
                queue.remove(entry)
                continue
            try:
                candidates = self._replicas.pool(model)
            except NotFoundError as err:
                # The model is gone altogether: nobody waiting for it will be served.
                while (gone := queue.pop()) is not None:
                    if not gone.item[1].done():
                        gone.item[1].set_exception(err)
                return
            except MeshError:
                return  # none up right now; they may come back
            now = self._clock()
            if self._too_late(ticket, candidates, now):
                # Its estimate grew while it waited: shed now, not mid-stream.
                queue.remove(entry)
                future.set_exception(
                    self._shed("deadline", DeadlineExceededError("the deadline cannot be met"))
                )
                continue
            replica = None
            if id(entry) in self._blocked:
                self._blocked_still(model, self._fair_share(model, candidates))
            if id(entry) not in self._blocked:
                replica = self._place(candidates, ticket)
            if replica is None:
                # The head waits for a slot; a tenant under its fair share of
                # slots may still use the reserve, whatever its place in line.
                entry, replica = self._from_reserve(model, candidates, queue)
                if (
                    (entry is None or replica is None)
                    and ticket.adapter_id
                    and not self._every_head_blocked
                ):
                    # The head waits for an adapter slot, not for room: the
                    # other tenants' requests need not wait behind it.
                    entry, replica = self._past_adapter_head(candidates, queue)
                if entry is None or replica is None:
                    return
                ticket, future = entry.item
            queue.take(entry)
            future.set_result(self._grant(replica, ticket, entry.enqueued_at, now, candidates))

    def _run_time_s(self, ticket: Ticket, candidates: ModelPool) -> float:
        """How long `ticket` will hold a replica, erring long."""
        return max(
            self._policy.min_first_token_s,
            candidates.min_expected_latency(),
            ticket.cost * (self._s_per_token.value or 0.0),
        )

    def _too_late(self, ticket: Ticket, candidates: ModelPool, now: float) -> bool:
        """Whether `ticket` would hit its deadline before its stream could end."""
        return ticket.deadline is not None and ticket.deadline - now < self._run_time_s(
            ticket, candidates
        )

    def _place(self, candidates: ModelPool, ticket: Ticket) -> Replica | None:
        """A replica for `ticket`: outside the reserve, or inside it while the
        ticket's tenant holds fewer slots than its fair share; for a tenant
        at or over its share, only while the light tenants' headroom stays free."""
        under = self._holds_less_than(ticket, self._fair_share(ticket.model, candidates))
        replica = None
        if under or self._leaves_headroom(ticket.model, candidates):
            replica = self._choose(candidates, ticket, self._policy.reserved_share)
        if replica is None and under:
            replica = self._choose(candidates, ticket, 0.0)
        if replica is None and not under:
            self._flooding(ticket)
        return replica

    def _flooding(self, ticket: Ticket) -> None:
        self._headroom_of(ticket.model).flooding(ticket.tenant)

    def _leaves_headroom(self, model: str, candidates: ModelPool) -> bool:
        """Whether one more slot taken leaves the light tenants' headroom free."""
        keep = self._headroom_of(model).to_keep_free()
        if keep == 0:
            return True
        return candidates.free - 1 >= keep

    def _waiting_changed(self, model: str) -> Callable[[str, bool], None]:
        tenants, headroom = self._tenants_of(model), self._headroom_of(model)

        def changed(tenant: str, waits: bool) -> None:
            tenants.waiting(tenant, waits)
            if not waits:
                headroom.drained(tenant)

        return changed

    def _headroom_of(self, model: str) -> LightHeadroom:
        headroom = self._headroom.get(model)
        if headroom is None:
            headroom = self._headroom[model] = LightHeadroom(self._policy.light_headroom)
        return headroom

    def _from_reserve(
        self, model: str, candidates: ModelPool, queue: FairQueue
    ) -> tuple[Entry | None, Replica | None]:
        self._every_head_blocked = False
        if not candidates.any_room():
            return None, None  # no slot free, reserve or not: nobody to try
        share = self._fair_share(model, candidates)
        self._blocked_still(model, share)
        placeable = self._placeable_adapters(candidates)
        every_head_blocked = True
        for head in queue.tenant_heads():
            ticket, future = head.item
            if future.done():
                continue
            if not self._holds_less_than(ticket, share):
                every_head_blocked = False
                continue
            if id(head) in self._blocked:
                continue
            if not self._ruled_out(ticket, placeable):
                replica = self._choose(candidates, ticket, 0.0)
                if replica is not None:
                    return head, replica
            # Under its share, with no slot even in the reserve: _place finds none either.
            self._blocked[id(head)] = head
        self._every_head_blocked = every_head_blocked
        return None, None

    def _past_adapter_head(
        self, candidates: ModelPool, queue: FairQueue
    ) -> tuple[Entry | None, Replica | None]:
        """The first tenant's head, in the queue's order, that can be placed now."""
        if not candidates.any_room():
            return None, None
        placeable = self._placeable_adapters(candidates)
        share: float | None = None
        for head in queue.tenant_heads():
            ticket, future = head.item
            if future.done():
                continue
            if share is None:
                share = self._fair_share(ticket.model, candidates)
                self._blocked_still(ticket.model, share)
            if id(head) in self._blocked:
                continue
            if self._ruled_out(ticket, placeable):
                # What _place does for it, without the choice it would lose:
                # a tenant at its share that must queue for more is a flood
                # (the same mark as before the skip, so the light headroom
                # does not depend on which heads were tried).
                if not self._holds_less_than(ticket, share):
                    self._flooding(ticket)
            else:
                replica = self._place(candidates, ticket)
                if replica is not None:
                    return head, replica
            self._blocked[id(head)] = head
        return None, None

    def _placeable_adapters(self, candidates: ModelPool) -> Callable[[str], bool] | None:
        """Whether a request with an adapter could be placed now, judged by its
        adapter alone, or None when any could. When no replica with room has
        a free adapter slot or one to evict, a request can go only where its
        adapter is held. Generous, so it never rules out a request that could
        be placed: room whatever the reserve, eviction with no idle wait,
        every replica whatever a request excludes, and none ruled out while a
        replica has no adapter slots (a request that excludes the others goes
        there). From the pool's adapter heaps: no scan of the replicas."""
        if not self._policy.adapter_affinity or not candidates.all_have_adapter_slots():
            return None
        anyone: frozenset[str] = frozenset()
        free = candidates.first_with_free_adapter_slot(anyone)
        if free is not None and free.has_room():
            return None
        now = self._clock()
        if any(r.has_room() and r.can_evict_adapter(now) for r in candidates.with_idle_adapter()):
            return None

        def held_with_room(adapter_id: str) -> bool:
            holder = candidates.first_holding(adapter_id, anyone)
            return holder is not None and holder.has_room()

        return held_with_room

    @staticmethod
    def _ruled_out(ticket: Ticket, placeable: Callable[[str], bool] | None) -> bool:
        if placeable is None or not ticket.adapter_id:
            return False
        return not placeable(ticket.adapter_id)

    def _blocked_still(self, model: str, share: float) -> None:
        """Forgets the requests found blocked if a larger fair share or less
        light headroom to keep could now let one of them through (a tenant
        forgotten, a flood marked); a smaller share or more headroom only
        blocks more."""
        keep = self._headroom_of(model).to_keep_free()
        if share > self._blocked_under[0] or keep < self._blocked_under[1]:
            self._blocked.clear()
        self._blocked_under = (share, keep)

    def _fair_share(self, model: str, candidates: ModelPool) -> float:
        """Slots per tenant, over the tenants running, waiting, or seen in the
        last `tenant_memory_s`: the reserve is headroom for tenants that come
        and go (a light tenant between two requests). 0 with no reserve."""
        if self._policy.reserved_share <= 0:
            return 0.0
        # The model's queue tells its tenants as they come and go.
        tenants = self._tenants_of(model).count(self._clock())
        return candidates.slots / max(1, tenants)

    def _holds_less_than(self, ticket: Ticket, share: float) -> bool:
        return self._tenants_of(ticket.model).running(ticket.tenant) < share

    def _saw(self, ticket: Ticket) -> None:
        self._tenants_of(ticket.model).saw(ticket.tenant, self._clock())

    def _tenants_of(self, model: str) -> ActiveTenants:
        tenants = self._tenants.get(model)
        if tenants is None:
            tenants = self._tenants[model] = ActiveTenants(
                memory_s=self._policy.tenant_memory_s, max_remembered=MAX_REMEMBERED_TENANTS
            )
        return tenants

    def _choose(
        self, candidates: ModelPool, ticket: Ticket, reserve_share: float
    ) -> Replica | None:
        if ticket.adapter_id and self._policy.adapter_affinity:
            return self._choose_for_adapter(candidates, ticket, reserve_share)
        if self._policy.choice == "round_robin":
            if not candidates.any_room():
                return None  # no slot anywhere: spare the scan
            return round_robin(
                candidates.members,
                next(self._turn),
                exclude=ticket.exclude,
                reserve_share=reserve_share,
            )
        key = ticket.prefix_key if self._policy.choice == "affinity" else None
        return choose_in(
            candidates,
            key,
            slack=self._policy.affinity_slack,
            exclude=ticket.exclude,
            reserve_share=reserve_share,
        )

    def _choose_for_adapter(
        self, candidates: ModelPool, ticket: Ticket, reserve_share: float
    ) -> Replica | None:
        now = self._clock()
        hold_s = self._policy.adapter_idle_s
        waited_s = now - ticket.received_at if ticket.received_at is not None else 0.0
        # No slot anywhere: None, as the scan would find, without it.
        replica = None
        if candidates.any_room():
            replica = choose_for_adapter_in(
                candidates,
                ticket.adapter_id,
                now=now,
                min_idle_s=max(0.0, hold_s - waited_s),
                exclude=ticket.exclude,
                reserve_share=reserve_share,
            )
        if replica is None and hold_s > 0 and self._hold_timer is None:
            # Idle adapters turn evictable with time alone: look again then.
            self._hold_timer = asyncio.get_running_loop().call_later(hold_s, self._hold_ended)
        return replica

    def _hold_ended(self) -> None:
        self._hold_timer = None
        self.pump()

    def _grant(
        self,
        replica: Replica,
        ticket: Ticket,
        queued_at: float,
        now: float,
        candidates: ModelPool,
    ) -> Lease:
        # A tenant under its fair share goes ahead of the others in the
        # engine's own queue too: requests dispatched together (a flood's wave
        # as equal-length requests end together) would otherwise prefill
        # before a light tenant's request that came a moment later.
        under_share = self._holds_less_than(ticket, self._fair_share(ticket.model, candidates))
        tenants = self._tenants_of(ticket.model)
        headroom = self._headroom_of(ticket.model)
        # A flood under its share (refilling after its requests ended
        # together) is not light: it would claim the headroom.
        if under_share and headroom.is_light(ticket.tenant):
            headroom.started(ticket.tenant)
        replica.limiter.acquire()
        if ticket.adapter_id:
            if not replica.holds(ticket.adapter_id):
                # A new adapter there: its other requests, found blocked, may go now.
                self._blocked.clear()
            replica.adapter_started(ticket.adapter_id)
        tenants.started(ticket.tenant)
        return Lease(
            replica,
            ticket,
            queued_s=now - queued_at,
            dispatched_at=now,
            # Two engine priorities per class: under its share first, then the rest.
            engine_priority=2 * ticket.priority + (0 if under_share else 1),
        )

    def _abandon(self, queue: FairQueue, entry: Entry, future: asyncio.Future[Lease]) -> None:
        queue.remove(entry)
        if future.done() and not future.cancelled() and future.exception() is None:
            # Granted in the same instant the caller gave up: hand it back.
            self.release(future.result(), UNUSED)
        else:
            future.cancel()

    def _retry_after(self, queue: FairQueue, candidates: ModelPool) -> float:
        """About how long the queue ahead takes to drain."""
        slots = max(1.0, candidates.slots)
        # With no stream measured yet, a second a stream is a modest first guess.
        held_s = self._duration_s.value or 1.0
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, len(queue) * held_s / slots))

    def _shed(self, reason: str, error: MeshError) -> MeshError:
        self.shed[reason] += 1
        self.on_shed(reason)
        return error
