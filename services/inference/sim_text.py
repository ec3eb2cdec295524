"""The simulated engine's tokenizer and text: deterministic, model-free, and
cheap, yet prompts of equal prefix give equal tokens (so prefix caching is
meaningful) and lengths track a real tokenizer's."""

from __future__ import annotations

from collections.abc import Sequence

from services.inference.engine import ChatTurn

# Four UTF-8 bytes a token: close to English BPE's average of about four
# characters a token, so prompt lengths look like a real model's.
TOKEN_BYTES = 4

_SYLLABLES = (
    "ka", "ri", "to", "ne", "su", "mi", "la", "po", "ve", "da",
    "lo", "fi", "ru", "se", "na", "te", "mo", "ga", "bi", "zu",
)  # fmt: skip


def tokenize(text: str, vocab_size: int) -> list[int]:
    """Every TOKEN_BYTES bytes of the text's UTF-8, read as a number, modulo the vocabulary."""
    data = text.encode()
    data += b"\0" * (-len(data) % TOKEN_BYTES)
    return [word % vocab_size for word in memoryview(data).cast("I")]


def render_chat(turns: Sequence[ChatTurn]) -> str:
    """A fixed ChatML template, with the assistant's turn opened."""
    rendered = "".join(f"<|im_start|>{t.role}\n{t.content}<|im_end|>\n" for t in turns)
    return rendered + "<|im_start|>assistant\n"


def word(token_id: int) -> str:
    """The text of a generated token: a pseudo-word, the same for the same id."""
    count = len(_SYLLABLES)
    return " " + _SYLLABLES[token_id % count] + _SYLLABLES[token_id // count % count]
