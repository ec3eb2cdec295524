"""`make run AUTH_REPLICAS=2 GATEWAY_REPLICAS=2`: the launcher's flags for
several auth replicas and gateways, and the stack really started that way
(simulated engine) streaming a completion through every gateway."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from deploy.local.stack import SharedState, build_parser, service_specs
from gateway.settings import GatewaySettings
from services.anomaly.settings import AnomalySettings
from services.auth.settings import AuthSettings
from tests.e2e.test_local_stack import free_port_block

REPO = Path(__file__).resolve().parents[2]
SHARED = SharedState(
    database_url="postgresql://postgres@127.0.0.1:1/maas", quota_url="redis://127.0.0.1:1/0"
)


@pytest.fixture
def auth_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_AUTH_ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("MAAS_AUTH_KEY_PEPPER", "p" * 32)


def test_every_gateway_dials_every_auth_replica_and_they_share_their_state(
    tmp_path: Path, auth_secrets: None
) -> None:
    args = build_parser().parse_args(
        [
            *("--engine", "sim", "--base-port", "40000"),
            *("--auth-replicas", "3", "--gateway-replicas", "2"),
        ]
    )
    specs = service_specs(args, tmp_path, shared=SHARED)
    auths = [s for s in specs if s.module == "services.auth"]
    gateways = [s for s in specs if s.module == "gateway"]
    assert [s.name for s in auths] == ["auth-1", "auth-2", "auth-3"]
    assert [s.name for s in gateways] == ["gateway-1", "gateway-2"]
    ports = [s.port for s in specs] + [s.http_port for s in specs if s.http_port]
    assert len(set(ports)) == len(ports)
    # One replica of each keeps the ports `make run` always had.
    assert (auths[0].port, gateways[0].port) == (40001, 40000)
    for spec in auths:
        auth = AuthSettings.from_cli(spec.args)
        assert auth.port == spec.port
        assert auth.database_url is not None
        assert auth.database_url == SHARED.database_url
        assert auth.quota_url == SHARED.quota_url
    every_auth = ",".join(f"127.0.0.1:{s.port}" for s in auths)
    outboxes = set()
    for spec in gateways:
        gateway = GatewaySettings.from_cli(spec.args)
        assert gateway.auth_address == every_auth
        assert gateway.usage_outbox_dir == tmp_path / "outboxes"
        outboxes.add(gateway.usage_outbox_dir)
    assert GatewaySettings.from_cli(gateways[1].args).http_port == gateways[1].http_port
    # The anomaly policy acts through every auth replica too.
    anomaly = next(s for s in specs if s.module == "services.anomaly")
    policy = AnomalySettings.from_cli(anomaly.args).policy
    assert policy.auth_address == every_auth


def test_one_of_each_is_the_stack_it_always_was(tmp_path: Path, auth_secrets: None) -> None:
    args = build_parser().parse_args(["--engine", "sim", "--base-port", "40000"])
    specs = service_specs(args, tmp_path, shared=SHARED)
    for spec in specs:
        assert "--database-url" not in spec.args
        assert "--quota-url" not in spec.args
        assert "--usage-outbox-dir" not in spec.args
        assert spec.http_port is None


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual-tls"])
async def test_the_stack_runs_two_auth_replicas_and_two_gateways(
    shared_database: str, redis_url: str, tmp_path: Path, tls: bool
) -> None:
    # With TLS, the gateways check one certificate name across the auth address list.
    # 5 services, one more auth and one more gateway, and that gateway's HTTP port.
    base = free_port_block(5 + 3)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.local.stack",
        "--engine", "sim", "--sim-profile", "tiny-cpu",
        "--auth-replicas", "2", "--gateway-replicas", "2",
        "--database-url", shared_database, "--quota-url", redis_url,
        "--state-dir", str(tmp_path), "--base-port", str(base), "--exit-after-first",
        *(["--tls"] if tls else []),
        cwd=REPO, env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    output = out.decode()
    assert process.returncode == 0, output
    # A completion through each gateway, then one with a private adapter the
    # replica fetched from the registry over the auth replicas' address list.
    assert output.count("completion tokens") == 3, output
    assert "First completion from dev-first-adapter" in output, output
    for service in ("auth-1", "auth-2", "gateway-1", "gateway-2"):
        assert f"stopped {service} (exit 0)" in output, output
