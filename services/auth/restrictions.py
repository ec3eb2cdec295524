"""Restrictions: an operator's or the anomaly policy's suspension or throttle
of a tenant or one API key, until an expiry, with an audit trail.

The store keeps every restriction and audit entry; each replica keeps the
active ones in memory, because Reserve checks them on every request. With
shared quota state (Redis) a restrict or lift bumps the tenant's version
there; a Reserve taken by an older version is refused by the state as stale,
and the replica reloads from the store and admits again, so a restriction
made through one replica binds every replica from its next Reserve. The
throttles' buckets live in the quota state (quota_state.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from services.auth.models import AuditEntry, Restriction, RestrictionAction
from services.auth.quota_state import QuotaState, Throttle
from services.auth.store import AuthStore
from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)

MAX_DURATION = timedelta(days=30)
MAX_AUDIT_LIST = 1000
MAX_TEXT = 512


class SuspendedError(PermissionDeniedError):
    """A suspended tenant or key asked for a generation."""


@dataclass(frozen=True, slots=True)
class RestrictRequest:
    action: RestrictionAction
    duration: timedelta
    reason: str
    actor: str
    tenant_id: str = ""
    key_id: str = ""
    requests_per_minute: int = 0
    alert_id: str = ""


class Restrictions:
    def __init__(
        self,
        store: AuthStore,
        *,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        shared: QuotaState | None = None,
    ) -> None:
        """`shared`, when set, is told of every change so other replicas reload."""
        self._store = store
        self._wall = wall
        self._shared = shared
        self._active: dict[str, Restriction] = {}
        # The shared version of each tenant's restrictions this replica loaded.
        self._versions: dict[str, str] = {}

    async def load(self) -> None:
        """Takes up the restrictions still in force (after a restart)."""
        now = self._wall()
        self._active = {
            r.restriction_id: r for r in await self._store.list_restrictions(None) if r.active(now)
        }

    def version(self, tenant_id: str) -> str:
        return self._versions.get(tenant_id, "")

    async def refresh(self, tenant_id: str, version: str) -> None:
        """The shared version was `version` before this reload, so what the
        reload finds is at least that new."""
        await self.load()
        self._versions[tenant_id] = version

    async def _changed(self, tenant_id: str) -> None:
        if self._shared is not None:
            await self._shared.restrictions_changed(tenant_id)

    async def restrict(self, request: RestrictRequest) -> Restriction:
        tenant_id = await self._subject_tenant(request)
        if request.action == RestrictionAction.THROTTLE and request.requests_per_minute <= 0:
            raise InvalidArgumentError("requests_per_minute", "a throttle needs a rate above 0")
        if not timedelta(0) < request.duration <= MAX_DURATION:
            raise InvalidArgumentError("duration", "must be more than 0 and at most 30 days")
        _check_text("reason", request.reason)
        _check_text("actor", request.actor)
        now = self._wall()
        restriction = Restriction(
            restriction_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            key_id=request.key_id,
            action=request.action,
            requests_per_minute=(
                request.requests_per_minute if request.action == RestrictionAction.THROTTLE else 0
            ),
            created_at=now,
            expires_at=now + request.duration,
            reason=request.reason,
            actor=request.actor,
            alert_id=request.alert_id,
        )
        rate = (
            f" to {restriction.requests_per_minute}/min"
            if restriction.action == RestrictionAction.THROTTLE
            else ""
        )
        detail = (
            f"{restriction.action.value} {restriction.subject}{rate}"
            f" until {restriction.expires_at.isoformat()}: {request.reason}"
        )
        await self._store.save_restriction(
            restriction, self._audit(restriction, "restrict", detail)
        )
        self._active[restriction.restriction_id] = restriction
        await self._changed(tenant_id)
        return restriction

    async def lift(self, restriction_id: str, actor: str, reason: str) -> Restriction:
        _check_text("actor", actor)
        found = [
            r
            for r in await self._store.list_restrictions(None)
            if r.restriction_id == restriction_id
        ]
        if not found:
            raise NotFoundError(f"no restriction {restriction_id!r}")
        current = found[0]
        now = self._wall()
        self._active.pop(restriction_id, None)
        if not current.active(now):
            return current  # expired or lifted already: nothing to undo, nothing to audit
        lifted = replace(current, lifted_at=now, lifted_by=actor)
        detail = f"lift {current.action.value} of {current.subject}" + (
            f": {reason}" if reason else ""
        )
        await self._store.save_restriction(lifted, self._audit(lifted, "lift", detail, actor))
        await self._changed(current.tenant_id)
        return lifted

    async def find(self, tenant_id: str, include_inactive: bool) -> list[Restriction]:
        found = await self._store.list_restrictions(tenant_id or None)
        now = self._wall()
        return found if include_inactive else [r for r in found if r.active(now)]

    async def audit(self, tenant_id: str, limit: int) -> list[AuditEntry]:
        return await self._store.list_audit(
            tenant_id or None, min(limit or MAX_AUDIT_LIST, MAX_AUDIT_LIST)
        )

    def active(self, restriction: Restriction) -> bool:
        return restriction.active(self._wall())

    def admit(self, tenant_id: str, key_id: str) -> list[Throttle]:
        """Raises when a restriction refuses a generation now; otherwise the
        throttles to take one request from once every other check passes."""
        if not self._active:
            return []
        now = self._wall()
        throttles: list[Throttle] = []
        for restriction in list(self._active.values()):
            if not restriction.active(now):
                del self._active[restriction.restriction_id]
                continue
            if restriction.tenant_id != tenant_id or (
                restriction.key_id and restriction.key_id != key_id
            ):
                continue
            if restriction.action == RestrictionAction.SUSPEND:
                raise SuspendedError(
                    f"{restriction.subject.split(':')[0]} suspended until"
                    f" {restriction.expires_at.isoformat()}: {restriction.reason}"
                )
            throttles.append(
                Throttle(
                    restriction.restriction_id,
                    restriction.requests_per_minute,
                    f"{restriction.subject.split(':')[0]} throttled to"
                    f" {restriction.requests_per_minute} requests per minute: {restriction.reason}",
                )
            )
        return throttles

    async def _subject_tenant(self, request: RestrictRequest) -> str:
        if bool(request.tenant_id) == bool(request.key_id):
            raise InvalidArgumentError("subject", "set exactly one of tenant_id and key_id")
        if request.action not in (RestrictionAction.SUSPEND, RestrictionAction.THROTTLE):
            raise InvalidArgumentError("action", "must be SUSPEND or THROTTLE")
        if request.key_id:
            key = await self._store.get_key(request.key_id)
            if key is None:
                raise NotFoundError(f"no API key {request.key_id!r}")
            return key.tenant_id
        if await self._store.get_tenant(request.tenant_id) is None:
            raise NotFoundError(f"no tenant {request.tenant_id!r}")
        return request.tenant_id

    def _audit(
        self, restriction: Restriction, action: str, detail: str, actor: str | None = None
    ) -> AuditEntry:
        return AuditEntry(
            audit_id=uuid.uuid4().hex,
            at=self._wall(),
            actor=actor or restriction.actor,
            action=action,
            restriction_id=restriction.restriction_id,
            tenant_id=restriction.tenant_id,
            key_id=restriction.key_id,
            detail=detail,
        )


def _check_text(field: str, value: str) -> None:
    if not value.strip():
        raise InvalidArgumentError(field, "required")
    if len(value) > MAX_TEXT:
        raise InvalidArgumentError(field, f"at most {MAX_TEXT} characters")
