"""The in-process mesh's wiring, read from the settings it gives each service
(the mesh itself runs in tests/e2e and tests/security over the real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.throwaway_ca import write_throwaway_ca
from gateway.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.catalog import BY_NAME, SERVICES
from services.inference.settings import InferenceSettings
from services.mesh import MeshOptions, mesh_settings
from services.router.settings import RouterSettings

TARGETS = {
    "auth": "127.0.0.1:1001",
    "inference": "127.0.0.1:1002",
    "router": "127.0.0.1:1003",
    "anomaly": "127.0.0.1:1004",
}


def test_every_service_listens_on_port_zero_and_dials_what_it_calls(tmp_path: Path) -> None:
    options = MeshOptions(state=tmp_path, model="tiny")
    for spec in SERVICES:
        settings = mesh_settings(spec, options, TARGETS)
        assert all(getattr(settings, port) == 0 for port in spec.port_fields), spec.name
        assert settings.service_token is None
        assert not settings.tls.serves_tls

    gateway = mesh_settings(BY_NAME["gateway"], options, TARGETS)
    assert isinstance(gateway, GatewaySettings)
    assert (gateway.auth_address, gateway.router_address, gateway.anomaly_address) == (
        TARGETS["auth"],
        TARGETS["router"],
        TARGETS["anomaly"],
    )
    assert gateway.usage_outbox_path.parent == tmp_path
    router = mesh_settings(BY_NAME["router"], options, TARGETS)
    assert isinstance(router, RouterSettings)
    assert router.replicas == [TARGETS["inference"]]
    inference = mesh_settings(BY_NAME["inference"], options, TARGETS)
    assert isinstance(inference, InferenceSettings) and inference.model == "tiny"
    auth = mesh_settings(BY_NAME["auth"], options, TARGETS)
    assert isinstance(auth, AuthSettings)
    assert auth.admin_token.get_secret_value() == options.admin_token
    assert auth.database_path.parent == tmp_path


def test_certificates_give_inner_hops_mutual_tls_and_the_gateway_plain_tls(
    tmp_path: Path,
) -> None:
    certs = write_throwaway_ca(tmp_path / "tls")
    options = MeshOptions(state=tmp_path, model="tiny", certs=certs, service_token="t" * 32)
    for spec in SERVICES:
        settings = mesh_settings(spec, options, TARGETS)
        assert settings.tls.cert == certs[spec.name].cert
        assert settings.tls.ca == certs.ca
        assert settings.tls.require_client_cert is (spec.name != "gateway"), spec.name
        assert settings.service_token is not None
        assert settings.service_token.get_secret_value() == "t" * 32


def test_overrides_win_over_the_mesh_and_reach_only_their_service(tmp_path: Path) -> None:
    options = MeshOptions(
        state=tmp_path,
        model="tiny",
        overrides={"gateway": {"auth_cache_ttl_s": 7.0, "grace_period_s": 3.0}},
    )
    gateway = mesh_settings(BY_NAME["gateway"], options, TARGETS)
    assert isinstance(gateway, GatewaySettings)
    assert (gateway.auth_cache_ttl_s, gateway.grace_period_s) == (7.0, 3.0)
    assert mesh_settings(BY_NAME["auth"], options, TARGETS).grace_period_s != 3.0


def test_a_service_started_before_what_it_calls_is_a_mistake_caught_at_once(
    tmp_path: Path,
) -> None:
    with pytest.raises(KeyError, match="inference"):
        mesh_settings(BY_NAME["router"], MeshOptions(state=tmp_path, model="tiny"), {})
