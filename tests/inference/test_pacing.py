"""The stream pacer: the message budget is shared by the active streams, and
a paced stream merges tokens between sends without losing or delaying the
first and the last."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import pytest

from services.common.errors import InvalidArgumentError
from services.inference.engine import Delta, FinishReason
from services.inference.pacing import (
    MAX_MESSAGE_INTERVAL_S,
    StreamPacer,
    check_message_interval,
    requested_interval,
    stream_interval,
)


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
    made: list[tuple[float, Delta]], messages_per_s: float, requested_s: float = 0.0
) -> list[tuple[float, Delta]]:
    """Feeds deltas made at the given times through one paced stream (the
    consumer asking `requested_s`); what was sent, and when."""
    now = [0.0]
    pacer = StreamPacer(messages_per_s, clock=lambda: now[0])

    async def engine() -> AsyncIterator[Delta]:
        for at, d in made:
            now[0] = at
            yield d

    with pacer.stream(requested_s) as pace:
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


def test_a_consumer_asks_its_budget_shared_by_its_open_streams_at_most_a_second() -> None:
    assert stream_interval(8, 4000) == 0.002
    assert requested_interval(8, 4000) == 0.002
    assert requested_interval(1, 4000) == 0.00025
    # A consumer over its budget asks the longest a caller may ask, no more.
    assert requested_interval(10_000, 4000) == MAX_MESSAGE_INTERVAL_S == 1.0
    assert requested_interval(500, 0) == 0.0


@pytest.mark.parametrize("bad", [-0.001, 1.001, math.inf, -math.inf, math.nan])
def test_an_interval_past_the_bounds_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        check_message_interval(bad)
    assert refused.value.field == "min_message_interval_s"


def test_an_interval_within_the_bounds_is_taken() -> None:
    assert [check_message_interval(s) for s in (0.0, 0.25, 1.0)] == [0.0, 0.25, 1.0]


def test_a_stream_goes_at_the_larger_of_its_replicas_interval_and_the_asked_one() -> None:
    pacer = StreamPacer(messages_per_s=1000)
    with pacer.stream() as unasked, pacer.stream(requested_s=0.005) as asked:
        # The replica's own: 2 streams / 1,000 = 2 ms; the consumer asked 5 ms.
        assert (asked.interval(), unasked.interval()) == (0.005, 0.002)
    with contextlib.ExitStack() as streams:
        asked = streams.enter_context(pacer.stream(requested_s=0.003))
        for _ in range(5):
            streams.enter_context(pacer.stream())
        # Six streams here since it asked: the asked 3 ms grown six times
        # (18 ms) is above the replica's own 6 ms.
        assert pacer.interval() == 0.006
        assert asked.interval() == pytest.approx(0.018)
    with pacer.stream(requested_s=0.0005) as asked, pacer.stream(), pacer.stream():
        # The asked 0.5 ms grown three times is 1.5 ms; the replica's own is 3 ms.
        assert asked.interval() == 0.003


def test_the_asked_interval_grows_with_the_replicas_streams_never_shrinks() -> None:
    # No budget of its own: only what the consumer asked paces.
    pacer = StreamPacer(messages_per_s=0)
    with pacer.stream(requested_s=0.01) as first:
        # A burst: three more streams since the first asked, so the consumer
        # holds about four times the streams it counted then.
        with pacer.stream(0.02), pacer.stream(0.03), pacer.stream(0.04):
            assert first.interval() == pytest.approx(0.04)
        # They ended: back to what it asked, never below.
        assert first.interval() == 0.01
    with pacer.stream(requested_s=0.6) as near_the_bound, pacer.stream(0.6), pacer.stream(0.6):
        assert near_the_bound.interval() == MAX_MESSAGE_INTERVAL_S


async def test_a_stream_asked_for_a_longer_interval_merges_more() -> None:
    made = [(i * 0.01, delta(i, i + 1, last=i == 24)) for i in range(25)]
    # The replica's own pace (1,000 messages/s, one stream) is 1 ms, below a
    # token's 10 ms: alone it sends every token. The consumer asks 100 ms.
    alone = await sent_at(made, messages_per_s=1000)
    asked = await sent_at(made, messages_per_s=1000, requested_s=0.1)

    assert len(alone) == 25
    assert [at for at, _ in asked] == [0.0, 0.1, 0.2, 0.24]
    # Every token exactly once, in order, whatever the pace.
    for sent in (alone, asked):
        assert [t for _, d in sent for t in d.token_ids] == list(range(25))
        assert sent[-1][1].completion_tokens == 25
