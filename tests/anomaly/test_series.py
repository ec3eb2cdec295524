"""The series table's shared `advance` step and counts, without a detector."""

from __future__ import annotations

from dataclasses import dataclass

from services.anomaly.detectors.series import CountsSeries, SeriesTable


@dataclass
class _State:
    bucket: int


class _Counted(CountsSeries[_State]):
    def __init__(self, table: SeriesTable[_State]) -> None:
        self._table = table


def test_close_before_closes_only_active_series_with_an_earlier_open_bucket() -> None:
    table = SeriesTable(max_series=10, idle_buckets=100, create=_State)
    table.get("old", 1)
    table.get("current", 5)
    closed: list[str] = []

    table.close_before(5, lambda key, state: closed.append(key))
    assert closed == ["old"]

    # Nothing seen since: no series is active, so none is closed again.
    table.close_before(6, lambda key, state: closed.append(key))
    assert closed == ["old"]


def test_close_before_forgets_idle_series_and_counts_them() -> None:
    table = SeriesTable(max_series=10, idle_buckets=2, create=_State)
    table.get("idle", 1)
    table.get("busy", 4)
    counted = _Counted(table)

    table.close_before(5, lambda key, state: None)

    assert counted.tracked() == 1
    assert counted.evicted() == 1
