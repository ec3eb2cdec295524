"""bench.adapter_routing's flags: a count of rounds that would measure
nothing is refused before two meshes start."""

from __future__ import annotations

import pytest

from bench.adapter_routing import arguments


@pytest.mark.parametrize("hostile", ["0", "-3", "many"])
def test_rounds_refuses_a_count_that_measures_nothing(
    hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        arguments().parse_args(["--rounds", hostile])
    assert refused.value.code == 2
    assert "--rounds" in capsys.readouterr().err


def test_rounds_defaults_to_three_and_takes_one() -> None:
    assert arguments().parse_args([]).rounds == 3
    assert arguments().parse_args(["--rounds", "1"]).rounds == 1
