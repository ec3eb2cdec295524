"""Form input turned into requests, each field checked with a message that
names it. The gateway checks every generation again: this is for people,
so a typo is answered beside the field instead of as a gRPC status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from maas.v1 import generation_pb2

# Stop strings a form may give; the gateway takes more, a person types a few.
MAX_STOP_STRINGS = 4


class FormError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _optional_float(field: str, raw: str, low: float, high: float) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(field, "a number, e.g. 0.7") from None
    if not low <= value <= high:
        raise FormError(field, f"between {low:g} and {high:g}")
    return value


def _optional_int(field: str, raw: str, low: int) -> int | None:
    if not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FormError(field, "a whole number") from None
    if value < low:
        raise FormError(field, f"at least {low}")
    return value


@dataclass(frozen=True)
class PlaygroundForm:
    model: str
    prompt: str
    system: str = ""
    temperature: str = ""
    max_tokens: str = ""
    stop: str = ""
    seed: str = ""

    def request(self) -> generation_pb2.GenerateRequest:
        if not self.model:
            raise FormError("model", "choose a model")
        if not self.prompt.strip():
            raise FormError("prompt", "say something")
        turns = []
        if self.system.strip():
            turns.append(generation_pb2.ChatMessage(role="system", content=self.system))
        turns.append(generation_pb2.ChatMessage(role="user", content=self.prompt))
        request = generation_pb2.GenerateRequest(
            model=self.model, messages=generation_pb2.ChatMessages(messages=turns)
        )
        # 2: the upper end of OpenAI's temperature range, which people know.
        temperature = _optional_float("temperature", self.temperature, 0.0, 2.0)
        if temperature is not None:
            request.temperature = temperature
        max_tokens = _optional_int("max_tokens", self.max_tokens, 1)
        if max_tokens is not None:
            request.max_tokens = max_tokens
        seed = _optional_int("seed", self.seed, 0)
        if seed is not None:
            request.seed = seed
        stops = [line for line in self.stop.splitlines() if line]
        if len(stops) > MAX_STOP_STRINGS:
            raise FormError("stop", f"at most {MAX_STOP_STRINGS}, one a line")
        request.stop.extend(stops)
        return request


def key_expiry(raw: str, now: datetime) -> datetime | None:
    """A key's expiry from a date field (the start of that day, UTC); empty: never."""
    if not raw.strip():
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise FormError("expires", "a date, YYYY-MM-DD") from None
    at = datetime.combine(day, time(), tzinfo=UTC)
    if at <= now:
        raise FormError("expires", "a day after today")
    return at
