"""The gateway's request path, free of any transport: authenticate, validate,
reserve quota, route, stream, settle usage through the outbox, report to
anomaly. The gRPC servicer and the OpenAI-compatible HTTP face both call it,
so both get the same auth, quotas, routing, metering and tracing.

Failures are raised as `MeshError`s (a downstream hop's status as a
`RemoteError`, its details kept); each transport maps them onto its own wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from gateway.adapters import AdapterGate, UnimplementedError
from gateway.authn import Authenticator, within
from gateway.constraints import ConstraintChecker
from gateway.embeddings import check_embed_against_model, estimate_embed_tokens, validate_embed
from gateway.metrics import GatewayMetrics
from gateway.model_limits import ModelCatalog
from gateway.model_prices import PriceBook, with_prices
from gateway.outbox import UsageOutbox
from gateway.quota import QuotaClient, Used, estimate_split
from gateway.refusal_holds import RefusalHolds
from gateway.refusals import CALLER_REFUSALS, RefusalBudget, peer_host, read_budget
from gateway.routes import Proxy, Routing
from gateway.tool_calls import ToolCallStream, constrains, schema_field
from gateway.usage import StreamUsage, timestamp
from gateway.validation import check_against_model, validate_generate, validate_input
from maas.v1 import (
    adapter_pb2,
    anomaly_pb2,
    auth_pb2,
    embedding_pb2,
    gateway_pb2,
    generation_pb2,
    metering_pb2,
    metering_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    usage_pb2,
)
from observability.context import (
    bind_request,
    current_request_id,
    new_request_id,
    valid_client_request_id,
)
from services.common.errors import (
    InvalidArgumentError,
    MeshError,
    UnauthenticatedError,
    error_from_rpc,
    remote_errors,
)
from services.common.events import EventPublisher
from services.common.generation_limits import completion_limit


@dataclass(frozen=True)
class Caller:
    """What a transport knows of a call before the core looks at it."""

    # The `authorization` header or metadata, as sent: "Bearer <api key>".
    credentials: str | None
    # Where the call comes from, in gRPC's form ("ipv4:10.0.0.7:53122").
    peer: str
    # Seconds the caller will wait; None: no deadline.
    deadline_s: float | None = None
    # The caller's own x-request-id, as sent (a label, never the request's id).
    client_request_id: str | None = None
    # Done once the client has gone away, where that does not cancel the
    # call's task (HTTP); lets a held refusal go (refusal_holds.py).
    gone: asyncio.Future[None] | None = None
    # The request's size as received (its body over HTTP), where the
    # transport knows it: what holding its refusal keeps (refusal_holds.py).
    request_bytes: int = 0


class _Deadline:
    def __init__(self, seconds: float | None) -> None:
        self._at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())


def check_client_request_id(caller: Caller) -> None:
    if caller.client_request_id is not None and not valid_client_request_id(
        caller.client_request_id
    ):
        raise InvalidArgumentError(
            "x-request-id", "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'"
        )


def request_id_for_call() -> str:
    """The current call's request id (the edge mints one for every call; made
    and bound here if none was)."""
    request_id = current_request_id()
    if request_id is None:
        request_id = new_request_id()
        bind_request(request_id)
    return request_id


class GatewayCore:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        router: router_pb2_grpc.RouterAsyncStub,
        # How generations reach replicas; through the router's Generate when None.
        routing: Routing | None = None,
        metering: metering_pb2_grpc.MeteringAsyncStub,
        usage: UsageOutbox,
        events: EventPublisher,
        metrics: GatewayMetrics,
        quotas: QuotaClient,
        catalog: ModelCatalog,
        constraints: ConstraintChecker | None = None,
        # Where listed models' prices come from; None: listed unpriced-unknown.
        prices: PriceBook | None = None,
        # GatewaySettings.usage_progress_interval_s's default (why: see there).
        progress_interval_s: float = 5.0,
        refusals: RefusalBudget,
        auth_failures: RefusalBudget,
        # Tenants' private adapters (the registry in auth); None: none are served.
        adapters: AdapterGate | None = None,
        # Per tenant, calls that query auth beyond the key (see refusals.py).
        reads: RefusalBudget | None = None,
        # Where refusals of spent budgets wait before they are answered.
        holds: RefusalHolds | None = None,
    ) -> None:
        self._holds = holds or RefusalHolds()
        self._adapters = adapters
        self._reads = reads or read_budget()
        self._refusals = refusals
        self._auth_failures = auth_failures
        self._progress_interval_s = progress_interval_s
        self._authenticator = authenticator
        self._router = router
        self._routing: Routing = routing or Proxy(router)
        self._metering = metering
        self._usage = usage
        self._events = events
        self._metrics = metrics
        self._quotas = quotas
        self._catalog = catalog
        self._constraints = constraints
        self._prices = prices

    async def generate(
        self, caller: Caller, request: generation_pb2.GenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        """Streams the generation's chunks. Close the generator (or cancel the
        task iterating it) to stop generating; what was produced is billed."""
        deadline = _Deadline(caller.deadline_s)
        principal = await self.authenticate(caller, "generate")
        # A tenant whose requests keep being refused is refused unread for a
        # while, the refusal held for the wait (see refusals.py and
        # refusal_holds.py); each refusal below spends its budget.
        await self._holds.check(self._refusals, principal.tenant_id, caller)
        with self._refusals_of(principal.tenant_id):
            check_client_request_id(caller)
            default_max_tokens, adapter_id = await self._admissible(
                request, principal.tenant_id, deadline.remaining()
            )
            request_id = request_id_for_call()
            client_request_id = caller.client_request_id or ""
            bind_request(request_id, principal.tenant_id)
            span = trace.get_current_span()
            span.set_attribute("maas.request_id", request_id)
            span.set_attribute("maas.client_request_id", client_request_id)
            span.set_attribute("maas.tenant_id", principal.tenant_id)
            prompt_estimate, completion_limit_all = estimate_split(request, default_max_tokens)
            estimated = prompt_estimate + completion_limit_all
            with remote_errors():
                reservation = await self._quotas.reserve(
                    principal.tenant_id,
                    request_id,
                    request.model,
                    estimated,
                    principal.key_id,
                    # The caller's x-request-id: scoped to the tenant by auth.
                    idempotency_key=client_request_id,
                    prompt_tokens=prompt_estimate,
                    max_completion_tokens=completion_limit_all,
                )

        usage = StreamUsage()
        status = grpc.StatusCode.OK
        replica = ""
        route = self._routing.open(
            router_pb2.RouterGenerateRequest(
                request=request,
                context=router_pb2.RequestContext(
                    tenant_id=principal.tenant_id,
                    priority=principal.priority,
                    estimated_tokens=estimated,
                ),
                adapter_id=adapter_id,
            ),
            deadline.remaining,
        )
        progress_at = time.monotonic() + self._progress_interval_s
        renewing = self._quotas.hold(reservation)
        tool_calls = ToolCallStream(request)
        try:
            async for chunk in route.chunks():
                usage.observe(chunk)
                if time.monotonic() >= progress_at:
                    # On disk in the outbox, so a gateway killed now still bills
                    # what it streamed; the final record supersedes it.
                    progress_at = time.monotonic() + self._progress_interval_s
                    self._usage.add(
                        usage_record(
                            request_id, client_request_id, request.model, principal, usage,
                            metering_pb2.REQUEST_STATUS_RUNNING, time.time(),
                        )
                    )  # fmt: skip
                yield tool_calls.convert(chunk)
            replica = await route.replica(None)
        except (asyncio.CancelledError, GeneratorExit):
            # Cancelled, or closed by a reader that stopped reading: the caller went away.
            status = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AioRpcError as err:
            status = err.code()
            replica = await route.replica(err)
            raise error_from_rpc(err) from err
        except BaseException:
            status = grpc.StatusCode.INTERNAL
            raise
        finally:
            renewing.stop()
            used = (
                Used(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
                if usage.chunks
                else None
            )
            self._quotas.settle(reservation, used)
            self._settle(
                request_id, client_request_id, request.model, principal, usage, status, replica
            )
            # Last: stopping a replica call may await; the bill is settled already.
            await route.aclose()

    async def _admissible(
        self, request: generation_pb2.GenerateRequest, tenant_id: str, timeout_s: float | None
    ) -> tuple[int, str]:
        """Every check that needs no quota, cheapest first: fields, the model's
        limits, then the constraint's compilation. Returns the completion
        tokens a choice may use when max_tokens is unset (for the estimate),
        and the adapter_id when the model is the tenant's adapter (then
        `request.model` is its base model from here on)."""
        tools_schema = validate_generate(request)
        if tools_schema is not None:
            # A required or named tool is guided decoding against the tools'
            # schema: the replica sees a json_schema like any other.
            request.json_schema = tools_schema
        model, adapter_id = await self._model(request, tenant_id, timeout_s)
        check_against_model(request, model)
        if self._constraints is not None:
            constraint = request.WhichOneof("constraint")
            if constraint == "regex":
                await self._constraints.check("regex", request.regex)
            elif constraint == "json_schema":
                try:
                    await self._constraints.check("json_schema", request.json_schema)
                except InvalidArgumentError as err:
                    if not constrains(request):
                        raise
                    # The schema is the tools'; the caller sent no json_schema.
                    raise InvalidArgumentError(schema_field(request), err.description) from err
        # The engine allows min(default, room left); room is at most context - 1.
        return completion_limit(None, model.max_context_length - 1), adapter_id

    async def _model(
        self,
        request: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
        tenant_id: str,
        timeout_s: float | None,
    ) -> tuple[generation_pb2.ModelInfo, str]:
        """The requested model's limits, and its adapter_id when it is the
        tenant's own adapter: then `request.model` becomes its base model, so
        it is routed, reserved, recorded and billed as its base."""
        if self._adapters is None:
            return await self._catalog.model(request.model, timeout_s), ""
        model, adapter_id = await self._adapters.model(tenant_id, request.model, timeout_s)
        if adapter_id:
            request.model = model.base_model
        return model, adapter_id

    async def list_models(self, caller: Caller) -> list[generation_pb2.ModelInfo]:
        """The models some serving replica holds, adapters included, by name,
        each with its price in force (see model_prices.py)."""
        principal = await self.authenticate(caller, "generate")
        check_client_request_id(caller)
        await self._holds.spend(self._reads, principal.tenant_id, caller)
        timeout_s = within(caller.deadline_s, self._authenticator.timeout_s)
        models = await self._catalog.served(timeout_s)
        if self._prices is not None:
            models = with_prices(models, await self._prices.in_force(caller.credentials, timeout_s))
        if self._adapters is None:
            return models
        # The caller's own adapters, each with its base model's limits and price.
        return await self._adapters.listed(principal.tenant_id, models, timeout_s)

    async def count_tokens(
        self, caller: Caller, request: generation_pb2.CountTokensRequest
    ) -> generation_pb2.CountTokensResponse:
        """Tokenizing costs a replica CPU as a generation's start does, so each
        call is charged one request of the tenant's requests-per-minute
        (reserved, then released at once: no tokens are held)."""
        principal = await self.authenticate(caller, "generate")
        await self._holds.check(self._refusals, principal.tenant_id, caller)
        with self._refusals_of(principal.tenant_id):
            check_client_request_id(caller)
            validate_input(request)
            # Counted with the base model's tokenizer: an adapter shares it.
            await self._model(request, principal.tenant_id, caller.deadline_s)
            with remote_errors():
                reservation = await self._quotas.reserve(
                    principal.tenant_id, request_id_for_call(), request.model, 1, principal.key_id
                )
        self._quotas.settle(reservation, None)
        with remote_errors():
            return await self._router.CountTokens(request, timeout=caller.deadline_s)

    async def embed(
        self, caller: Caller, request: embedding_pb2.EmbedRequest
    ) -> embedding_pb2.EmbedResponse:
        """Reserved, routed and billed like a generation: by the inputs'
        tokens, with no completion."""
        deadline = _Deadline(caller.deadline_s)
        principal = await self.authenticate(caller, "generate")
        await self._holds.check(self._refusals, principal.tenant_id, caller)
        with self._refusals_of(principal.tenant_id):
            check_client_request_id(caller)
            validate_embed(request)
            model = await self._catalog.model(request.model, deadline.remaining())
            check_embed_against_model(request, model)
            request_id = request_id_for_call()
            client_request_id = caller.client_request_id or ""
            bind_request(request_id, principal.tenant_id)
            span = trace.get_current_span()
            span.set_attribute("maas.request_id", request_id)
            span.set_attribute("maas.tenant_id", principal.tenant_id)
            estimated = estimate_embed_tokens(request)
            with remote_errors():
                reservation = await self._quotas.reserve(
                    principal.tenant_id,
                    request_id,
                    request.model,
                    estimated,
                    principal.key_id,
                    idempotency_key=client_request_id,
                    prompt_tokens=estimated,
                    max_completion_tokens=0,
                )
        usage = StreamUsage()
        status = grpc.StatusCode.OK
        try:
            with remote_errors():
                response: embedding_pb2.EmbedResponse = await self._router.Embed(
                    request, timeout=deadline.remaining()
                )
        except MeshError as err:
            status = err.code
            raise
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            status = grpc.StatusCode.INTERNAL
            raise
        else:
            # One "chunk": the whole answer; its prompt tokens are the bill.
            usage.chunks = 1
            usage.prompt_tokens = response.usage.prompt_tokens
            usage.finished = True
            return response
        finally:
            self._quotas.settle(
                reservation, Used(usage.prompt_tokens, 0, 0) if usage.chunks else None
            )
            self._settle(request_id, client_request_id, request.model, principal, usage, status, "")

    async def get_usage(
        self, caller: Caller, request: gateway_pb2.GetUsageRequest
    ) -> usage_pb2.GetUsageResponse:
        """The caller's own tenant's usage, never another's."""
        principal = await self.authenticate(caller, "usage:read")
        check_client_request_id(caller)
        await self._holds.spend(self._reads, principal.tenant_id, caller)
        query = metering_pb2.MeteringGetUsageRequest(
            tenant_id=principal.tenant_id, group_by=request.group_by
        )
        if request.HasField("start_time"):
            query.start_time.CopyFrom(request.start_time)
        if request.HasField("end_time"):
            query.end_time.CopyFrom(request.end_time)
        with remote_errors():
            return await self._metering.GetUsage(
                query, timeout=within(caller.deadline_s, self._authenticator.timeout_s)
            )

    async def create_adapter(
        self, caller: Caller, uploads: AsyncIterator[adapter_pb2.AdapterUpload]
    ) -> adapter_pb2.Adapter:
        """Registers one of the caller's tenant's private adapters (scope `adapters`)."""
        gate = self._adapter_gate()
        principal = await self.authenticate(caller, "adapters")
        check_client_request_id(caller)
        await self._holds.spend(self._reads, principal.tenant_id, caller)
        # The caller's deadline only: an upload of 64 MiB takes what its link takes.
        return await gate.create(principal.tenant_id, uploads, caller.deadline_s)

    async def list_adapters(self, caller: Caller) -> adapter_pb2.ListAdaptersResponse:
        """The caller's tenant's adapters; any of its keys may list them."""
        gate = self._adapter_gate()
        principal = await self.authenticate(caller, None)
        check_client_request_id(caller)
        await self._holds.spend(self._reads, principal.tenant_id, caller)
        return await gate.list(
            principal.tenant_id, within(caller.deadline_s, self._authenticator.timeout_s)
        )

    async def delete_adapter(
        self, caller: Caller, request: adapter_pb2.DeleteAdapterRequest
    ) -> adapter_pb2.DeleteAdapterResponse:
        gate = self._adapter_gate()
        principal = await self.authenticate(caller, "adapters")
        check_client_request_id(caller)
        await self._holds.spend(self._reads, principal.tenant_id, caller)
        return await gate.delete(
            principal.tenant_id,
            request.name,
            within(caller.deadline_s, self._authenticator.timeout_s),
        )

    def _adapter_gate(self) -> AdapterGate:
        if self._adapters is None:
            raise UnimplementedError("this gateway serves no private adapters")
        return self._adapters

    @contextmanager
    def _refusals_of(self, tenant_id: str) -> Iterator[None]:
        """Spends one of the tenant's refusals for each refusal its request caused."""
        try:
            yield
        except MeshError as err:
            if err.code in CALLER_REFUSALS:
                self._refusals.refused(tenant_id)
            raise

    async def authenticate(self, caller: Caller, scope: str | None) -> auth_pb2.Principal:
        """The caller's principal (holding `scope`; any key of its tenant when
        None); a refused key is counted and reported to anomaly."""
        metadata = () if caller.credentials is None else (("authorization", caller.credentials),)
        host = peer_host(caller.peer)
        try:
            with remote_errors():
                return await self._authenticator.authenticate(
                    metadata,
                    scope,
                    lambda: self._holds.check(self._auth_failures, host, caller),
                )
        except UnauthenticatedError:
            self._auth_failures.refused(host)
            self._metrics.auth_failures.add(1)
            self._events.publish(
                anomaly_pb2.Event(
                    kind=anomaly_pb2.EVENT_KIND_AUTH_FAILURE,
                    time=timestamp(time.time()),
                    request_id=current_request_id() or "",
                    source=caller.peer,
                    status_code=grpc.StatusCode.UNAUTHENTICATED.name,
                )
            )
            raise

    def _settle(
        self,
        request_id: str,
        client_request_id: str,
        model: str,
        principal: auth_pb2.Principal,
        usage: StreamUsage,
        status: grpc.StatusCode,
        replica: str,
    ) -> None:
        """Bills what was produced and reports the request; never blocks."""
        end = time.time()
        self._metrics.request_ended(
            model=model,
            status=status.name,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            first_token_s=usage.first_token_s,
        )
        if usage.chunks:
            ledger_status = metering_pb2.REQUEST_STATUS_COMPLETED
            if status == grpc.StatusCode.CANCELLED:
                ledger_status = metering_pb2.REQUEST_STATUS_CANCELLED
            elif status != grpc.StatusCode.OK:
                ledger_status = metering_pb2.REQUEST_STATUS_FAILED
            self._usage.add(
                usage_record(
                    request_id, client_request_id, model, principal, usage, ledger_status, end
                )
            )
        self._events.publish(
            anomaly_pb2.Event(
                kind=anomaly_pb2.EVENT_KIND_REQUEST,
                # When it arrived: requests that finish together in one engine
                # step were not sent together, and rates are about sending.
                time=timestamp(usage.start_wall),
                request_id=request_id,
                tenant_id=principal.tenant_id,
                key_id=principal.key_id,
                model=model,
                replica=replica,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                time_to_first_token_s=usage.first_token_s or 0.0,
                duration_s=usage.elapsed_s(),
                status_code=status.name,
            )
        )


def usage_record(
    request_id: str,
    client_request_id: str,
    model: str,
    principal: auth_pb2.Principal,
    usage: StreamUsage,
    status: metering_pb2.RequestStatus,
    end: float,
) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=request_id,
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        model=model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        start_time=timestamp(usage.start_wall),
        end_time=timestamp(end),
        status=status,
        client_request_id=client_request_id,
    )
