"""The gateway's side of quotas: reserve before a request runs, settle after.

The estimate is what the request may cost: its prompt (from its size, as
the gateway does not tokenize, with the tools' schemas and the turns' tool
calls the chat template renders into it) plus what it may generate, for every choice.
Settling happens off the request path; a settle that never lands is covered
by the reservation's lease in auth.

Several auth replicas: the channel retries a call that a dying replica
dropped (UNAVAILABLE) on another one (gateway/server.py), which is safe for
every call here. Reserve: auth returns the lease a request id already holds.
Renew: extending a lease twice is extending it. Release: a second finds
nothing and frees nothing. Commit: the first attempt that reaches the store
settles and removes the reservation, so a retry after an attempt that did
land gets NOT_FOUND, read here as "already settled" (as is a lapsed lease:
nothing left to give back in either case); tokens are never given back twice."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import structlog

from gateway.usage import timestamp
from maas.v1 import anomaly_pb2, auth_pb2, auth_pb2_grpc, generation_pb2
from observability.client_spans import ClientSpans, Metadata

log = structlog.get_logger(__name__)

_AUTH = auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name

# Byte-level BPE tokenizers average three to four bytes a token on prose; three
# over-estimates, which a reservation should.
BYTES_PER_TOKEN = 3
# The JSON a template wraps each tool or tool call in
# ({"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}).
TOOL_WRAPPING_BYTES = 80


def estimate_split(
    request: generation_pb2.GenerateRequest, default_max_tokens: int
) -> tuple[int, int]:
    """The estimate as (prompt tokens, most completion tokens): money
    budgets hold each at its own price."""
    which = request.WhichOneof("input")
    if which == "prompt_token_ids":
        prompt = len(request.prompt_token_ids.ids)
    elif which == "messages":
        text = sum(_turn_bytes(m) for m in request.messages.messages) + _tools_bytes(request)
        prompt = math.ceil(text / BYTES_PER_TOKEN)
    else:
        prompt = math.ceil(len(request.prompt.encode()) / BYTES_PER_TOKEN)
    completion = request.max_tokens if request.HasField("max_tokens") else default_max_tokens
    choices = request.n if request.HasField("n") else 1
    return prompt, completion * max(choices, 1)


def _turn_bytes(turn: generation_pb2.ChatMessage) -> int:
    """One chat turn as the template renders it, with its tool calls."""
    # 8: the chat template's markers around each message, as bytes (about three tokens).
    size = len(turn.content.encode()) + len(turn.role.encode()) + 8
    size += len(turn.tool_call_id.encode())
    for call in turn.tool_calls:
        size += (
            len(call.id.encode())
            + len(call.name.encode())
            + len(call.arguments.encode())
            + TOOL_WRAPPING_BYTES
        )
    return size


def _tools_bytes(request: generation_pb2.GenerateRequest) -> int:
    """The tools and tool_choice as the chat template renders them into the
    prompt: every schema costs prompt tokens, whether or not one is called."""
    size = len(request.tool_choice.function.encode())
    for tool in request.tools:
        size += (
            len(tool.name.encode())
            + len(tool.description.encode())
            + len(tool.parameters.encode())
            + TOOL_WRAPPING_BYTES
        )
    return size


def budget_event(crossing: auth_pb2.BudgetCrossing) -> anomaly_pb2.Event:
    """The anomaly event that raises a crossed budget's `budget_threshold` alert."""
    return anomaly_pb2.Event(
        kind=anomaly_pb2.EVENT_KIND_BUDGET_THRESHOLD,
        time=timestamp(time.time()),
        tenant_id=crossing.tenant_id,
        key_id=crossing.key_id,
        budget=crossing.budget,
        spent_micros=crossing.spent_micros,
        threshold_micros=crossing.threshold_micros,
    )


@dataclass(frozen=True)
class Lease:
    """A reservation held in auth; it lapses unless renewed within `period_s`."""

    reservation_id: str
    period_s: float
    # What it was for: a release names them, so auth can free the key even
    # if it has forgotten the reservation.
    tenant_id: str = ""
    request_id: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class Used:
    """What a request produced, as Commit charges it."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class QuotaClient:
    def __init__(
        self,
        stub: auth_pb2_grpc.AuthAsyncStub,
        *,
        timeout_s: float = 3.0,
        on_crossed: Callable[[auth_pb2.BudgetCrossing], object] | None = None,
        spans: ClientSpans | None = None,
    ) -> None:
        """`on_crossed` hears of each budget whose soft threshold a commit crossed.
        `spans`: `stub`'s channel has no client interceptors (two calls a
        request: their layers cost more than the calls' own work); each call
        starts its span and sends its metadata with these."""
        self._stub = stub
        self._spans = spans
        self._timeout_s = timeout_s
        self._on_crossed = on_crossed
        self._pending: set[asyncio.Task[None]] = set()

    async def reserve(
        self,
        tenant_id: str,
        request_id: str,
        model: str,
        estimated_tokens: int,
        key_id: str = "",
        idempotency_key: str = "",
        *,
        prompt_tokens: int = 0,
        max_completion_tokens: int = 0,
    ) -> Lease:
        """The reservation id; the limit's status (with its details) when over
        it, ABORTED or ALREADY_EXISTS when the idempotency key is taken."""
        with self._traced("Reserve") as metadata:
            reservation = await self._stub.Reserve(
                auth_pb2.ReserveRequest(
                    tenant_id=tenant_id,
                    request_id=request_id,
                    model=model,
                    estimated_tokens=estimated_tokens,
                    key_id=key_id,
                    idempotency_key=idempotency_key,
                    prompt_tokens=prompt_tokens,
                    max_completion_tokens=max_completion_tokens,
                ),
                timeout=self._timeout_s,
                metadata=metadata,
            )
        return Lease(
            reservation.reservation_id,
            reservation.lease.ToNanoseconds() / 1e9,
            tenant_id=tenant_id,
            request_id=request_id,
            idempotency_key=idempotency_key,
        )

    def hold(self, lease: Lease) -> Renewal:
        """Renews the lease every third of its period until `stop()` (the
        request ended), so that only a dead gateway's lease lapses."""
        return Renewal(self, lease)

    async def renew(self, lease: Lease) -> bool:
        """Renews the lease once; False when auth no longer holds it."""
        try:
            with self._traced("Renew") as metadata:
                await self._stub.Renew(
                    auth_pb2.RenewRequest(reservation_id=lease.reservation_id),
                    timeout=self._timeout_s,
                    metadata=metadata,
                )
        except grpc.aio.AioRpcError as err:
            log.warning("reservation not renewed", code=err.code().name)
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False  # lapsed (or auth restarted): nothing left to keep
        return True

    def settle(self, lease: Lease, used: Used | int | None) -> None:
        """Commits `used` (tokens with their split, or a bare count), or
        releases when None (nothing ran); returns at once."""
        task = asyncio.create_task(self._settle(lease, used))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, lease: Lease, used: Used | int | None) -> None:
        try:
            if used is None:
                with self._traced("Release") as metadata:
                    await self._stub.Release(
                        auth_pb2.ReleaseRequest(
                            reservation_id=lease.reservation_id,
                            tenant_id=lease.tenant_id,
                            request_id=lease.request_id,
                            idempotency_key=lease.idempotency_key,
                        ),
                        timeout=self._timeout_s,
                        metadata=metadata,
                    )
            else:
                request = auth_pb2.CommitRequest(reservation_id=lease.reservation_id)
                if isinstance(used, Used):
                    request.used_tokens = used.tokens
                    request.prompt_tokens = used.prompt_tokens
                    request.cached_tokens = used.cached_tokens
                    request.completion_tokens = used.completion_tokens
                else:
                    request.used_tokens = used
                with self._traced("Commit") as metadata:
                    committed = await self._stub.Commit(
                        request, timeout=self._timeout_s, metadata=metadata
                    )
                if self._on_crossed is not None:
                    for crossing in committed.crossed:
                        self._on_crossed(crossing)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                # Settled already (an attempt that reached a replica which died
                # before answering, retried on another) or lapsed: either way
                # nothing is left to give back, and settling twice is impossible.
                log.info("reservation already settled or lapsed", code=err.code().name)
                return
            log.warning("reservation not settled; its lease will lapse", code=err.code().name)

    @contextmanager
    def _traced(self, method: str) -> Iterator[Metadata | None]:
        """The metadata of a call to auth's `method`, traced when `spans` was given."""
        if self._spans is None:
            yield None
            return
        with self._spans.call(f"/{_AUTH}/{method}") as metadata:
            yield metadata

    async def aclose(self, timeout_s: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)


class Renewal:
    """A lease renewed every third of its period until `stop()`: a timer
    between renewals and a task only while one is under way, so a request
    shorter than a third of the lease (most) costs no task at all."""

    def __init__(self, quotas: QuotaClient, lease: Lease) -> None:
        self._quotas = quotas
        self._lease = lease
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._schedule()

    def _schedule(self) -> None:
        # A lease period of 0: an auth that does not tell it; nothing to renew.
        if self._lease.period_s > 0 and not self._stopped:
            self._timer = self._loop.call_later(self._lease.period_s / 3, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        if await self._quotas.renew(self._lease):
            self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
