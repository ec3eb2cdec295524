"""The stream pacer: the message budget is shared by the active streams, and
a paced stream merges tokens between sends without losing or delaying the
first and the last."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.inference.engine import Delta, FinishReason
from services.inference.pacing import StreamPacer


def test_interval_grows_with_active_streams() -> None:
    pacer = StreamPacer(messages_per_s=1000)
    with pacer.stream(), pacer.stream():
        assert pacer.interval() == 0.002
        with pacer.stream():
            assert pacer.interval() == 0.003
    assert pacer.active == 0


def test_zero_budget_means_no_pacing() -> None:
    pacer = StreamPacer(messages_per_s=0)
    with pacer.stream():
        assert pacer.interval() == 0.0


def delta(token: int, done: int, *, index: int = 0, last: bool = False) -> Delta:
    return Delta(
        text=f"<{token}>",
        token_ids=(token,),
        prompt_tokens=3,
        completion_tokens=done,
        finish_reason=FinishReason.LENGTH if last else None,
        index=index,
    )


async def sent_at(
    made: list[tuple[float, Delta]], messages_per_s: float
) -> list[tuple[float, Delta]]:
    """Feeds deltas made at the given times through one paced stream; what was
    sent, and when."""
    now = [0.0]
    pacer = StreamPacer(messages_per_s, clock=lambda: now[0])

    async def engine() -> AsyncIterator[Delta]:
        for at, d in made:
            now[0] = at
            yield d

    with pacer.stream() as pace:
        return [(now[0], d) async for d in pace.coalesce(engine())]


async def test_first_and_last_go_at_once_and_the_rest_is_merged() -> None:
    # One stream at 10 messages/s: at most one message per 100 ms.
    made = [(i * 0.01, delta(i, i + 1, last=i == 24)) for i in range(25)]
    sent = await sent_at(made, messages_per_s=10)

    assert [at for at, _ in sent] == [0.0, 0.1, 0.2, 0.24]
    assert [d.token_ids for _, d in sent] == [
        (0,),
        tuple(range(1, 11)),
        tuple(range(11, 21)),
        tuple(range(21, 25)),
    ]
    assert "".join(d.text for _, d in sent) == "".join(f"<{i}>" for i in range(25))
    assert [d.completion_tokens for _, d in sent] == [1, 11, 21, 25]
    assert sent[-1][1].finish_reason == FinishReason.LENGTH


async def test_unpaced_streams_send_every_delta() -> None:
    made = [(i * 0.01, delta(i, i + 1, last=i == 4)) for i in range(5)]
    sent = await sent_at(made, messages_per_s=0)
    assert [d for _, d in sent] == [d for _, d in made]


async def test_choices_are_merged_apart_and_usage_only_grows() -> None:
    made = [
        (0.00, delta(10, 1, index=0)),
        (0.01, delta(20, 2, index=1)),
        (0.02, delta(11, 3, index=0)),
        (0.03, delta(21, 4, index=1, last=True)),
        (0.04, delta(12, 5, index=0, last=True)),
    ]
    sent = [d for _, d in await sent_at(made, messages_per_s=1)]
    assert [(d.index, d.token_ids) for d in sent] == [
        (0, (10,)),
        (0, (11,)),
        (1, (20, 21)),
        (0, (12,)),
    ]
    assert [d.completion_tokens for d in sent] == [1, 3, 4, 5]
