"""`make run`'s launcher, for real: five processes, a dev key, a first
completion, then a clean SIGTERM shutdown of every service; and its
arguments (replicas, TLS, the service token) without starting anything."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.stack import (
    Launch,
    build_parser,
    load_secrets,
    parse_args,
    service_specs,
    service_token_environment,
)
from deploy.local.throwaway_ca import write_throwaway_ca
from gateway.settings import GatewaySettings
from services.anomaly.settings import AnomalySettings
from services.auth.settings import MIN_SECRET_LENGTH, AuthSettings
from services.common.settings import ServiceSettings
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings


def free_port_block(size: int) -> int:
    """A base port with `size` consecutive free ports after it."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports")


def test_local_stack_streams_a_completion_and_stops_cleanly(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "deploy.local.stack",
            "--model", str(tiny_model_path),
            "--state-dir", str(tmp_path),
            "--base-port", str(free_port_block(5)),
            "--exit-after-first",
        ],
        capture_output=True, text=True, timeout=600,
        # The HTTP face's default port is one per machine; test runs go side by side.
        env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "completion tokens" in output
    # The tiny model's replica holds private adapters: one uploaded, fetched and generating.
    assert "First completion from dev-first-adapter" in output, output
    assert (tmp_path / "dev_api_key").read_text().startswith("maas_")
    for service in ("gateway", "router", "inference", "anomaly", "auth"):
        assert f"stopped {service} (exit 0)" in output, output


def test_a_simulated_mesh_starts_without_a_model(tmp_path: Path) -> None:
    replicas = 4
    result = subprocess.run(
        [
            sys.executable, "-m", "deploy.local.stack",
            "--engine", "sim", "--sim-profile", "tiny-cpu",
            "--replicas", str(replicas),
            "--state-dir", str(tmp_path),
            "--base-port", str(free_port_block(5 + replicas - 1)),
            "--exit-after-first",
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "completion tokens" in output
    for i in range(1, replicas + 1):
        assert f"stopped inference-{i} (exit 0)" in output, output


# The launcher's arguments, without starting anything.

SETTINGS_OF: dict[str, type[ServiceSettings]] = {
    "services.auth": AuthSettings,
    "services.anomaly": AnomalySettings,
    "services.inference": InferenceSettings,
    "services.router": RouterSettings,
    "gateway": GatewaySettings,
}


def specs_for(tmp_path: Path, *argv: str, tls: bool = False) -> list[Launch]:
    args = build_parser().parse_args(["--model", "/models/tiny", "--base-port", "40000", *argv])
    certs = write_throwaway_ca(tmp_path / "tls") if tls else None
    return service_specs(args, tmp_path, certs)


def settings_of(spec: Launch) -> ServiceSettings:
    """The spec's flags as its service parses them at start-up."""
    return SETTINGS_OF[spec.module].from_cli(spec.args)


@pytest.fixture
def auth_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_AUTH_ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("MAAS_AUTH_KEY_PEPPER", "p" * 32)


def test_replicas_get_their_own_ports_and_all_sit_behind_the_router(
    tmp_path: Path, auth_secrets: None
) -> None:
    specs = specs_for(tmp_path, "--replicas", "3")
    by_name = {s.name: s for s in specs}
    replicas = [s for s in specs if s.module == "services.inference"]
    assert [s.name for s in replicas] == ["inference-1", "inference-2", "inference-3"]
    assert [s.port for s in replicas] == [40003, 40005, 40006]
    assert len({s.port for s in specs}) == len(specs) == 7
    router = settings_of(by_name["router"])
    assert isinstance(router, RouterSettings)
    assert router.replicas == [f"127.0.0.1:{s.port}" for s in replicas]
    for spec in replicas:
        assert settings_of(spec).port == spec.port
    # One replica keeps the names and ports `make run` always had, in the catalog's start order.
    single = specs_for(tmp_path, "--replicas", "1")
    assert [(s.name, s.port) for s in single] == [
        ("auth", 40001), ("inference", 40003), ("router", 40002), ("anomaly", 40004),
        ("gateway", 40000),
    ]  # fmt: skip


def test_sim_replicas_get_the_simulated_engine_and_no_model(tmp_path: Path) -> None:
    args = parse_args(["--engine", "sim", "--replicas", "2", "--sim-profile", "tiny-cpu"])
    for spec in service_specs(args, tmp_path):
        if spec.module == "services.inference":
            settings = settings_of(spec)
            assert isinstance(settings, InferenceSettings)
            assert (settings.engine, settings.sim_profile) == ("sim", "tiny-cpu")
            assert settings.model_name == "tiny-cpu"
            assert spec.env == {}


def test_the_real_engine_still_needs_a_model() -> None:
    with pytest.raises(SystemExit):
        parse_args([])


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_a_replica_count_below_one_is_refused(count: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--replicas", count])


def test_tls_gives_every_inner_hop_mutual_tls_and_the_gateway_plain_tls(
    tmp_path: Path, auth_secrets: None
) -> None:
    for spec in specs_for(tmp_path, "--tls", "--replicas", "2", tls=True):
        settings = settings_of(spec)
        assert settings.tls.cert is not None and settings.tls.cert.exists(), spec.name
        assert settings.tls.ca == tmp_path / "tls" / "ca.pem"
        assert settings.tls.require_client_cert == (spec.name != "gateway"), spec.name
    assert all(not settings_of(s).tls.serves_tls for s in specs_for(tmp_path))


def test_new_secrets_are_long_enough_for_auth(tmp_path: Path) -> None:
    made = load_secrets(tmp_path)
    assert all(len(made[name]) >= MIN_SECRET_LENGTH for name in ("admin_token", "key_pepper"))


def test_a_kept_secret_too_short_for_auth_stops_the_start_naming_it(tmp_path: Path) -> None:
    kept = {"admin_token": "admin", "key_pepper": "p" * 32, "service_token": "s" * 32}
    (tmp_path / "secrets.json").write_text(json.dumps(kept))
    with pytest.raises(SystemExit, match="admin_token shorter than 32 characters"):
        load_secrets(tmp_path)
    assert json.loads((tmp_path / "secrets.json").read_text()) == kept  # nothing replaced


def test_the_service_token_is_kept_with_the_other_secrets_and_reaches_every_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = {"admin_token": "a" * 32, "key_pepper": "p" * 32}
    (tmp_path / "secrets.json").write_text(json.dumps(kept))
    secrets = load_secrets(tmp_path)
    assert secrets["admin_token"] == kept["admin_token"]
    assert secrets["key_pepper"] == kept["key_pepper"]
    assert len(secrets["service_token"]) >= 32
    assert load_secrets(tmp_path) == secrets
    for name, value in service_token_environment(secrets["service_token"]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAAS_AUTH_ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("MAAS_AUTH_KEY_PEPPER", "p" * 32)
    for spec in specs_for(tmp_path):
        token = settings_of(spec).service_token
        assert token is not None and token.get_secret_value() == secrets["service_token"]
