"""Every setting that costs memory, time or engine room has an upper bound:
infinite, NaN or huge values are refused at start, naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from services.auth.settings import AuthSettings
from services.common.settings import ServiceSettings
from services.console.settings import ConsoleSettings
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings

SECRET = "s" * 32
# What each needs besides the setting under test.
REQUIRED: dict[type[ServiceSettings], dict[str, object]] = {
    AuthSettings: {"admin_token": SECRET, "key_pepper": SECRET},
    InferenceSettings: {"model": "tiny"},
}
HUGE = 10**15

BOUNDED: list[tuple[type[ServiceSettings], str, object]] = [
    (InferenceSettings, "adapter_slots", HUGE),
    (InferenceSettings, "max_loras", HUGE),
    (InferenceSettings, "max_lora_rank", HUGE),
    (InferenceSettings, "max_adapter_bytes", HUGE),
    (InferenceSettings, "sim_adapter_load_s", "inf"),
    (InferenceSettings, "sim_adapter_load_s", "nan"),
    (RouterSettings, "adapter_idle_s", "inf"),
    (RouterSettings, "adapter_idle_s", "nan"),
    (RouterSettings, "adapter_idle_s", 1e9),
    (ConsoleSettings, "session_ttl_s", "inf"),
    (ConsoleSettings, "session_ttl_s", "nan"),
    (ConsoleSettings, "session_ttl_s", 1e12),
    (ConsoleSettings, "call_timeout_s", "inf"),
    (AuthSettings, "max_adapter_bytes", HUGE),
    (AuthSettings, "max_adapter_rank", HUGE),
    (AuthSettings, "max_adapters_per_tenant", HUGE),
    (AuthSettings, "max_adapter_uploads", HUGE),
    (AuthSettings, "max_adapter_uploads_per_tenant", HUGE),
    (GatewaySettings, "event_queue_size", HUGE),
    (GatewaySettings, "adapter_list_cache_size", HUGE),
    (GatewaySettings, "read_burst", "inf"),
    (GatewaySettings, "reads_per_s", "nan"),
    (GatewaySettings, "stream_messages_per_s", "inf"),
    (GatewaySettings, "stream_messages_per_s", HUGE),
    (GatewaySettings, "stream_messages_per_s", "inf"),
    (GatewaySettings, "stream_messages_per_s", "nan"),
    (GatewaySettings, "stream_messages_per_s", -1),
    (InferenceSettings, "stream_messages_per_s", "inf"),
    (InferenceSettings, "stream_messages_per_s", "nan"),
]


@pytest.mark.parametrize(
    ("settings_type", "name", "value"),
    BOUNDED,
    ids=[f"{t.__name__}.{name}={value}" for t, name, value in BOUNDED],
)
def test_an_unbounded_value_is_refused_naming_the_setting(
    settings_type: type[ServiceSettings], name: str, value: object
) -> None:
    with pytest.raises(ValidationError) as refused:
        settings_type.model_validate(REQUIRED.get(settings_type, {}) | {name: value})
    assert [error["loc"] for error in refused.value.errors()] == [(name,)]


@pytest.mark.parametrize(
    ("settings_type", "name"), sorted({(t, name) for t, name, _ in BOUNDED}, key=str)
)
def test_the_default_is_within_the_bound(settings_type: type[ServiceSettings], name: str) -> None:
    default = settings_type.model_fields[name].default
    given = settings_type.model_validate(REQUIRED.get(settings_type, {}) | {name: default})
    assert getattr(given, name) == default


def test_a_bound_set_by_env_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_CONSOLE_SESSION_TTL_S", "inf")
    with pytest.raises(ValidationError, match="session_ttl_s"):
        ConsoleSettings()


@pytest.mark.parametrize("slots", [1, 256])
def test_adapter_slots_without_a_registry_are_refused_naming_both(slots: int) -> None:
    # Else every private adapter request there would be NOT_FOUND, silently.
    with pytest.raises(ValidationError, match=r"adapter_slots \d+ needs registry_address"):
        InferenceSettings(model="tiny", adapter_slots=slots)
    given = InferenceSettings(model="tiny", adapter_slots=slots, registry_address="auth:50052")
    assert given.registry_address == "auth:50052"
    assert InferenceSettings(model="tiny", adapter_slots=0).registry_address is None


def test_adapter_slots_on_an_embedding_model_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"adapter_slots 1 on an embedding \(pooling\) model"):
        InferenceSettings(model="e", runner="pooling", adapter_slots=1, registry_address="a:1")
