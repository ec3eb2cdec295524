"""AuthStore on PostgreSQL (asyncpg): the production store, same contract as
the SQLite one. Every write is one statement in its own transaction, so an
acknowledged write is durable when the call returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from services.auth.models import (
    ApiKeyRecord,
    AuditEntry,
    Grouping,
    IdempotencyClaim,
    Plan,
    Priority,
    RequestStatus,
    Restriction,
    RestrictionAction,
    Scope,
    Tenant,
    UsageBucket,
    UsageRecord,
    UsageSummary,
)
from services.auth.store import TenantExistsError

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    priority    INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    plan        TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    name        TEXT NOT NULL,
    scopes      TEXT[] NOT NULL,
    secret_hash BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    expires_at  TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id);
CREATE TABLE IF NOT EXISTS usage_records (
    request_id        TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    start_time        TIMESTAMPTZ NOT NULL,
    end_time          TIMESTAMPTZ NOT NULL,
    status            TEXT NOT NULL,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    client_request_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage_records(tenant_id, end_time);
CREATE TABLE IF NOT EXISTS restrictions (
    restriction_id      TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    action              TEXT NOT NULL,
    requests_per_minute INTEGER NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    reason              TEXT NOT NULL,
    actor               TEXT NOT NULL,
    alert_id            TEXT NOT NULL,
    lifted_at           TIMESTAMPTZ,
    lifted_by           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS restrictions_by_tenant ON restrictions(tenant_id);
CREATE TABLE IF NOT EXISTS audit_log (
    audit_id       TEXT PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    restriction_id TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    detail         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_tenant_time ON audit_log(tenant_id, at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys(created_at);
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS plan TEXT NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS cached_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS client_request_id TEXT NOT NULL DEFAULT '';
"""


def _period(unit: str, fmt: str) -> str:
    return f"""to_char(date_trunc('{unit}', end_time AT TIME ZONE 'UTC'), '{fmt}')"""


_POSTGRES_BUCKET_KEYS = {
    Grouping.MODEL: "model",
    Grouping.HOUR: _period("hour", 'YYYY-MM-DD"T"HH24":00:00Z"'),
    Grouping.DAY: _period("day", 'YYYY-MM-DD"T00:00:00Z"'),
    Grouping.MONTH: _period("month", 'YYYY-MM-DD"T00:00:00Z"'),
}


def _tenant(row: Any) -> Tenant:
    return Tenant(
        row["tenant_id"],
        row["name"],
        Priority(row["priority"]),
        row["created_at"],
        Plan.from_json(row["plan"]),
    )


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        scopes=tuple(Scope(s) for s in row["scopes"]),
        secret_hash=bytes(row["secret_hash"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )


def _usage(row: Any) -> UsageRecord:
    return UsageRecord(
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        status=RequestStatus(row["status"]),
        cached_tokens=row["cached_tokens"],
        client_request_id=row["client_request_id"],
    )


class PostgresAuthStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def create_tenant(self, tenant: Tenant) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO tenants VALUES ($1, $2, $3, $4, $5)",
                tenant.tenant_id,
                tenant.name,
                int(tenant.priority),
                tenant.created_at,
                tenant.plan.to_json(),
            )
        except asyncpg.UniqueViolationError as err:
            raise TenantExistsError(tenant.name) from err

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._pool.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)
        return _tenant(row) if row else None

    async def set_plan(
        self, tenant_id: str, plan: Plan, priority: Priority | None
    ) -> Tenant | None:
        row = await self._pool.fetchrow(
            "UPDATE tenants SET plan = $2, priority = COALESCE($3, priority)"
            " WHERE tenant_id = $1 RETURNING *",
            tenant_id,
            plan.to_json(),
            int(priority) if priority is not None else None,
        )
        return _tenant(row) if row else None

    async def tokens_used_since(self, tenant_id: str, since: datetime) -> int:
        used = await self._pool.fetchval(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage_records"
            " WHERE tenant_id = $1 AND end_time >= $2",
            tenant_id,
            since,
        )
        return int(used)

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._pool.fetch("SELECT * FROM tenants ORDER BY created_at, name")
        return [_tenant(r) for r in rows]

    async def create_key(self, key: ApiKeyRecord) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
            key.key_id,
            key.tenant_id,
            key.name,
            [s.value for s in key.scopes],
            key.secret_hash,
            key.created_at,
            key.expires_at,
        )

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        return _key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        rows = await self._pool.fetch(
            "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at", tenant_id
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE key_id = $1"
            " RETURNING *",
            key_id,
            at,
        )
        return _key(row) if row else None

    async def record_usage(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchrow(
                "INSERT INTO usage_records VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                record.request_id,
                record.tenant_id,
                record.key_id,
                record.model,
                record.prompt_tokens,
                record.completion_tokens,
                record.start_time,
                record.end_time,
                record.status.value,
                record.cached_tokens,
                record.client_request_id,
            )
            if inserted is not None:
                return record, False
            # Locked until the transaction ends: concurrent records of one
            # request supersede one after the other, none lost.
            row = await conn.fetchrow(
                "SELECT * FROM usage_records WHERE request_id = $1 FOR UPDATE", record.request_id
            )
            assert row is not None  # the conflict proves it is there; rows are never deleted
            stored = _usage(row)
            merged = stored.superseded_by(record)
            if merged is None or merged == stored:
                return stored, True
            await conn.execute(
                "UPDATE usage_records SET prompt_tokens = $2, completion_tokens = $3,"
                " cached_tokens = $4, end_time = $5, status = $6, client_request_id = $7"
                " WHERE request_id = $1",
                merged.request_id,
                merged.prompt_tokens,
                merged.completion_tokens,
                merged.cached_tokens,
                merged.end_time,
                merged.status.value,
                merged.client_request_id,
            )
            return merged, True

    async def usage_buckets(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping
    ) -> list[UsageBucket]:
        key = _POSTGRES_BUCKET_KEYS[by]
        rows = await self._pool.fetch(
            f"SELECT {key} AS k, COUNT(*) AS n, SUM(prompt_tokens) AS p,"
            " SUM(completion_tokens) AS c FROM usage_records WHERE tenant_id = $1"
            " AND ($2::timestamptz IS NULL OR end_time >= $2)"
            " AND ($3::timestamptz IS NULL OR end_time < $3) GROUP BY k ORDER BY k",
            tenant_id,
            start,
            end,
        )
        return [UsageBucket(r["k"], int(r["n"]), int(r["p"]), int(r["c"])) for r in rows]

    async def usage_summary(
        self, tenant_id: str, start: datetime | None, end: datetime | None
    ) -> UsageSummary:
        row = await self._pool.fetchrow(
            "SELECT COUNT(*) AS n, COALESCE(SUM(prompt_tokens), 0) AS p,"
            " COALESCE(SUM(completion_tokens), 0) AS c FROM usage_records"
            " WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR end_time >= $2)"
            " AND ($3::timestamptz IS NULL OR end_time < $3)",
            tenant_id,
            start,
            end,
        )
        return UsageSummary(tenant_id, int(row["n"]), int(row["p"]), int(row["c"]))

    async def save_restriction(self, restriction: Restriction, audit: AuditEntry) -> None:
        r = restriction
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO restrictions"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                " ON CONFLICT (restriction_id) DO UPDATE SET"
                " lifted_at = EXCLUDED.lifted_at, lifted_by = EXCLUDED.lifted_by,"
                " expires_at = EXCLUDED.expires_at",
                r.restriction_id,
                r.tenant_id,
                r.key_id,
                r.action.value,
                r.requests_per_minute,
                r.created_at,
                r.expires_at,
                r.reason,
                r.actor,
                r.alert_id,
                r.lifted_at,
                r.lifted_by,
            )
            await conn.execute(
                "INSERT INTO audit_log VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                audit.audit_id,
                audit.at,
                audit.actor,
                audit.action,
                audit.restriction_id,
                audit.tenant_id,
                audit.key_id,
                audit.detail,
            )

    async def list_restrictions(self, tenant_id: str | None) -> list[Restriction]:
        rows = await self._pool.fetch(
            "SELECT * FROM restrictions WHERE ($1::text IS NULL OR tenant_id = $1)"
            " ORDER BY created_at DESC",
            tenant_id,
        )
        return [
            Restriction(
                restriction_id=r["restriction_id"],
                tenant_id=r["tenant_id"],
                key_id=r["key_id"],
                action=RestrictionAction(r["action"]),
                requests_per_minute=r["requests_per_minute"],
                created_at=r["created_at"],
                expires_at=r["expires_at"],
                reason=r["reason"],
                actor=r["actor"],
                alert_id=r["alert_id"],
                lifted_at=r["lifted_at"],
                lifted_by=r["lifted_by"],
            )
            for r in rows
        ]

    async def list_audit(self, tenant_id: str | None, limit: int) -> list[AuditEntry]:
        rows = await self._pool.fetch(
            "SELECT * FROM audit_log WHERE ($1::text IS NULL OR tenant_id = $1)"
            " ORDER BY at DESC LIMIT $2",
            tenant_id,
            limit,
        )
        return [
            AuditEntry(
                audit_id=r["audit_id"],
                at=r["at"],
                actor=r["actor"],
                action=r["action"],
                restriction_id=r["restriction_id"],
                tenant_id=r["tenant_id"],
                key_id=r["key_id"],
                detail=r["detail"],
            )
            for r in rows
        ]

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> IdempotencyClaim:
        # The unique key decides between concurrent claims, whichever auth
        # process they reach. One statement inserts or reads the winner; it
        # finds neither when the winner committed after the statement's
        # snapshot was taken (or was freed meanwhile): then it runs again.
        while True:
            row = await self._pool.fetchrow(
                "WITH ins AS (INSERT INTO idempotency_keys VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (tenant_id, key) DO NOTHING RETURNING *)"
                " SELECT * FROM ins UNION ALL SELECT * FROM idempotency_keys"
                " WHERE tenant_id = $1 AND key = $2 LIMIT 1",
                claim.tenant_id,
                claim.key,
                claim.request_id,
                claim.created_at,
            )
            if row is not None:
                return IdempotencyClaim(
                    row["tenant_id"], row["key"], row["request_id"], row["created_at"]
                )

    async def free_idempotency_key(self, tenant_id: str, key: str, request_id: str) -> None:
        await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND request_id = $3",
            tenant_id,
            key,
            request_id,
        )

    async def prune_idempotency_keys(self, before: datetime) -> int:
        status = await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE created_at < $1", before
        )
        return int(status.split()[-1])


@asynccontextmanager
async def open_postgres_store(
    dsn: str, *, schema: str | None = None
) -> AsyncIterator[PostgresAuthStore]:
    """Opens a pool (in `schema` when given, which must exist) and creates the tables."""
    settings = {"search_path": schema} if schema else None
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, server_settings=settings)
    try:
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
        yield PostgresAuthStore(pool)
    finally:
        await pool.close()
