"""What the anomaly service does about an alert: per alert kind, throttle or
suspend the key or tenant behind it (in auth, with an expiry and an audit
record), or eject the replica (in the router), once per alert.

Deciding is pure (`Policy.decide`); acting goes through an `Actuator` on a
task of its own, so ingestion never waits on auth or the router. Every
action is reversible by an admin (`maas admin restriction lift`,
`maas admin replica restore`) and expires by itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import structlog

from services.anomaly.alerts import ActionTaken, Alert, Severity
from services.anomaly.settings import PolicyRule, PolicySettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do: `verb` on `target` for `duration_s`."""

    verb: str  # throttle_key, throttle_tenant, suspend_key, suspend_tenant, eject_replica
    target: str
    duration_s: float
    requests_per_minute: int
    alert: Alert


@dataclass(frozen=True, slots=True)
class RestrictionOrder:
    """What the policy asks auth for: suspend or throttle one key or tenant."""

    subject: Literal["key", "tenant"]
    target: str  # the key id or tenant id
    suspend: bool  # suspend outright; otherwise throttle to requests_per_minute
    requests_per_minute: int
    duration_s: float
    reason: str
    actor: str
    alert_id: str

    @classmethod
    def for_action(cls, action: Action, reason: str) -> RestrictionOrder:
        """The order for a throttle_* or suspend_* action."""
        kind, _, subject = action.verb.partition("_")
        if subject not in ("key", "tenant") or kind not in ("throttle", "suspend"):
            raise ValueError(f"{action.verb!r} restricts nothing")
        return cls(
            subject="key" if subject == "key" else "tenant",
            target=action.target,
            suspend=kind == "suspend",
            requests_per_minute=action.requests_per_minute,
            duration_s=action.duration_s,
            reason=reason,
            actor=f"policy:{action.alert.kind}",
            alert_id=action.alert.alert_id,
        )


class Actuator(Protocol):
    async def restrict(self, order: RestrictionOrder) -> str:
        """Restricts the order's key or tenant; the restriction id."""
        ...

    async def eject(self, address: str, duration_s: float, reason: str) -> None: ...


class Policy:
    def __init__(
        self, settings: PolicySettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._s = settings
        self._clock = clock
        # Alerts acted on, so merged findings of one anomaly act once.
        self._acted: OrderedDict[str, None] = OrderedDict()
        # (tenant, kind) -> until when one of its keys is restricted for it: a
        # leaked key's spike is its tenant's too, and the other keys did nothing.
        self._keys_restricted: dict[tuple[str, str], float] = {}

    def decide(self, alert: Alert) -> Action | None:
        """The action this alert calls for now, or None (once per alert)."""
        rule = self._s.rules.get(alert.kind)
        if rule is None or rule.action == "none" or alert.alert_id in self._acted:
            return None
        if alert.severity < Severity[rule.min_severity.upper()]:
            return None
        scope, _, target = alert.series.partition(":")
        verb = _verb(rule, scope)
        if verb is None or not target:
            return None
        if verb.startswith("suspend") and not self._s.allow_suspend:
            return None
        now = self._clock()
        if scope == "tenant" and self._keys_restricted.get((alert.tenant_id, alert.kind), 0) > now:
            return None
        if scope == "key":
            self._keys_restricted[(alert.tenant_id, alert.kind)] = now + rule.duration_s
            if len(self._keys_restricted) > self._s.remember_alerts:
                self._keys_restricted = {k: v for k, v in self._keys_restricted.items() if v > now}
        self._acted[alert.alert_id] = None
        while len(self._acted) > self._s.remember_alerts:
            self._acted.popitem(last=False)
        return Action(verb, target, rule.duration_s, rule.requests_per_minute, alert)


def _verb(rule: PolicyRule, scope: str) -> str | None:
    if rule.action == "eject":
        return "eject_replica" if scope == "replica" else None
    if scope in ("key", "tenant"):
        return f"{rule.action}_{scope}"
    return None


class PolicyRunner:
    """Takes actions off the ingestion path, one at a time, in order."""

    def __init__(
        self,
        policy: Policy,
        actuator: Actuator,
        on_taken: Callable[[str, ActionTaken], None],
        *,
        max_pending: int = 256,
        tenant_delay_s: float = 2.0,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._tenant_delay_s = tenant_delay_s
        self._policy = policy
        self._actuator = actuator
        self._on_taken = on_taken
        self._queue: asyncio.Queue[Action] = asyncio.Queue(max_pending)
        self._wall = wall
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def consider(self, alert: Alert) -> None:
        if alert.series.startswith("tenant:") and self._tenant_delay_s > 0:
            # The same events raise the key's alert too, maybe a moment later:
            # give it the chance to explain the tenant's.
            asyncio.get_running_loop().call_later(self._tenant_delay_s, self._decide, alert)
            return
        self._decide(alert)

    def _decide(self, alert: Alert) -> None:
        action = self._policy.decide(alert)
        if action is None:
            return
        try:
            self._queue.put_nowait(action)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("policy action dropped: queue full", alert_id=alert.alert_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            action = await self._queue.get()
            taken = await self._take(action)
            self._on_taken(action.alert.alert_id, taken)

    async def _take(self, action: Action) -> ActionTaken:
        alert = action.alert
        reason = f"{alert.kind} on {alert.series}: {alert.detail}"
        at = self._wall()
        expires = at + timedelta(seconds=action.duration_s)
        reference = ""
        try:
            if action.verb == "eject_replica":
                await self._actuator.eject(action.target, action.duration_s, reason)
            else:
                order = RestrictionOrder.for_action(action, reason)
                reference = await self._actuator.restrict(order)
        except Exception as err:  # a failed action is reported on the alert, never raised
            log.warning(
                "policy action failed", verb=action.verb, target=action.target, error=str(err)
            )
            return ActionTaken(action.verb, action.target, at, expires, error=_describe(err))
        log.info(
            "policy action taken", verb=action.verb, target=action.target, alert_id=alert.alert_id
        )
        return ActionTaken(action.verb, action.target, at, expires, reference=reference)


def _describe(err: Exception) -> str:
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(err) or type(err).__name__
