"""Restrictions: an operator's or the anomaly policy's suspension or throttle
of a tenant or one API key, until an expiry, with an audit trail.

The store keeps every restriction and audit entry; this process keeps the
active ones in memory, because Reserve checks them on every request. Like
the quota buckets, that makes one auth process the authority (see quota.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from services.auth.models import AuditEntry, Restriction, RestrictionAction
from services.auth.quota import TokenBucket
from services.auth.store import AuthStore
from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._wall = wall
        self._clock = clock
        self._active: dict[str, Restriction] = {}
        self._buckets: dict[str, TokenBucket] = {}

    async def load(self) -> None:
        """Takes up the restrictions still in force (after a restart)."""
        now = self._wall()
        self._active = {
            r.restriction_id: r for r in await self._store.list_restrictions(None) if r.active(now)
        }

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
        self._buckets.pop(restriction_id, None)
        if not current.active(now):
            return current  # expired or lifted already: nothing to undo, nothing to audit
        lifted = replace(current, lifted_at=now, lifted_by=actor)
        detail = f"lift {current.action.value} of {current.subject}" + (
            f": {reason}" if reason else ""
        )
        await self._store.save_restriction(lifted, self._audit(lifted, "lift", detail, actor))
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

    def admit(self, tenant_id: str, key_id: str) -> list[TokenBucket]:
        """Raises when a restriction refuses a generation now; otherwise the
        throttles' buckets to take one from once every other check passes."""
        if not self._active:
            return []
        now = self._wall()
        buckets: list[TokenBucket] = []
        for restriction in list(self._active.values()):
            if not restriction.active(now):
                del self._active[restriction.restriction_id]
                self._buckets.pop(restriction.restriction_id, None)
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
            bucket = self._bucket(restriction)
            if (wait := bucket.wait_for(1)) > 0:
                raise ResourceExhaustedError(
                    f"{restriction.subject.split(':')[0]} throttled to"
                    f" {restriction.requests_per_minute} requests per minute: {restriction.reason}",
                    retry_after_s=wait,
                    subject=f"restriction:{restriction.restriction_id}",
                )
            buckets.append(bucket)
        return buckets

    def _bucket(self, restriction: Restriction) -> TokenBucket:
        now = self._clock()
        bucket = self._buckets.get(restriction.restriction_id)
        if bucket is None:
            rate = restriction.requests_per_minute
            bucket = self._buckets[restriction.restriction_id] = TokenBucket(rate, rate, now)
        bucket.refill(now)
        return bucket

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
