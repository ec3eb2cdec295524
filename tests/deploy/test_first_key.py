"""deploy.docker.first_key's plan flags: a limit the plan's uint32 cannot
carry is refused naming its flag, not raised by protobuf as a traceback, and
0 sets the limit unlimited (against a real auth) rather than being dropped."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from deploy.docker.first_key import arguments, first_key, plan_limits
from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.connection import Connection
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.server import serving
from services.auth.settings import AuthSettings

ADMIN_TOKEN = "o" * 32


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


async def test_zero_sets_the_limit_unlimited_and_an_absent_flag_keeps_it(tmp_path: Path) -> None:
    settings = AuthSettings(
        port=0, admin_token=ADMIN_TOKEN, key_pepper="p" * 32, database_path=tmp_path / "auth.db"
    )
    telemetry = setup("auth", TelemetrySettings())
    connection = Connection.from_env({}, tmp_path / "no-secrets.json")
    admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    async with serving(settings, telemetry) as server:
        target = f"127.0.0.1:{server.port}"
        args = arguments().parse_args(["acme", "--requests-per-minute", "0"])
        assert plan_limits(args) == {"requests_per_minute": 0}
        key = await first_key(target, ADMIN_TOKEN, connection, "acme", plan_limits(args))
        assert key
        async with grpc.aio.insecure_channel(target) as channel:
            tenants = await auth_pb2_grpc.AuthStub(channel).ListTenants(
                auth_pb2.ListTenantsRequest(), metadata=admin
            )
    [tenant] = tenants.tenants
    default = settings.default_plan
    assert default.requests_per_minute > 0  # so 0 below is the flag's, not the default's
    assert tenant.plan.requests_per_minute == 0  # unlimited, as the help says
    assert tenant.plan.max_concurrent_requests == default.max_concurrent_requests
    telemetry.shutdown()
