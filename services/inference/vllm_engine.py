"""The Engine over vLLM's AsyncLLM (continuous batching, DELTA streaming)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from vllm import PoolingParams, RequestOutput, SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase

from services.common.changes import ChangeSignal
from services.inference.embedding import (
    Embeddings,
    EmbedInput,
    check_batch,
    check_input_size,
    check_tokens,
)
from services.inference.engine import (
    Capacity,
    Delta,
    DuplicateRequestError,
    EngineDeadError,
    FinishReason,
    GenerationInput,
    InvalidRequestError,
    LoadSnapshot,
    ModelInfo,
    ModelKind,
    SampledLogprob,
    SamplingOptions,
    TokenLogprob,
    check_prompt_size,
    check_request,
)
from services.inference.settings import InferenceSettings

log = structlog.get_logger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class _LoadRecorder(StatLoggerBase):
    """Keeps the scheduler's latest counts and wakes load watchers; vLLM calls
    `record` from its output task, on the event loop, after every step."""

    # Weight of history in the prefix-cache hit rate: about the last 100 steps.
    HIT_RATE_DECAY = 0.99

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self._queries = 0.0
        self._hits = 0.0
        self.changes = ChangeSignal()
        # When the engine last stepped: a wedged engine stops stepping.
        self.stepped_at = 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self._hits / self._queries if self._queries else 0.0

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        self.stepped_at = time.monotonic()
        if scheduler_stats is None:
            return
        self.running = scheduler_stats.num_running_reqs
        self.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
        self.kv_cache_usage = scheduler_stats.kv_cache_usage
        cache = scheduler_stats.prefix_cache_stats
        self._queries = self._queries * self.HIT_RATE_DECAY + cache.queries
        self._hits = self._hits * self.HIT_RATE_DECAY + cache.hits
        self.changes.notify()

    def log_engine_initialized(self) -> None:
        pass


class _DeadEngine:
    def __getattr__(self, name: str) -> Any:
        raise EngineDeadError("the engine was shut down")


_DEAD_ENGINE: Any = _DeadEngine()


def _logprobs(token_ids: Sequence[int], entries: Any, k: int) -> tuple[SampledLogprob, ...]:
    """vLLM gives, per token, {token id: Logprob(logprob, rank)} holding the
    top `k` alternatives (rank 1 is the most likely) and the sampled token,
    which is one more entry when it ranks below them: `top` is exactly the k."""
    if not entries:
        return ()
    result = []
    for token_id, by_token in zip(token_ids, entries, strict=False):
        sampled = by_token[token_id]
        top = sorted(
            ((tid, lp) for tid, lp in by_token.items() if lp.rank is not None and lp.rank <= k),
            key=lambda item: item[1].rank,
        )
        result.append(
            SampledLogprob(
                sampled=TokenLogprob(token_id, float(sampled.logprob), sampled.decoded_token),
                top=tuple(
                    TokenLogprob(tid, float(lp.logprob), lp.decoded_token) for tid, lp in top
                ),
            )
        )
    return tuple(result)


class VllmEngine:
    def __init__(
        self,
        llm: AsyncLLM,
        model_info: ModelInfo,
        capacity: Capacity,
        load: _LoadRecorder,
        adapters: dict[str, str] | None = None,
    ) -> None:
        self._llm = llm
        # LoRA ids must be unique and stable for the engine's adapter cache.
        self._adapters = {
            name: LoRARequest(name, i, path)
            for i, (name, path) in enumerate(sorted((adapters or {}).items()), start=1)
        }
        # Private adapters loaded (which, and in what order of use, is the
        # adapter slots' record: adapter_slots.py). Each load takes a fresh
        # int id: vLLM keys its caches by it, so an id reused for other
        # weights (or a reload) could serve stale ones.
        self._private: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(len(self._adapters) + 1)
        self._model_info = model_info
        self._capacity = capacity
        self._load = load
        self._priority_scheduling = llm.vllm_config.scheduler_config.policy == "priority"
        # The pooling runner serves embeddings and cannot generate; the
        # generate runner the reverse.
        self._embeds = llm.model_config.runner_type == "pooling"
        self._tokenizer = llm.get_tokenizer()
        # The Rust tokenizer under a fast HF tokenizer encodes in half the time of
        # the Python wrapper, and this runs on the event loop for every request.
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        self._encode: Callable[[str], list[int]] = (
            (lambda text: list(backend.encode(text, add_special_tokens=False).ids))
            if backend is not None
            else (lambda text: list(self._tokenizer.encode(text, add_special_tokens=False)))
        )
        # Tokens each running request may still generate (max_tokens x n, minus done).
        self._promised: dict[str, int] = {}

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def capacity(self) -> Capacity:
        return self._capacity

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        request = LoRARequest(adapter_id, next(self._lora_ids), path)
        try:
            await self._llm.add_lora(request)
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err
        self._private[adapter_id] = request

    async def unload_adapter(self, adapter_id: str) -> None:
        request = self._private.pop(adapter_id, None)
        if request is None:
            return
        try:
            await self._llm.remove_lora(request.lora_int_id)
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err

    def _lora_request(self, adapter: str | None) -> LoRARequest | None:
        if adapter is None:
            return None
        private = self._private.get(adapter)
        if private is not None:
            return private
        static = self._adapters.get(adapter)
        if static is None:
            raise InvalidRequestError("model", f"adapter {adapter!r} is not loaded")
        return static

    def detach(self) -> None:
        """Drops the engine reference after shutdown; later calls fail as dead."""
        self._llm = _DEAD_ENGINE

    def _prompt_ids(self, inp: GenerationInput) -> list[int]:
        if inp.token_ids is not None:
            return list(inp.token_ids)
        if inp.messages:
            rendered = self._tokenizer.apply_chat_template(
                [t.as_template_message() for t in inp.messages],
                tools=[t.as_template_tool() for t in inp.tools] or None,
                tokenize=False,
                add_generation_prompt=True,
            )
            assert isinstance(rendered, str)
            return self._encode(rendered)
        return self._encode(inp.prompt or "")

    @staticmethod
    def _sampling_params(options: SamplingOptions, max_tokens: int) -> SamplingParams:
        structured = None
        if options.json_schema is not None:
            structured = StructuredOutputsParams(json=options.json_schema)
        elif options.regex is not None:
            structured = StructuredOutputsParams(regex=options.regex)
        return SamplingParams(
            n=options.n,
            max_tokens=max_tokens,
            min_tokens=options.min_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
            stop=list(options.stop) or None,
            stop_token_ids=list(options.stop_token_ids) or None,
            ignore_eos=options.ignore_eos,
            logprobs=options.logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(
        self,
        request_id: str,
        inp: GenerationInput,
        options: SamplingOptions,
        adapter: str | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[Delta, None]:
        if request_id in self._promised:
            # Before anything is registered: the live request keeps its entry.
            raise DuplicateRequestError(f"request {request_id!r} is already running")
        if self._embeds:
            raise InvalidRequestError(
                "model", f"{self._model_info.name!r} is an embedding model; it cannot generate"
            )
        check_prompt_size(inp, self._model_info)
        prompt_ids = self._prompt_ids(inp)
        max_tokens = check_request(prompt_ids, inp, options, self._model_info)
        try:
            params = self._sampling_params(options, max_tokens)
        except ValueError as err:
            # vLLM's own checks of the parameters, past ours: still the
            # caller's request, never the replica's fault.
            raise InvalidRequestError(
                getattr(err, "parameter", None) or "request", str(err)
            ) from err
        lora_request = self._lora_request(adapter)
        completion_tokens = 0
        queued_s: float | None = None
        first = True
        top_k = options.logprobs or 0
        self._promised[request_id] = max_tokens * options.n
        try:
            # Closing this generator (a cancelled call) makes AsyncLLM abort the
            # request and free its KV cache; the cancellation then propagates.
            # Already-rendered token input: AsyncLLM processes it on the event
            # loop instead of a round trip through its tokenizer thread pool.
            async for output in self._llm.generate(
                tokens_input(prompt_ids),
                params,
                request_id,
                lora_request=lora_request,
                # vLLM refuses a priority under first come, first served.
                priority=priority if self._priority_scheduling else 0,
            ):
                if queued_s is None:
                    queued_s = _queued_s(output)
                for choice in output.outputs:
                    if not choice.token_ids and choice.finish_reason is None:
                        continue
                    completion_tokens += len(choice.token_ids)
                    self._promised[request_id] -= len(choice.token_ids)
                    finish = None
                    if choice.finish_reason is not None:
                        finish = _FINISH_REASONS.get(choice.finish_reason, FinishReason.ABORT)
                    yield Delta(
                        text=choice.text,
                        token_ids=tuple(choice.token_ids),
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=completion_tokens,
                        finish_reason=finish,
                        index=choice.index,
                        logprobs=_logprobs(choice.token_ids, choice.logprobs, top_k),
                        cached_tokens=output.num_cached_tokens or 0,
                        queued_s=queued_s if first else 0.0,
                    )
                    first = False
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err
        except VLLMValidationError as err:
            # Our checks run first; this catches what only the engine knows
            # (e.g. a JSON schema its grammar backend cannot compile).
            raise InvalidRequestError(err.parameter or _culprit(options), str(err)) from err
        finally:
            self._promised.pop(request_id, None)
            self._load.changes.notify()

    async def embed(
        self, request_id: str, inputs: Sequence[EmbedInput], dimensions: int | None = None
    ) -> Embeddings:
        if not self._embeds:
            raise InvalidRequestError(
                "model",
                f"{self._model_info.name!r} is a generation model; it serves no embeddings",
            )
        check_batch(inputs, dimensions)
        prompts: list[list[int]] = []
        for index, inp in enumerate(inputs):
            check_input_size(index, inp, self._model_info)
            ids = list(inp.token_ids) if inp.token_ids is not None else self._encode(inp.text or "")
            check_tokens(index, ids, inp.token_ids is not None, self._model_info)
            prompts.append(ids)
        params = PoolingParams(task="embed", dimensions=dimensions)
        ids_of = [f"{request_id}-{index}" for index in range(len(prompts))]
        for rid in ids_of:
            if rid in self._promised:
                raise DuplicateRequestError(f"request {request_id!r} is already running")
        # Each input is one sequence; nothing is generated, so nothing is promised.
        self._promised.update(dict.fromkeys(ids_of, 0))
        try:
            # One task per input: the engine batches them. Cancelling this
            # cancels the tasks, and AsyncLLM.encode aborts each in the engine.
            vectors = await asyncio.gather(
                *(
                    self._embed_one(rid, ids, params)
                    for rid, ids in zip(ids_of, prompts, strict=True)
                )
            )
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err
        except (VLLMValidationError, ValueError) as err:
            # vLLM's own checks of the pooling parameters (a width the model
            # was not trained to truncate to): the caller's request.
            field = getattr(err, "parameter", None) or ("dimensions" if dimensions else "request")
            raise InvalidRequestError(field, str(err)) from err
        finally:
            for rid in ids_of:
                self._promised.pop(rid, None)
            self._load.changes.notify()
        return Embeddings(tuple(vectors), sum(len(ids) for ids in prompts))

    async def _embed_one(
        self, request_id: str, prompt_ids: list[int], params: PoolingParams
    ) -> tuple[float, ...]:
        vector: tuple[float, ...] = ()
        async for output in self._llm.encode(tokens_input(prompt_ids), params, request_id):
            if output.finished:
                vector = tuple(output.outputs.data.float().tolist())
        return vector

    async def abort(self, request_ids: Sequence[str]) -> list[str]:
        running = [rid for rid in request_ids if rid in self._promised]
        if running:
            await self._llm.abort(running)
        return running

    async def count_tokens(self, inp: GenerationInput) -> int:
        return len(self._prompt_ids(inp))

    def load(self) -> LoadSnapshot:
        # The scheduler's counts are from its last step; after the last request
        # ends there may be no further step, so nothing here means idle.
        idle = not self._promised
        return LoadSnapshot(
            running=0 if idle else self._load.running,
            waiting=0 if idle else self._load.waiting,
            kv_cache_usage=0.0 if idle else self._load.kv_cache_usage,
            tokens_in_flight=max(0, sum(self._promised.values())),
            prefix_cache_hit_rate=self._load.prefix_cache_hit_rate,
        )

    async def watch_load(self) -> AsyncGenerator[LoadSnapshot, None]:
        last: LoadSnapshot | None = None
        while True:
            changed = self._load.changes.next
            now = self.load()
            if now != last:
                yield now
                last = now
            await changed.wait()

    def num_unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err

    async def wait_dead(self) -> str:
        llm = self._llm
        # AsyncLLM's output task, which it starts at the first request, ends
        # when the engine core dies: vLLM's monitor thread sees the process
        # go and closes its sockets. Started now, on this loop, its end is the
        # signal even before any request (vLLM 0.32's AsyncLLM).
        llm._run_output_handler()  # type: ignore[no-untyped-call]
        handler = llm.output_handler
        assert handler is not None
        await asyncio.wait({handler})
        if llm.engine_core.resources.engine_dead:
            return "the engine core process died"
        return "the engine's output task ended"

    def last_step_at(self) -> float:
        return self._load.stepped_at


def model_kind(runner_type: str, tokenizer: Any) -> ModelKind:
    """What vLLM runs the model as: a pooling runner embeds; a generating one
    chats when its tokenizer has a chat template, else only completes."""
    if runner_type == "pooling":
        return ModelKind.EMBEDDING
    if getattr(tokenizer, "chat_template", None):
        return ModelKind.CHAT
    return ModelKind.COMPLETION


def engine_args(settings: InferenceSettings) -> AsyncEngineArgs:
    optional: dict[str, Any] = {}
    if settings.max_model_len is not None:
        optional["max_model_len"] = settings.max_model_len
    adapters = settings.adapter_slots + len(settings.lora_modules)
    if adapters:
        optional.update(
            enable_lora=True,
            # A batch never needs more GPU adapter slots than there are adapters.
            max_loras=min(settings.max_loras, adapters),
            # Every adapter held in vLLM's CPU cache: the slots decide what is
            # unloaded, never vLLM's own LRU behind their back.
            max_cpu_loras=adapters,
            max_lora_rank=settings.max_lora_rank,
        )
    return AsyncEngineArgs(
        model=settings.model,
        runner=settings.runner,
        served_model_name=[settings.model_name],
        max_num_seqs=settings.max_num_seqs,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enable_prefix_caching=settings.enable_prefix_caching,
        quantization=settings.quantization,
        dtype=settings.dtype,
        seed=settings.seed,
        scheduling_policy=settings.scheduling_policy,
        # Per-request log lines from vLLM would double ours.
        enable_log_requests=False,
        # Compact JSON for json_schema: grammars that allow free whitespace let
        # weak models pad with it until max_tokens and never close the object.
        structured_outputs_config=StructuredOutputsConfig(
            backend=settings.structured_outputs_backend, disable_any_whitespace=True
        ),
        **optional,
    )


class _UnpublishedPrometheus(PrometheusStatLogger):
    """Takes the place of vLLM's Prometheus logger, which its StatLoggerManager
    adds unless one is given, and publishes nothing: with `engine_metrics`
    off, the engine leaves the process-wide registry (and another engine's
    vllm:* series in it) alone."""

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        self.engine_indexes = engine_indexes or [0]

    def record(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record_admission_rejection(self, reason: str) -> None:
        return None

    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        return None

    def log_engine_initialized(self) -> None:
        return None


@asynccontextmanager
async def open_vllm_engine(settings: InferenceSettings) -> AsyncIterator[VllmEngine]:
    """Loads the model; always shuts the engine down on exit."""
    recorders: list[_LoadRecorder] = []

    def make_recorder(vllm_config: Any, engine_index: int = 0) -> _LoadRecorder:
        recorder = _LoadRecorder(vllm_config, engine_index)
        recorders.append(recorder)
        return recorder

    loggers: list[Any] = [make_recorder]
    if not settings.engine_metrics:
        loggers.append(_UnpublishedPrometheus)
    # Loading blocks for seconds; a thread keeps the event loop (health, signals) alive.
    llm = await asyncio.to_thread(
        AsyncLLM.from_engine_args, engine_args(settings), stat_loggers=loggers
    )
    engine: VllmEngine | None = None
    try:
        info = ModelInfo(
            name=settings.model_name,
            max_context_length=llm.model_config.max_model_len,
            vocab_size=llm.model_config.get_vocab_size(),
            max_token_bytes=longest_token_bytes(llm.get_tokenizer()),
            kind=model_kind(llm.model_config.runner_type, llm.get_tokenizer()),
        )
        log.info("engine ready", model=info.name, context=info.max_context_length)
        cache = llm.vllm_config.cache_config
        capacity = Capacity(
            max_num_seqs=llm.vllm_config.scheduler_config.max_num_seqs,
            kv_cache_tokens=(cache.num_gpu_blocks or 0) * cache.block_size,
        )
        engine = VllmEngine(llm, info, capacity, recorders[0], settings.lora_modules)
        yield engine
    finally:
        llm.shutdown()
        # AsyncLLM.__del__ shuts down again and fails at interpreter exit: leave
        # no reference behind, including the one in the engine wrapper.
        if engine is not None:
            engine.detach()
        del llm


def _culprit(options: SamplingOptions) -> str:
    """The field vLLM's validation meant when it names none: the grammar
    backend's refusals carry no parameter, and the constraint is the only
    input our own checks leave to it."""
    if options.regex is not None:
        return "regex"
    if options.json_schema is not None:
        return "json_schema"
    return "request"


def longest_token_bytes(tokenizer: Any) -> int:
    """The most bytes of text one token stands for, over-estimated (safe for a
    lower bound on tokens): a token's vocabulary string is never shorter in
    UTF-8 than the text it decodes to (byte-level BPE maps a byte to one
    character, SentencePiece writes a space as "▁", byte fallback as "<0xAB>")."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    return max((len(token.encode()) for token in vocab), default=0)


def _queued_s(output: RequestOutput) -> float:
    """How long the request waited in the engine's queue before it was scheduled."""
    stats = output.metrics
    if stats is None or not stats.scheduled_ts or not stats.queued_ts:
        return 0.0
    return max(0.0, float(stats.scheduled_ts - stats.queued_ts))
