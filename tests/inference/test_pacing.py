"""The stream pacer: the message budget is shared by the active streams."""

from __future__ import annotations

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


async def test_first_message_is_never_delayed() -> None:
    now = [100.0]
    pacer = StreamPacer(messages_per_s=1, clock=lambda: now[0])
    with pacer.stream() as pace:
        await pace.after_send()  # after the first message: nothing to wait for yet
        assert now[0] == 100.0
