"""Records to table rows and back, by column name, for both stores.

The tables and their columns are the same in SQLite and PostgreSQL; only how
a time and a key's scopes are stored differs (integer microseconds and a
comma-separated string in SQLite, TIMESTAMPTZ and TEXT[] in PostgreSQL), so
each store passes its own `time` and scopes. The SQL stays each store's own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from services.auth.adapters import Adapter
from services.auth.budgets import Budget
from services.auth.models import (
    ApiKeyRecord,
    AuditEntry,
    IdempotencyClaim,
    Plan,
    Priority,
    RequestStatus,
    Restriction,
    RestrictionAction,
    Scope,
    Tenant,
    UsageRecord,
)
from services.auth.pricing import Price


class Row(Protocol):
    """A fetched row by column name: sqlite3.Row and asyncpg's Record both are."""

    def __getitem__(self, column: str, /) -> Any: ...


# A stored time to a datetime (reading), or a datetime to its stored form (writing).
TimeIn: TypeAlias = Callable[[Any], datetime]
TimeOut: TypeAlias = Callable[[datetime], Any]

# What a later record of the same request may change in the ledger.
SUPERSEDED_USAGE_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "end_time",
    "status",
    "client_request_id",
)


def _maybe(value: Any, convert: Callable[[Any], Any]) -> Any:
    return None if value is None else convert(value)


def tenant_from(row: Row, time: TimeIn) -> Tenant:
    return Tenant(
        tenant_id=row["tenant_id"],
        name=row["name"],
        priority=Priority(row["priority"]),
        created_at=time(row["created_at"]),
        plan=Plan.from_json(row["plan"]),
    )


def tenant_row(tenant: Tenant, time: TimeOut) -> dict[str, Any]:
    return {
        "tenant_id": tenant.tenant_id,
        "name": tenant.name,
        "priority": int(tenant.priority),
        "created_at": time(tenant.created_at),
        "plan": tenant.plan.to_json(),
    }


def key_from(row: Row, time: TimeIn, scopes: Iterable[str]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        scopes=tuple(Scope(s) for s in scopes),
        secret_hash=bytes(row["secret_hash"]),
        created_at=time(row["created_at"]),
        revoked_at=_maybe(row["revoked_at"], time),
        expires_at=_maybe(row["expires_at"], time),
    )


def key_row(key: ApiKeyRecord, time: TimeOut, scopes: Any) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": scopes,
        "secret_hash": key.secret_hash,
        "created_at": time(key.created_at),
        "revoked_at": _maybe(key.revoked_at, time),
        "expires_at": _maybe(key.expires_at, time),
    }


def usage_from(row: Row, time: TimeIn) -> UsageRecord:
    return UsageRecord(
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        start_time=time(row["start_time"]),
        end_time=time(row["end_time"]),
        status=RequestStatus(row["status"]),
        cached_tokens=row["cached_tokens"],
        client_request_id=row["client_request_id"],
    )


def usage_row(record: UsageRecord, time: TimeOut) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "tenant_id": record.tenant_id,
        "key_id": record.key_id,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "start_time": time(record.start_time),
        "end_time": time(record.end_time),
        "status": record.status.value,
        "cached_tokens": record.cached_tokens,
        "client_request_id": record.client_request_id,
    }


def restriction_from(row: Row, time: TimeIn) -> Restriction:
    return Restriction(
        restriction_id=row["restriction_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        action=RestrictionAction(row["action"]),
        requests_per_minute=int(row["requests_per_minute"]),
        created_at=time(row["created_at"]),
        expires_at=time(row["expires_at"]),
        reason=row["reason"],
        actor=row["actor"],
        alert_id=row["alert_id"],
        lifted_at=_maybe(row["lifted_at"], time),
        lifted_by=row["lifted_by"],
    )


def restriction_row(r: Restriction, time: TimeOut) -> dict[str, Any]:
    return {
        "restriction_id": r.restriction_id,
        "tenant_id": r.tenant_id,
        "key_id": r.key_id,
        "action": r.action.value,
        "requests_per_minute": r.requests_per_minute,
        "created_at": time(r.created_at),
        "expires_at": time(r.expires_at),
        "reason": r.reason,
        "actor": r.actor,
        "alert_id": r.alert_id,
        "lifted_at": _maybe(r.lifted_at, time),
        "lifted_by": r.lifted_by,
    }


def audit_from(row: Row, time: TimeIn) -> AuditEntry:
    return AuditEntry(
        audit_id=row["audit_id"],
        at=time(row["at"]),
        actor=row["actor"],
        action=row["action"],
        restriction_id=row["restriction_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        detail=row["detail"],
    )


def audit_row(audit: AuditEntry, time: TimeOut) -> dict[str, Any]:
    return {
        "audit_id": audit.audit_id,
        "at": time(audit.at),
        "actor": audit.actor,
        "action": audit.action,
        "restriction_id": audit.restriction_id,
        "tenant_id": audit.tenant_id,
        "key_id": audit.key_id,
        "detail": audit.detail,
    }


def claim_from(row: Row, time: TimeIn) -> IdempotencyClaim:
    return IdempotencyClaim(
        tenant_id=row["tenant_id"],
        key=row["key"],
        request_id=row["request_id"],
        created_at=time(row["created_at"]),
    )


def claim_row(claim: IdempotencyClaim, time: TimeOut) -> dict[str, Any]:
    return {
        "tenant_id": claim.tenant_id,
        "key": claim.key,
        "request_id": claim.request_id,
        "created_at": time(claim.created_at),
    }


def price_from(row: Row, time: TimeIn) -> Price:
    return Price(
        model=row["model"],
        adapter=row["adapter"],
        currency=row["currency"],
        prompt=int(row["prompt"]),
        cached_prompt=int(row["cached_prompt"]),
        completion=int(row["completion"]),
        effective_from=time(row["effective_from"]),
        created_at=time(row["created_at"]),
    )


def price_row(price: Price, time: TimeOut) -> dict[str, Any]:
    return {
        "name": price.name,
        "model": price.model,
        "adapter": price.adapter,
        "currency": price.currency,
        "prompt": price.prompt,
        "cached_prompt": price.cached_prompt,
        "completion": price.completion,
        "effective_from": time(price.effective_from),
        "created_at": time(price.created_at),
    }


def budget_from(row: Row, time: TimeIn) -> Budget:
    return Budget(
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        monthly_limit=int(row["monthly_limit"]),
        total_limit=int(row["total_limit"]),
        soft_percent=int(row["soft_percent"]),
        updated_at=time(row["updated_at"]),
    )


def budget_row(budget: Budget, time: TimeOut) -> dict[str, Any]:
    return {
        "tenant_id": budget.tenant_id,
        "key_id": budget.key_id,
        "monthly_limit": budget.monthly_limit,
        "total_limit": budget.total_limit,
        "soft_percent": budget.soft_percent,
        "updated_at": time(budget.updated_at),
    }


# An adapter's columns but its weights: what listing and resolving read.
ADAPTER_HEAD_COLUMNS = (
    "adapter_id, tenant_id, name, base_model, rank, size_bytes, sha256, config_json, create_time"
)


def adapter_from(row: Row, time: TimeIn) -> Adapter:
    return Adapter(
        adapter_id=row["adapter_id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        base_model=row["base_model"],
        rank=int(row["rank"]),
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        config_json=bytes(row["config_json"]),
        create_time=time(row["create_time"]),
    )


def adapter_row(adapter: Adapter, weights: bytes, time: TimeOut) -> dict[str, Any]:
    return {
        "adapter_id": adapter.adapter_id,
        "tenant_id": adapter.tenant_id,
        "name": adapter.name,
        "base_model": adapter.base_model,
        "rank": adapter.rank,
        "size_bytes": adapter.size_bytes,
        "sha256": adapter.sha256,
        "config_json": adapter.config_json,
        "weights": weights,
        "create_time": time(adapter.create_time),
    }
