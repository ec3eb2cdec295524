"""The gateway's request metrics (OpenTelemetry instruments)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation


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
        self.refusals_held = meter.create_counter(
            "maas.gateway.refusals.held",
            unit="{request}",
            description="Refusals of a spent budget held for the wait they name, by subject",
        )
        self.refusals_unheld = meter.create_counter(
            "maas.gateway.refusals.unheld",
            unit="{request}",
            description="Refusals of a spent budget answered at once: the holds were full",
        )
        self._refusals_holding: Callable[[], int] | None = None
        meter.create_observable_gauge(
            "maas.gateway.refusals.holding",
            callbacks=[self._observe_holding],
            unit="{request}",
            description="Refusals held now",
        )
        self.outbox_dead_letters = meter.create_counter(
            "maas.gateway.outbox.dead_letters",
            unit="{record}",
            description="Usage records set aside for good (refused by the ledger or unreadable)",
        )
        self._outbox_backlog: Callable[[], int] | None = None
        meter.create_observable_gauge(
            "maas.gateway.outbox.backlog",
            callbacks=[self._observe_backlog],
            unit="{record}",
            description="Usage records on disk waiting for the ledger",
        )

        self.outboxes_adopted = meter.create_counter(
            "maas.gateway.outbox.adopted",
            unit="{file}",
            description="Outbox files of gateways gone that this one took over to deliver",
        )
        self._adopted_backlog: Callable[[], int] | None = None
        meter.create_observable_gauge(
            "maas.gateway.outbox.adopted_backlog",
            callbacks=[self._observe_adopted_backlog],
            unit="{record}",
            description="Usage records in adopted outbox files waiting for the ledger",
        )

    def watch_holds(self, holding: Callable[[], int]) -> None:
        """Reports `holding()` as the refusals held now from now on."""
        self._refusals_holding = holding

    def _observe_holding(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._refusals_holding is not None:
            yield Observation(self._refusals_holding())

    def watch_adopted(self, backlog: Callable[[], int]) -> None:
        """Reports `backlog()` as the adopted outboxes' backlog from now on."""
        self._adopted_backlog = backlog

    def _observe_adopted_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._adopted_backlog is not None:
            yield Observation(self._adopted_backlog())

    def watch_outbox(self, backlog: Callable[[], int]) -> None:
        """Reports `backlog()` as the outbox's backlog from now on."""
        self._outbox_backlog = backlog

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._outbox_backlog is not None:
            yield Observation(self._outbox_backlog())

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
