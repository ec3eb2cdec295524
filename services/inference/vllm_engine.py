"""The Engine over vLLM's AsyncLLM (continuous batching, DELTA streaming)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from services.inference.engine import (
    Delta,
    EngineDeadError,
    FinishReason,
    GenerationInput,
    LoadSnapshot,
    ModelInfo,
    SamplingOptions,
    check_request,
)
from services.inference.settings import InferenceSettings

log = structlog.get_logger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class _LoadRecorder(StatLoggerBase):
    """Keeps the scheduler's latest counts; vLLM calls `record` after every step."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.snapshot = LoadSnapshot(running=0, waiting=0, kv_cache_usage=0.0)

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.snapshot = LoadSnapshot(
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                kv_cache_usage=scheduler_stats.kv_cache_usage,
            )

    def log_engine_initialized(self) -> None:
        pass


class _DeadEngine:
    def __getattr__(self, name: str) -> Any:
        raise EngineDeadError("the engine was shut down")


_DEAD_ENGINE: Any = _DeadEngine()


class VllmEngine:
    def __init__(self, llm: AsyncLLM, model_info: ModelInfo, load: _LoadRecorder) -> None:
        self._llm = llm
        self._model_info = model_info
        self._load = load
        self._tokenizer = llm.get_tokenizer()

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    def detach(self) -> None:
        """Drops the engine reference after shutdown; later calls fail as dead."""
        self._llm = _DEAD_ENGINE

    def _prompt_ids(self, inp: GenerationInput) -> list[int]:
        if inp.messages:
            rendered = self._tokenizer.apply_chat_template(
                [{"role": t.role, "content": t.content} for t in inp.messages],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert isinstance(rendered, str)
            ids: list[int] = self._tokenizer.encode(rendered, add_special_tokens=False)
            return ids
        ids = self._tokenizer.encode(inp.prompt or "", add_special_tokens=False)
        return ids

    async def generate(
        self, request_id: str, inp: GenerationInput, options: SamplingOptions
    ) -> AsyncGenerator[Delta, None]:
        prompt_ids = self._prompt_ids(inp)
        max_tokens = check_request(len(prompt_ids), inp, options, self._model_info)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
            stop=list(options.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
        try:
            # Closing this generator (a cancelled call) makes AsyncLLM abort the
            # request and free its KV cache; the cancellation then propagates.
            async for output in self._llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id
            ):
                choice = output.outputs[0]
                completion_tokens += len(choice.token_ids)
                finish = None
                if output.finished:
                    finish = _FINISH_REASONS.get(choice.finish_reason or "", FinishReason.ABORT)
                yield Delta(
                    text=choice.text,
                    token_ids=tuple(choice.token_ids),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    finish_reason=finish,
                )
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def count_tokens(self, inp: GenerationInput) -> int:
        return len(self._prompt_ids(inp))

    def load(self) -> LoadSnapshot:
        return self._load.snapshot

    def num_unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except VllmEngineDeadError as err:
            raise EngineDeadError(str(err)) from err


def engine_args(settings: InferenceSettings) -> AsyncEngineArgs:
    optional: dict[str, Any] = {}
    if settings.max_model_len is not None:
        optional["max_model_len"] = settings.max_model_len
    return AsyncEngineArgs(
        model=settings.model,
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
        # Per-request log lines from vLLM would double ours.
        enable_log_requests=False,
        **optional,
    )


@asynccontextmanager
async def open_vllm_engine(settings: InferenceSettings) -> AsyncIterator[VllmEngine]:
    """Loads the model; always shuts the engine down on exit."""
    recorders: list[_LoadRecorder] = []

    def make_recorder(vllm_config: Any, engine_index: int = 0) -> _LoadRecorder:
        recorder = _LoadRecorder(vllm_config, engine_index)
        recorders.append(recorder)
        return recorder

    # Loading blocks for seconds; a thread keeps the event loop (health, signals) alive.
    llm = await asyncio.to_thread(
        AsyncLLM.from_engine_args, engine_args(settings), stat_loggers=[make_recorder]
    )
    engine: VllmEngine | None = None
    try:
        info = ModelInfo(
            name=settings.model_name,
            max_context_length=llm.model_config.max_model_len,
            vocab_size=llm.model_config.get_vocab_size(),
        )
        log.info("engine ready", model=info.name, context=info.max_context_length)
        engine = VllmEngine(llm, info, recorders[0])
        yield engine
    finally:
        llm.shutdown()
        # AsyncLLM.__del__ shuts down again and fails at interpreter exit: leave
        # no reference behind, including the one in the engine wrapper.
        if engine is not None:
            engine.detach()
        del llm
