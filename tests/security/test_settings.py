"""TLS and service-token settings: validation, where they come from, and what
they turn into (credentials, the mesh-only check) at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.local.throwaway_ca import write_throwaway_ca
from gateway.settings import GatewaySettings
from maas_cli.connection import Connection
from services.anomaly.settings import AnomalySettings
from services.auth.settings import MIN_SECRET_LENGTH, AuthSettings
from services.common.mesh_only import MeshOnlyInterceptor
from services.common.security import channel_security, server_security
from services.common.settings import ServiceSettings, TlsSettings
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings

TOKEN = "t" * 32


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"cert": "/c.pem"}, "tls.cert and tls.key go together"),
        ({"key": "/k.pem"}, "tls.cert and tls.key go together"),
        ({"cert": "/c", "key": "/k", "require_client_cert": True}, "needs tls.ca"),
        ({"ca": "/ca", "require_client_cert": True}, "needs tls.ca, tls.cert"),
    ],
)
def test_inconsistent_tls_settings_are_refused(fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        TlsSettings.model_validate(fields)


@pytest.mark.parametrize("url", ["postgresql://127.0.0.1/maas", "127.0.0.1:6379", ""])
def test_a_quota_url_that_is_not_redis_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValidationError, match="quota_url"):
        AuthSettings(
            admin_token="a" * MIN_SECRET_LENGTH, key_pepper="p" * MIN_SECRET_LENGTH, quota_url=url
        )


def test_unset_means_plaintext_and_open() -> None:
    settings = RouterSettings()
    assert server_security(settings).transport == "plaintext"
    assert server_security(settings).interceptors() == []
    assert channel_security(settings).credentials is None
    assert channel_security(settings).service_token is None


def test_tls_and_token_come_from_flags_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = write_throwaway_ca(tmp_path)
    monkeypatch.setenv("MAAS_ROUTER_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("MAAS_ROUTER_TLS__CA", str(certs.ca))
    settings = RouterSettings.from_cli(
        ["--tls.cert", str(certs["router"].cert), "--tls.key", str(certs["router"].key),
         "--tls.require-client-cert"]
    )  # fmt: skip
    assert settings.tls.require_client_cert
    assert settings.tls.ca == certs.ca
    server = server_security(settings)
    assert server.transport == "mutual-tls"
    [guard] = server.interceptors()
    assert isinstance(guard, MeshOnlyInterceptor)
    channels = channel_security(settings)
    assert channels.credentials is not None
    assert channels.service_token == TOKEN


def test_the_gateway_listener_is_public_while_its_channels_carry_the_token(
    tmp_path: Path,
) -> None:
    certs = write_throwaway_ca(tmp_path)
    settings = GatewaySettings(
        tls=TlsSettings(cert=certs["gateway"].cert, key=certs["gateway"].key, ca=certs.ca),
        service_token=TOKEN,
    )
    public = server_security(settings, mesh_only=False)
    assert public.transport == "tls"
    assert public.interceptors() == []
    assert channel_security(settings).service_token == TOKEN


def test_a_missing_certificate_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    settings = RouterSettings(tls=TlsSettings(cert=tmp_path / "nope.pem", key=tmp_path / "k.pem"))
    with pytest.raises(ValueError, match=r"tls\.cert: cannot read .*nope\.pem"):
        server_security(settings)


def test_a_short_service_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="service_token"):
        RouterSettings(service_token="short")


def test_the_cli_finds_the_service_token_in_the_secrets_file(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"admin_token": "a", "service_token": TOKEN}))
    from_file = Connection.from_env({}, secrets_file)
    assert from_file.service_metadata() == (("x-maas-service-token", TOKEN),)
    assert from_file.credentials() is None
    from_env = Connection.from_env({"MAAS_SERVICE_TOKEN": "other"}, secrets_file)
    assert from_env.service_token == "other"
    assert Connection.from_env({}, tmp_path / "absent.json").service_metadata() == ()


INTERNAL_SETTINGS: list[type[ServiceSettings]] = [
    RouterSettings,
    InferenceSettings,
    AnomalySettings,
    AuthSettings,
]
# What each needs besides the host, none of it about listening.
REQUIRED: dict[type[ServiceSettings], dict[str, object]] = {
    AuthSettings: {"admin_token": "o" * 32, "key_pepper": "p" * 32},
    InferenceSettings: {"model": "tiny"},
}


def internal(settings_type: type[ServiceSettings], **fields: object) -> ServiceSettings:
    return settings_type.model_validate(REQUIRED.get(settings_type, {}) | fields)


@pytest.mark.parametrize("settings_type", INTERNAL_SETTINGS)
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "auth.internal", ""])
def test_an_internal_service_beyond_loopback_without_protection_is_refused(
    settings_type: type[ServiceSettings], host: str
) -> None:
    with pytest.raises(ValidationError, match=r"beyond loopback.*service_token or mutual TLS"):
        internal(settings_type, host=host)


@pytest.mark.parametrize("settings_type", INTERNAL_SETTINGS)
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_an_internal_service_on_loopback_needs_no_protection(
    settings_type: type[ServiceSettings], host: str
) -> None:
    assert internal(settings_type, host=host).host == host


def test_beyond_loopback_a_service_token_or_mutual_tls_will_do(tmp_path: Path) -> None:
    assert RouterSettings(host="0.0.0.0", service_token=TOKEN).host == "0.0.0.0"
    mutual = TlsSettings(
        cert=tmp_path / "c.pem", key=tmp_path / "k.pem", ca=tmp_path / "ca.pem",
        require_client_cert=True,
    )  # fmt: skip
    assert RouterSettings(host="0.0.0.0", tls=mutual).host == "0.0.0.0"
    # TLS that any caller may use protects the wire, not the door.
    server_only = TlsSettings(cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    with pytest.raises(ValidationError, match="beyond loopback"):
        RouterSettings(host="0.0.0.0", tls=server_only)


def test_the_public_gateway_listens_anywhere_without_a_token() -> None:
    assert GatewaySettings(host="0.0.0.0").host == "0.0.0.0"


def test_the_refusal_comes_before_an_internal_service_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAAS_ROUTER_SERVICE_TOKEN", raising=False)
    with pytest.raises(ValidationError, match=r"host '0\.0\.0\.0' is beyond loopback"):
        RouterSettings.from_cli(["--host", "0.0.0.0"])


@pytest.mark.parametrize("field", ["admin_token", "key_pepper"])
def test_the_operator_token_and_key_pepper_have_a_least_length(field: str) -> None:
    fields = {"admin_token": "o" * MIN_SECRET_LENGTH, "key_pepper": "p" * MIN_SECRET_LENGTH}
    assert AuthSettings.model_validate(fields).host == "127.0.0.1"
    fields[field] = "x" * (MIN_SECRET_LENGTH - 1)
    with pytest.raises(ValidationError) as info:
        AuthSettings.model_validate(fields)
    [error] = info.value.errors()
    assert error["loc"] == (field,)
    assert f"at least {MIN_SECRET_LENGTH} characters" in error["msg"]
