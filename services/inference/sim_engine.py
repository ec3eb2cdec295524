"""An Engine that behaves like vLLM under load, without a model: continuous
batching with chunked prefill, a KV-block budget with prefix caching and
preemption, a waiting queue, aborts and the same live load reports; each
step lasts what its profile (sim_profiles.py) says a GPU would take.

One asyncio timer per engine step, whatever the number of streams: a
simulated replica costs little CPU, so benchmarks of the mesh above it
measure the mesh. Deterministic for a seed: the same seed and prompt give
the same tokens."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import structlog

from services.common.changes import ChangeSignal
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
    SampledLogprob,
    SamplingOptions,
    TokenLogprob,
    check_prompt_size,
    check_request,
)
from services.inference.settings import InferenceSettings
from services.inference.sim_kv import BLOCK_SIZE, KvBlocks, block_hashes, blocks_for
from services.inference.sim_profiles import PROFILES, SimProfile
from services.inference.sim_text import TOKEN_BYTES, render_chat, tokenize, word

log = structlog.get_logger(__name__)

# Weight of history in the prefix-cache hit rate: about the last 100 steps (as the real engine).
HIT_RATE_DECAY = 0.99


@dataclass(eq=False)
class _Choice:
    """Output of one choice not yet handed to the stream's reader."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    logprobs: list[SampledLogprob] = field(default_factory=list)
    finish: FinishReason | None = None
    done: bool = False  # its finishing delta was handed over


@dataclass(eq=False)
class _Stream:
    """One generate call: its choices' sequences feed it, its reader drains it."""

    request_id: str
    options: SamplingOptions
    prompt_tokens: int
    choices: list[_Choice]
    promised: int
    arrived_at: float
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    seqs: list[_Seq] = field(default_factory=list)
    cached_tokens: int = 0
    queued_s: float | None = None
    delivered: int = 0
    error: BaseException | None = None


@dataclass(eq=False)
class _Seq:
    """One choice of a request inside the scheduler (vLLM runs n choices as n requests)."""

    stream: _Stream
    index: int
    tokens: list[int]
    prompt_len: int
    max_tokens: int
    min_tokens: int
    stop_at: int | None  # where the model would emit EOS; None: ignore_eos
    rng: random.Random
    priority: int
    arrival: int
    hashes: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    registered: int = 0  # full blocks registered in the prefix cache
    output: int = 0
    text: str = ""  # only kept when stop strings are asked for
    finished: bool = False
    scheduled: bool = False

    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.arrival)


@dataclass(frozen=True, slots=True)
class SimLimits:
    """What settings may change of a profile, as vLLM's flags do."""

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_tokens: int
    max_context_length: int
    prefix_caching: bool = True
    policy: Literal["priority", "fcfs"] = "priority"

    @classmethod
    def of(cls, profile: SimProfile) -> SimLimits:
        return cls(
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            kv_cache_tokens=profile.kv_cache_tokens,
            max_context_length=profile.max_context_length,
        )


class SimEngine:
    def __init__(
        self,
        profile: SimProfile,
        *,
        name: str | None = None,
        limits: SimLimits | None = None,
        seed: int = 0,
        adapter_load_s: float = 0.0,
    ) -> None:
        self.profile = profile
        self._adapter_load_s = adapter_load_s
        # Private adapters loaded; which, and in what order of use, is the
        # adapter slots' record (adapter_slots.py).
        self._private: set[str] = set()
        limits = limits or SimLimits.of(profile)
        num_blocks = limits.kv_cache_tokens // BLOCK_SIZE
        # vLLM refuses to start when one request at full context cannot fit its
        # KV cache; the simulator shortens the context instead.
        context = min(limits.max_context_length, num_blocks * BLOCK_SIZE)
        self._model_info = ModelInfo(
            name=name or profile.name,
            max_context_length=context,
            vocab_size=profile.vocab_size,
            max_token_bytes=TOKEN_BYTES,
        )
        self._capacity = Capacity(limits.max_num_seqs, num_blocks * BLOCK_SIZE)
        self._limits = limits
        self._seed = seed
        self._kv = KvBlocks(num_blocks, prefix_caching=limits.prefix_caching)
        self._streams: dict[str, _Stream] = {}
        self._running: list[_Seq] = []
        self._fcfs: deque[_Seq] = deque()
        self._by_priority: list[tuple[int, int, _Seq]] = []
        self._waiting = 0
        self._arrivals = itertools.count()
        self._promised = 0
        self._queries = 0.0
        self._hits = 0.0
        self._step_queries = 0
        self._step_hits = 0
        self._changes = ChangeSignal()
        self._work = asyncio.Event()
        self._dead = asyncio.Event()
        self._dead_reason = ""
        self._stepped_at = 0.0
        self._loop_task: asyncio.Task[None] | None = None
        # Counters for tests and benchmarks.
        self.steps = 0
        self.preemptions = 0
        self.generated_tokens = 0
        self.profiled_s = 0.0  # the steps' durations by the profile, summed
        self.adapter_loads = 0

    # -- lifetime -----------------------------------------------------------

    async def __aenter__(self) -> SimEngine:
        self._loop_task = asyncio.create_task(self._run(), name=f"sim-engine {self.profile.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill("the engine was shut down")
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    def kill(self, reason: str) -> None:
        """The engine dies: every stream fails with EngineDeadError, `wait_dead` returns."""
        if self._dead.is_set():
            return
        self._dead_reason = reason
        self._dead.set()
        for stream in self._streams.values():
            stream.error = EngineDeadError(reason)
            stream.wake.set()
        self._work.set()

    # -- the Engine interface ------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def capacity(self) -> Capacity:
        return self._capacity

    @property
    def adapters(self) -> tuple[str, ...]:
        return ()

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        """Takes `adapter_load_s`, as a real load would; the files are not read."""
        if self._dead.is_set():
            raise EngineDeadError(self._dead_reason)
        await asyncio.sleep(self._adapter_load_s)
        self._private.add(adapter_id)
        self.adapter_loads += 1

    async def unload_adapter(self, adapter_id: str) -> None:
        self._private.discard(adapter_id)

    @property
    def private_adapters(self) -> frozenset[str]:
        """The private adapters loaded in the engine now (for tests)."""
        return frozenset(self._private)

    def _prompt_ids(self, inp: GenerationInput) -> list[int]:
        if inp.token_ids is not None:
            return list(inp.token_ids)
        text = render_chat(inp.messages) if inp.messages else (inp.prompt or "")
        return tokenize(text, self._model_info.vocab_size)

    async def count_tokens(self, inp: GenerationInput) -> int:
        return len(self._prompt_ids(inp))

    async def generate(
        self,
        request_id: str,
        inp: GenerationInput,
        options: SamplingOptions,
        adapter: str | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[Delta, None]:
        if self._dead.is_set():
            raise EngineDeadError(self._dead_reason)
        if request_id in self._streams:
            raise DuplicateRequestError(f"request {request_id!r} is already running")
        check_prompt_size(inp, self._model_info)
        prompt_ids = self._prompt_ids(inp)
        max_tokens = check_request(prompt_ids, inp, options, self._model_info)
        for name, value in (("json_schema", options.json_schema), ("regex", options.regex)):
            if value is not None:
                raise InvalidRequestError(name, "constrained decoding is not simulated")
        if adapter is not None and adapter not in self._private:
            raise InvalidRequestError("model", f"adapter {adapter!r} is not loaded")
        stream = self._admit(request_id, prompt_ids, options, max_tokens, priority, adapter)
        top_k = options.logprobs
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.error is not None:
                    raise stream.error
                for index, choice in enumerate(stream.choices):
                    if choice.done or (not choice.token_ids and choice.finish is None):
                        continue
                    tokens, text, logprobs = choice.token_ids, choice.text, choice.logprobs
                    choice.token_ids, choice.text, choice.logprobs = [], [], []
                    choice.done = choice.finish is not None
                    stream.delivered += len(tokens)
                    first = stream.queued_s is not None and stream.delivered == len(tokens)
                    yield Delta(
                        text="".join(text),
                        token_ids=tuple(tokens),
                        prompt_tokens=stream.prompt_tokens,
                        completion_tokens=stream.delivered,
                        finish_reason=choice.finish,
                        index=index,
                        logprobs=tuple(logprobs) if top_k is not None else (),
                        cached_tokens=stream.cached_tokens,
                        queued_s=(stream.queued_s or 0.0) if first else 0.0,
                    )
                if all(choice.done for choice in stream.choices):
                    return
        finally:
            # Closed or cancelled before the end: abort, freeing its blocks.
            for seq in stream.seqs:
                self._drop(seq)
            self._promised -= stream.promised
            del self._streams[request_id]
            self._changes.notify()

    def _admit(
        self,
        request_id: str,
        prompt_ids: list[int],
        options: SamplingOptions,
        max_tokens: int,
        priority: int,
        adapter: str | None = None,
    ) -> _Stream:
        stream = _Stream(
            request_id,
            options,
            prompt_tokens=len(prompt_ids),
            choices=[_Choice() for _ in range(options.n)],
            promised=max_tokens * options.n,
            arrived_at=time.monotonic(),
        )
        seed = self._seed if options.seed is None else options.seed
        prompt_key = hash(tuple(prompt_ids))
        if adapter is not None:
            # Other weights, other tokens; crc32, not hash(): str hashes vary per process.
            prompt_key = hash((prompt_key, zlib.crc32(adapter.encode())))
        hashes: list[int] = []
        block_hashes(prompt_ids, hashes)
        priority = priority if self._limits.policy == "priority" else 0
        for index in range(options.n):
            rng = random.Random(hash((seed, index, prompt_key)))
            natural = rng.randint(1, 2 * self.profile.mean_output_tokens)
            seq = _Seq(
                stream,
                index,
                tokens=list(prompt_ids),
                prompt_len=len(prompt_ids),
                max_tokens=max_tokens,
                min_tokens=options.min_tokens,
                stop_at=None if options.ignore_eos else max(natural, options.min_tokens, 1),
                rng=rng,
                priority=priority,
                arrival=next(self._arrivals),
                hashes=list(hashes),
            )
            stream.seqs.append(seq)
            self._enqueue(seq)
        self._streams[request_id] = stream
        self._promised += stream.promised
        self._work.set()
        return stream

    async def abort(self, request_ids: Sequence[str]) -> list[str]:
        aborted = []
        for rid in request_ids:
            stream = self._streams.get(rid)
            if stream is None:
                continue
            aborted.append(rid)
            for seq in stream.seqs:
                if not seq.finished:
                    self._drop(seq)
                    stream.choices[seq.index].finish = FinishReason.ABORT
            stream.wake.set()
        return aborted

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(
            running=len(self._running),
            waiting=self._waiting,
            kv_cache_usage=self._kv.usage,
            tokens_in_flight=max(0, self._promised),
            prefix_cache_hit_rate=self._hits / self._queries if self._queries else 0.0,
        )

    async def watch_load(self) -> AsyncGenerator[LoadSnapshot, None]:
        last: LoadSnapshot | None = None
        while True:
            changed = self._changes.next
            now = self.load()
            if now != last:
                yield now
                last = now
            await changed.wait()

    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    async def check_health(self) -> None:
        if self._dead.is_set():
            raise EngineDeadError(self._dead_reason)

    async def wait_dead(self) -> str:
        await self._dead.wait()
        return self._dead_reason

    def last_step_at(self) -> float:
        return self._stepped_at

    # -- the scheduler -------------------------------------------------------

    def _enqueue(self, seq: _Seq, *, front: bool = False) -> None:
        if self._limits.policy == "priority":
            heapq.heappush(self._by_priority, (seq.priority, seq.arrival, seq))
        elif front:
            self._fcfs.appendleft(seq)  # a preempted request goes first again, as in vLLM
        else:
            self._fcfs.append(seq)
        self._waiting += 1

    def _peek_waiting(self) -> _Seq | None:
        """The next waiting sequence; aborted ones are dropped lazily here."""
        if self._limits.policy == "priority":
            while self._by_priority and self._by_priority[0][2].finished:
                heapq.heappop(self._by_priority)
            return self._by_priority[0][2] if self._by_priority else None
        while self._fcfs and self._fcfs[0].finished:
            self._fcfs.popleft()
        return self._fcfs[0] if self._fcfs else None

    def _pop_waiting(self) -> None:
        if self._limits.policy == "priority":
            heapq.heappop(self._by_priority)
        else:
            self._fcfs.popleft()
        self._waiting -= 1

    def _drop(self, seq: _Seq) -> None:
        """Takes a sequence out of the scheduler and frees its blocks."""
        if seq.finished:
            return
        seq.finished = True
        self._kv.release(seq.blocks)
        seq.blocks = []
        if seq in self._running:
            self._running.remove(seq)
        else:
            self._waiting -= 1

    def _preempt(self, seq: _Seq) -> None:
        """Recompute preemption: the sequence loses its blocks and waits again."""
        self._running.remove(seq)
        self._kv.release(seq.blocks)
        seq.blocks = []
        seq.computed = 0
        seq.registered = 0
        self.preemptions += 1
        self._enqueue(seq, front=True)

    def _victim(self, candidates: list[_Seq]) -> _Seq:
        if self._limits.policy == "priority":
            return max(candidates, key=_Seq.sort_key)
        return candidates[-1]

    def _grow(self, seq: _Seq, new_tokens: int) -> bool:
        need = blocks_for(seq.computed + new_tokens) - len(seq.blocks)
        if need <= 0:
            return True
        taken = self._kv.allocate(need)
        if taken is None:
            return False
        seq.blocks += taken
        return True

    def _schedule(self) -> list[tuple[_Seq, int]]:
        """One step's work, as vLLM's V1 scheduler: running sequences first
        (preempting the newest, or the lowest priority, when blocks run
        out), then waiting ones while slots, blocks and the token budget last."""
        budget = self._limits.max_num_batched_tokens
        scheduled: list[tuple[_Seq, int]] = []
        preempted = False
        i = 0
        while i < len(self._running) and budget > 0:
            seq = self._running[i]
            new = min(len(seq.tokens) - seq.computed, budget)
            lost = False
            while not lost and not self._grow(seq, new):
                victim = self._victim(self._running[i:])
                self._preempt(victim)
                preempted = True
                lost = victim is seq
            if not lost:
                scheduled.append((seq, new))
                budget -= new
                i += 1
        if preempted:
            return scheduled
        now = time.monotonic()
        while budget > 0 and len(self._running) < self._limits.max_num_seqs:
            head = self._peek_waiting()
            if head is None:
                break
            seq = head
            # At least one token is computed, so a fully cached prompt still samples.
            hits = self._kv.lookup(seq.hashes[: (len(seq.tokens) - 1) // BLOCK_SIZE])
            seq.blocks = hits
            seq.computed = len(hits) * BLOCK_SIZE
            seq.registered = len(hits)
            new = min(len(seq.tokens) - seq.computed, budget)
            if not self._grow(seq, new):
                self._kv.release(seq.blocks)
                seq.blocks, seq.computed, seq.registered = [], 0, 0
                break
            self._step_queries += len(seq.tokens)
            self._step_hits += len(hits) * BLOCK_SIZE
            self._pop_waiting()
            self._running.append(seq)
            scheduled.append((seq, new))
            budget -= new
            if not seq.scheduled:
                seq.scheduled = True
                stream = seq.stream
                if seq.index == 0:
                    stream.cached_tokens = seq.computed
                    stream.queued_s = max(0.0, now - stream.arrived_at)
        return scheduled

    def _sample(self, seq: _Seq) -> None:
        """One token for a sequence that has computed all its tokens."""
        stream = seq.stream
        choice = stream.choices[seq.index]
        options = stream.options
        vocab = self._model_info.vocab_size
        eos = self.profile.eos_token_id
        seq.output += 1
        finish: FinishReason | None = None
        if seq.stop_at is not None and seq.output >= seq.stop_at:
            token, text, finish = eos, "", FinishReason.STOP
        else:
            token = seq.rng.randrange(vocab)
            if token == eos:
                token = (token + 1) % vocab
            text = word(token)
            if token in options.stop_token_ids and seq.output >= seq.min_tokens:
                text, finish = "", FinishReason.STOP
            elif options.stop and seq.output >= seq.min_tokens:
                text, finish = self._stop_string(seq, options.stop, text)
        if finish is None and seq.output >= seq.max_tokens:
            finish = FinishReason.LENGTH
        seq.tokens.append(token)
        self.generated_tokens += 1
        self._promised -= 1
        stream.promised -= 1
        choice.token_ids.append(token)
        if text:
            choice.text.append(text)
        if options.logprobs is not None:
            choice.logprobs.append(_logprob(seq.rng, token, options.logprobs, vocab))
        if finish is not None:
            choice.finish = finish
            self._kv.release(seq.blocks)
            seq.blocks = []
            seq.finished = True
        stream.wake.set()

    @staticmethod
    def _stop_string(seq: _Seq, stops: Sequence[str], text: str) -> tuple[str, FinishReason | None]:
        """The token's text up to the first stop string it completes (text
        already streamed is not taken back)."""
        before = len(seq.text)
        seq.text += text
        for stop in stops:
            at = seq.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                return seq.text[before:at] if at > before else "", FinishReason.STOP
        return text, None

    def _finish_step(self, scheduled: list[tuple[_Seq, int]]) -> None:
        finished = False
        for seq, new in scheduled:
            if seq.finished:
                continue  # aborted while the step ran
            seq.computed += new
            if len(seq.hashes) < seq.computed // BLOCK_SIZE:
                block_hashes(seq.tokens, seq.hashes)
            for b in range(seq.registered, seq.computed // BLOCK_SIZE):
                self._kv.register(seq.blocks[b], seq.hashes[b])
            seq.registered = max(seq.registered, seq.computed // BLOCK_SIZE)
            if seq.computed == len(seq.tokens):
                self._sample(seq)
                finished = finished or seq.finished
        if finished:
            self._running = [seq for seq in self._running if not seq.finished]
        self._queries = self._queries * HIT_RATE_DECAY + self._step_queries
        self._hits = self._hits * HIT_RATE_DECAY + self._step_hits
        self._step_queries = self._step_hits = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_end: float | None = None
        try:
            while not self._dead.is_set():
                if not self._running and not self._waiting:
                    last_end = None
                    self._work.clear()
                    await self._work.wait()
                    continue
                # Time spent scheduling counts as part of the step, as on a GPU host.
                now = loop.time()
                scheduled = self._schedule()
                decode = sum(1 for seq, new in scheduled if seq.output and new == 1)
                prefill = sum(new for _, new in scheduled) - decode
                step_s = self.profile.step_s(decode, prefill)
                self.profiled_s += step_s
                # Back to back steps start where the last one was due to end: a
                # timer that fired late (uvloop's have 1 ms resolution) is made
                # up by this step, so the pace is the profile's. At most one
                # whole step is made up; a loop stalled longer loses the time.
                started = now if last_end is None else max(last_end, now - step_s)
                last_end = started + step_s
                await asyncio.sleep(max(0.0, last_end - loop.time()))
                self._finish_step(scheduled)
                self._stepped_at = time.monotonic()
                self.steps += 1
                self._changes.notify()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("simulated engine failed")
            self.kill(f"the simulated engine failed: {err!r}")


def _logprob(rng: random.Random, token: int, k: int, vocab: int) -> SampledLogprob:
    """Made-up but well-formed: the sampled token is the most likely of the top k."""
    sampled = -rng.random()
    top = tuple(
        TokenLogprob(token if j == 0 else (token + 7919 * j) % vocab, sampled - j) for j in range(k)
    )
    return SampledLogprob(TokenLogprob(token, sampled), top)


def sim_limits(settings: InferenceSettings, profile: SimProfile) -> SimLimits:
    """The profile's figures, overridden by the settings an operator set."""
    chosen = settings.model_fields_set
    kv_tokens = profile.kv_cache_tokens
    if settings.kv_cache_memory_bytes is not None:
        kv_tokens = settings.kv_cache_memory_bytes // profile.kv_bytes_per_token
    return SimLimits(
        max_num_seqs=settings.max_num_seqs if "max_num_seqs" in chosen else profile.max_num_seqs,
        max_num_batched_tokens=profile.max_num_batched_tokens,
        kv_cache_tokens=kv_tokens,
        max_context_length=settings.max_model_len or profile.max_context_length,
        prefix_caching=settings.enable_prefix_caching,
        policy=settings.scheduling_policy,
    )


@asynccontextmanager
async def open_sim_engine(settings: InferenceSettings) -> AsyncIterator[SimEngine]:
    """A simulated replica from settings: `sim_profile`, `seed`, and the
    engine flags that would size vLLM (max_num_seqs, kv_cache_memory_bytes,
    max_model_len, prefix caching, scheduling policy)."""
    profile = PROFILES[settings.sim_profile]
    engine = SimEngine(
        profile,
        name=settings.model_name,
        limits=sim_limits(settings, profile),
        seed=settings.seed,
        adapter_load_s=settings.sim_adapter_load_s,
    )
    async with engine:
        log.info("simulated engine ready", profile=profile.name, gpu=profile.gpu)
        yield engine
