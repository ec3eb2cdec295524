"""The gateway's request metrics (OpenTelemetry instruments)."""

from __future__ import annotations

from opentelemetry.metrics import Meter


class GatewayMetrics:
    def __init__(self, meter: Meter) -> None:
        self.requests = meter.create_counter(
            "maas.gateway.requests", unit="{request}", description="Generate calls by outcome"
        )
        self.tokens = meter.create_counter(
            "maas.gateway.tokens", unit="{token}", description="Tokens served, by kind"
        )
        self.time_to_first_token = meter.create_histogram(
            "maas.gateway.time_to_first_token", unit="s", description="Time to first token"
        )
        self.auth_failures = meter.create_counter(
            "maas.gateway.auth_failures", unit="{request}", description="Refused API keys"
        )

    def request_ended(
        self,
        *,
        model: str,
        status: str,
        prompt_tokens: int,
        completion_tokens: int,
        first_token_s: float | None,
    ) -> None:
        attributes = {"model": model, "status": status}
        self.requests.add(1, attributes)
        self.tokens.add(prompt_tokens, {"model": model, "kind": "prompt"})
        self.tokens.add(completion_tokens, {"model": model, "kind": "completion"})
        if first_token_s is not None:
            self.time_to_first_token.record(first_token_s, {"model": model})
