"""maas.v1.Inference over an `Engine`: conversion in, engine call, conversion out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from typing import Any

import grpc
import structlog
from opentelemetry import trace

from maas.v1 import embedding_pb2, generation_pb2, inference_pb2, inference_pb2_grpc
from observability.context import current_request_id, new_request_id
from services.common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    UnavailableError,
)
from services.common.generation_limits import check_adapter_id
from services.inference import convert, embedding_convert
from services.inference.adapter_slots import AdapterSlots
from services.inference.embedding import Embedder
from services.inference.engine import (
    DuplicateRequestError,
    Engine,
    EngineDeadError,
    GenerationInput,
    InvalidRequestError,
    ModelCard,
)
from services.inference.load_report import replica_load, watch_replica_load
from services.inference.pacing import StreamPacer, check_message_interval

Context = grpc.aio.ServicerContext[Any, Any]

log = structlog.get_logger(__name__)


def translate_engine_error(exc: Exception) -> MeshError | None:
    """The inference service's row of the error table."""
    if isinstance(exc, InvalidRequestError):
        return InvalidArgumentError(exc.field, exc.description)
    if isinstance(exc, EngineDeadError):
        return UnavailableError(f"engine is not running: {exc}")
    if isinstance(exc, DuplicateRequestError):
        return AlreadyExistsError(str(exc))
    return None


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Serves one engine. The engine is attached once loaded; until then calls
    get UNAVAILABLE (and health says NOT_SERVING)."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        pacer: StreamPacer | None = None,
        log_content: bool = False,
        card: ModelCard | None = None,
        adapter_slots: AdapterSlots | None = None,
    ) -> None:
        self._engine = engine
        self._slots = adapter_slots
        self._card = card or ModelCard()
        self._pacer = pacer or StreamPacer(0)
        self._log_content = log_content

    def attach(self, engine: Engine, adapter_slots: AdapterSlots | None = None) -> None:
        self._engine = engine
        if adapter_slots is not None:
            self._slots = adapter_slots

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise UnavailableError("the model is still loading")
        return self._engine

    async def Generate(
        self, request: inference_pb2.InferenceGenerateRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        engine = self.engine
        adapter = self._check_model(request.request.model, engine)
        check_adapter_id(request.adapter_id)
        requested_interval_s = check_message_interval(request.min_message_interval_s)
        if request.adapter_id:
            if adapter is not None:
                raise InvalidArgumentError(
                    "request.model", "must name the base model when adapter_id is set"
                )
            adapter = request.adapter_id
        inp = convert.input_from_proto(request.request)
        options = convert.sampling_from_proto(request.request)
        request_id = current_request_id() or new_request_id()
        trace.get_current_span().set_attribute("maas.inference.priority", request.priority)
        # Each choice's text so far, kept only when content may be logged.
        texts: dict[int, list[str]] | None = {} if self._log_content else None
        try:
            # aclosing: a cancelled call closes the engine stream at once, which
            # aborts the request in the engine and frees its KV cache.
            # The private adapter stays loaded until the stream ends, however it ends.
            async with self._holding(request.adapter_id):
                with self._pacer.stream(requested_interval_s) as pace:
                    async with aclosing(
                        engine.generate(request_id, inp, options, adapter, request.priority)
                    ) as deltas:
                        async for delta in pace.coalesce(deltas):
                            if texts is not None:
                                texts.setdefault(delta.index, []).append(delta.text)
                            yield convert.delta_to_proto(delta)
        finally:
            if texts is not None:
                log.info(
                    "generation content",
                    model=request.request.model,
                    prompt=_prompt_for_log(inp),
                    completion=["".join(texts[i]) for i in sorted(texts)],
                )

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: Context
    ) -> generation_pb2.CountTokensResponse:
        engine = self.engine
        self._check_model(request.model, engine)
        count = await engine.count_tokens(convert.input_from_proto(request))
        return generation_pb2.CountTokensResponse(
            token_count=count, max_context_length=engine.model_info.max_context_length
        )

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Context
    ) -> embedding_pb2.EmbedResponse:
        engine = self.engine
        if self._check_model(request.model, engine) is not None:
            raise InvalidArgumentError("model", "adapters serve generation, not embeddings")
        if not isinstance(engine, Embedder):
            raise InvalidArgumentError(
                "model", f"{request.model!r} is a generation model; it serves no embeddings"
            )
        result = await engine.embed(
            current_request_id() or new_request_id(),
            embedding_convert.inputs_from_proto(request),
            request.dimensions if request.HasField("dimensions") else None,
        )
        return embedding_convert.embeddings_to_proto(request.model, result)

    async def GetModelInfo(
        self, request: inference_pb2.GetModelInfoRequest, context: Context
    ) -> inference_pb2.ReplicaInfo:
        engine = self.engine
        return convert.replica_info_to_proto(
            engine.model_info,
            engine.capacity,
            engine.adapters,
            self._card,
            adapter_slots=self._slots.capacity if self._slots is not None else 0,
        )

    async def GetLoad(
        self, request: inference_pb2.GetLoadRequest, context: Context
    ) -> inference_pb2.Load:
        return convert.load_to_proto(replica_load(self.engine, self._slots))

    async def WatchLoad(
        self, request: inference_pb2.WatchLoadRequest, context: Context
    ) -> AsyncIterator[inference_pb2.Load]:
        async with aclosing(watch_replica_load(self.engine, self._slots)) as loads:
            async for load in loads:
                yield convert.load_to_proto(load)

    async def Abort(
        self, request: inference_pb2.AbortRequest, context: Context
    ) -> inference_pb2.AbortResponse:
        aborted = await self.engine.abort(list(request.request_ids))
        return inference_pb2.AbortResponse(aborted=aborted)

    def _holding(self, adapter_id: str) -> AbstractAsyncContextManager[None]:
        """Holds the private adapter `adapter_id` loaded (nothing for "")."""
        if not adapter_id:
            return nullcontext()
        if self._slots is None:
            raise FailedPreconditionError("this replica serves no private adapters")
        return self._slots.use(adapter_id)

    @staticmethod
    def _check_model(model: str, engine: Engine) -> str | None:
        """The adapter `model` names (None for the base model); NOT_FOUND otherwise."""
        if model == engine.model_info.name:
            return None
        if model in engine.adapters:
            return model
        raise NotFoundError(f"model {model!r} is not served here")


def _prompt_for_log(inp: GenerationInput) -> object:
    if inp.messages:
        return [turn.as_template_message() for turn in inp.messages]
    if inp.token_ids is not None:
        return list(inp.token_ids)
    return inp.prompt
