"""Compiles a request's regex or JSON schema with the engine's grammar backend
(xgrammar) before the request is admitted, in worker processes that are killed
when a compilation runs past its time limit.

Why here, in the gateway: it runs before quota is reserved and before the
router or a replica sees the request, so a constraint that cannot compile, or
compiles too slowly, costs its sender a refusal and nobody else anything. The
gateway has no tokenizer, so it compiles against a vocabulary of the 256 single
bytes: that expands the grammar (repetitions, alternations: where compile time
explodes) exactly as the engine will; the engine's compile then differs only by
its vocabulary's size. Why processes: a thread stuck in native code cannot be
stopped, and it would hold a core the engine needs.

Verdicts are cached by (kind, text): a repeated pathological constraint costs
one time limit, not one per request. A timeout is remembered for a while only
(an honest constraint may have been slow because the machine was busy).
Compiles are shared by concurrent callers and outlive a caller that goes away:
a cancel must not kill a worker, whose replacement costs seconds of CPU."""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

import structlog

from services.common.errors import FailedPreconditionError, InvalidArgumentError

log = structlog.get_logger(__name__)

Kind = Literal["regex", "json_schema"]

# Verdicts remembered; a schema is at most 64 KiB, so this is at most 64 MiB.
CACHE_SIZE = 1024
# How long a timed-out constraint stays refused without another try: long
# enough that a flood of it costs one time limit a minute.
TIMEOUT_VERDICT_S = 60.0
_READY = "ready"
# The backend comes with the engine (vLLM requires xgrammar, whose package
# imports torch): the control-plane image, built without either, has none.
BACKEND = "xgrammar"


def backend_present() -> bool:
    return importlib.util.find_spec(BACKEND) is not None


def _compile(compiler: object, kind: Kind, text: str) -> str | None:
    """None if `text` compiles; else why not."""
    try:
        if kind == "regex":
            compiler.compile_regex(text)  # type: ignore[attr-defined]
        else:
            compiler.compile_json_schema(text)  # type: ignore[attr-defined]
    except Exception as err:  # the backend's errors are RuntimeErrors from C++
        return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return None


def _serve(conn: Connection) -> None:
    """A worker's loop: (kind, text) in, verdict out, until the pipe closes."""
    import xgrammar

    vocabulary = [bytes([i]).decode("latin-1") for i in range(256)]
    compiler = xgrammar.GrammarCompiler(
        xgrammar.TokenizerInfo(vocabulary), max_threads=1, cache_enabled=False
    )
    conn.send(_READY)
    while True:
        try:
            kind, text = conn.recv()
        except EOFError:
            return
        conn.send(_compile(compiler, kind, text))


class _Worker:
    def __init__(self) -> None:
        # spawn: forking a process that runs gRPC's threads is unsafe.
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child,), daemon=True, name="constraint-compiler"
        )
        self.process.start()
        child.close()

    async def ready(self) -> None:
        message = await asyncio.to_thread(self.conn.recv)
        if message != _READY:
            raise RuntimeError(f"constraint worker said {message!r}")

    async def run(self, kind: Kind, text: str, timeout_s: float) -> str | None:
        """The verdict; raises TimeoutError (the worker is then useless)."""
        self.conn.send((kind, text))
        if not await asyncio.to_thread(self.conn.poll, timeout_s):
            raise TimeoutError
        verdict: str | None = self.conn.recv()
        return verdict

    def kill(self) -> None:
        self.process.kill()
        # A killed process is gone at once; the bound is for an OS that stalls.
        self.process.join(timeout=5)
        self.conn.close()


class ConstraintChecker:
    """Checks constraints on `workers` processes, each compile within `timeout_s`."""

    def __init__(self, *, workers: int, timeout_s: float) -> None:
        self._size = workers
        self._timeout_s = timeout_s
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._starting: set[asyncio.Task[None]] = set()
        # (kind, text) -> (verdict, monotonic time it lapses; None: never).
        self._verdicts: OrderedDict[tuple[Kind, str], tuple[str | None, float | None]] = (
            OrderedDict()
        )
        self._inflight: dict[tuple[Kind, str], asyncio.Task[str | None]] = {}
        self._closed = False
        self._started = False
        self._spawned = 0
        # Without the backend a worker dies at its import and a request would
        # wait for it forever: refused at once instead.
        self._backend = backend_present()

    @property
    def spawned(self) -> int:
        """Worker processes started so far, replacements included."""
        return self._spawned

    def _start(self) -> None:
        """Starts the workers in the background, at the first constraint: importing
        the backend takes seconds and hundreds of MB, which a mesh serving no
        constraints need not pay. The time limit counts from a ready worker."""
        self._started = True
        for _ in range(self._size):
            self._spawn()

    def _spawn(self) -> None:
        self._spawned += 1
        task = asyncio.create_task(self._start_one())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        worker = _Worker()
        self._all.add(worker)
        try:
            await worker.ready()
        except BaseException:
            self._all.discard(worker)
            worker.kill()
            if self._closed:
                return
            raise
        if self._closed:
            self._all.discard(worker)
            worker.kill()
            return
        self._idle.put_nowait(worker)

    async def check(self, kind: Kind, text: str) -> None:
        """Raises INVALID_ARGUMENT naming `kind` if it does not compile in time;
        FAILED_PRECONDITION if this gateway has no grammar backend."""
        if not self._backend:
            raise FailedPreconditionError(
                f"{kind}: this gateway cannot check constraints: its image has no grammar "
                f"backend ({BACKEND}, which needs torch); run the gateway from the engine image "
                "to accept regex and JSON-schema constraints",
                reason="CONSTRAINT_BACKEND_MISSING",
            )
        key = (kind, text)
        cached = self._verdicts.get(key)
        if cached is not None and (cached[1] is None or cached[1] > time.monotonic()):
            self._verdicts.move_to_end(key)
            verdict = cached[0]
        else:
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.create_task(self._compile(kind, text))
                self._inflight[key] = task
                task.add_done_callback(lambda _: self._inflight.pop(key, None))
            verdict = await asyncio.shield(task)
        if verdict is not None:
            raise InvalidArgumentError(kind, f"the grammar backend refuses it: {verdict}")

    def _remember(self, key: tuple[Kind, str], verdict: str | None, lapses: float | None) -> None:
        self._verdicts[key] = (verdict, lapses)
        self._verdicts.move_to_end(key)
        if len(self._verdicts) > CACHE_SIZE:
            self._verdicts.popitem(last=False)

    async def _compile(self, kind: Kind, text: str) -> str | None:
        if not self._started:
            self._start()
        worker = await self._idle.get()
        try:
            verdict = await worker.run(kind, text, self._timeout_s)
        except BaseException as err:
            # Timed out, or the checker is closing: the worker's state is
            # unknown, so it is replaced rather than reused.
            self._all.discard(worker)
            await asyncio.to_thread(worker.kill)
            if not self._closed:
                self._spawn()
            if isinstance(err, TimeoutError):
                log.warning("constraint compile timed out", kind=kind, size=len(text))
                verdict = f"compiling it takes over {self._timeout_s:g} s"
                self._remember((kind, text), verdict, time.monotonic() + TIMEOUT_VERDICT_S)
                return verdict
            raise
        self._idle.put_nowait(worker)
        self._remember((kind, text), verdict, None)
        return verdict

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()
        for worker in list(self._all):
            await asyncio.to_thread(worker.kill)
        self._all.clear()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
