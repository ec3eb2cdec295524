"""deploy.docker.first_key's plan flags: a limit the plan's uint32 cannot
carry is refused naming its flag, not raised by protobuf as a traceback."""

from __future__ import annotations

import pytest

from deploy.docker.first_key import arguments


@pytest.mark.parametrize("option", ["--requests-per-minute", "--max-concurrent-requests"])
@pytest.mark.parametrize("hostile", ["-1", str(2**32), "lots"])
def test_a_plan_limit_out_of_range_is_refused_naming_it(
    option: str, hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        arguments().parse_args(["acme", option, hostile])
    assert refused.value.code == 2
    assert option in capsys.readouterr().err


def test_plan_limits_take_the_whole_uint32_range() -> None:
    args = arguments().parse_args(
        ["acme", "--requests-per-minute", "0", "--max-concurrent-requests", str(2**32 - 1)]
    )
    assert (args.requests_per_minute, args.max_concurrent_requests) == (0, 2**32 - 1)
