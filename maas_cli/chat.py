"""`maas chat`: a conversation with a model, a line of stdin per turn. Each
request carries the whole conversation so far (system prompt, every earlier
question and answer), so the model answers in context; the answer streams
as it is generated."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from maas.v1 import generation_pb2
from maas_cli.client import MaasClient
from maas_cli.output import errors, to_dict

EXIT_COMMANDS = ("/exit", "/quit")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass
class Conversation:
    model: str
    system: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)

    def messages(self, question: str) -> list[tuple[str, str]]:
        """The request's messages: the history, then the new question."""
        history = [("system", self.system)] if self.system else []
        for turn in self.turns:
            history += [("user", turn["user"]), ("assistant", turn["assistant"])]
        return [*history, ("user", question)]

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "system": self.system, "turns": self.turns}


async def _next_line(stdin: IO[str]) -> str | None:
    """The next question, or None at EOF. Read on a daemon thread, so the
    loop stays free and Ctrl-C during a read does not wait for Enter."""
    if stdin.isatty():
        errors.print("[bold]you>[/bold] ", end="")
    loop = asyncio.get_running_loop()
    read: asyncio.Future[str] = loop.create_future()

    def deliver(line: str) -> None:
        if not read.done():
            read.set_result(line)

    threading.Thread(
        target=lambda: loop.call_soon_threadsafe(deliver, stdin.readline()), daemon=True
    ).start()
    line = await read
    return line.rstrip("\n") if line else None


async def converse(
    client: MaasClient,
    conversation: Conversation,
    sampling: Sampling,
    *,
    stdin: IO[str],
    stream_to: IO[str] | None,
) -> None:
    """Asks one question per line until EOF or /exit. Answers are written to
    `stream_to` as they arrive (None: kept for the JSON document only)."""
    while (line := await _next_line(stdin)) is not None:
        question = line.strip()
        if question in EXIT_COMMANDS:
            return
        if not question:
            continue
        chunks = client.generate(
            conversation.model,
            messages=conversation.messages(question),
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            seed=sampling.seed,
        )
        answer: list[str] = []
        last: generation_pb2.GenerateResponse | None = None
        async for chunk in chunks:
            answer.append(chunk.text)
            last = chunk
            if stream_to is not None:
                stream_to.write(chunk.text)
                stream_to.flush()
        usage = to_dict(last.usage) if last is not None else {}
        finish = (
            generation_pb2.FinishReason.Name(last.finish_reason)
            .removeprefix("FINISH_REASON_")
            .lower()
            if last is not None
            else ""
        )
        turn = {"user": question, "assistant": "".join(answer), "finish_reason": finish}
        conversation.turns.append({**turn, "usage": usage})
        if stream_to is not None:
            stream_to.write("\n")
            stream_to.flush()
            errors.print(
                f"[dim]{usage.get('prompt_tokens', 0)} prompt + "
                f"{usage.get('completion_tokens', 0)} completion tokens ({finish})[/dim]",
                highlight=False,
            )
