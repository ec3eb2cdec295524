"""AuthStore on PostgreSQL (asyncpg): the production store, same contract as
the SQLite one. Every write is one statement in its own transaction, so an
acknowledged write is durable when the call returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from services.auth import rows
from services.auth.adapters import Adapter, AdapterLimitError, AdapterNameTakenError
from services.auth.budgets import Budget
from services.auth.models import (
    ApiKeyRecord,
    AuditEntry,
    Grouping,
    IdempotencyClaim,
    Plan,
    Priority,
    Restriction,
    Tenant,
    UsageBucket,
    UsageRecord,
    UsageSummary,
)
from services.auth.pricing import Price, UsageLine
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
CREATE TABLE IF NOT EXISTS prices (
    name            TEXT NOT NULL,
    model           TEXT NOT NULL,
    adapter         TEXT NOT NULL,
    currency        TEXT NOT NULL,
    prompt          BIGINT NOT NULL,
    cached_prompt   BIGINT NOT NULL,
    completion      BIGINT NOT NULL,
    effective_from  TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, effective_from)
);
CREATE TABLE IF NOT EXISTS budgets (
    tenant_id      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    monthly_limit  BIGINT NOT NULL,
    total_limit    BIGINT NOT NULL,
    soft_percent   INTEGER NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE TABLE IF NOT EXISTS adapters (
    adapter_id   TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    base_model   TEXT NOT NULL,
    rank         INTEGER NOT NULL,
    size_bytes   BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    config_json  BYTEA NOT NULL,
    weights      BYTEA NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, name)
);
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS plan TEXT NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS cached_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS client_request_id TEXT NOT NULL DEFAULT '';
"""


def _period(unit: str, fmt: str) -> str:
    return f"""to_char(date_trunc('{unit}', end_time AT TIME ZONE 'UTC'), '{fmt}')"""


_POSTGRES_BUCKET_KEYS: dict[Grouping | None, str] = {
    None: "''::text",
    Grouping.MODEL: "model",
    Grouping.HOUR: _period("hour", 'YYYY-MM-DD"T"HH24":00:00Z"'),
    Grouping.DAY: _period("day", 'YYYY-MM-DD"T00:00:00Z"'),
    Grouping.MONTH: _period("month", 'YYYY-MM-DD"T00:00:00Z"'),
}


def _as_stored(at: datetime) -> datetime:
    """TIMESTAMPTZ columns take and give datetimes as they are."""
    return at


def _insert(table: str, row: Mapping[str, object], tail: str = "") -> tuple[str, list[object]]:
    """INSERT INTO `table` with `row`'s columns as $1, $2, ... in its order; and the values."""
    marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks}){tail}", list(row.values())


class PostgresAuthStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def create_tenant(self, tenant: Tenant) -> None:
        try:
            sql, args = _insert("tenants", rows.tenant_row(tenant, _as_stored))
            await self._pool.execute(sql, *args)
        except asyncpg.UniqueViolationError as err:
            raise TenantExistsError(tenant.name) from err

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._pool.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)
        return rows.tenant_from(row, _as_stored) if row else None

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
        return rows.tenant_from(row, _as_stored) if row else None

    async def tokens_used_since(self, tenant_id: str, since: datetime) -> int:
        used = await self._pool.fetchval(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage_records"
            " WHERE tenant_id = $1 AND end_time >= $2",
            tenant_id,
            since,
        )
        return int(used)

    async def list_tenants(self) -> list[Tenant]:
        found = await self._pool.fetch("SELECT * FROM tenants ORDER BY created_at, name")
        return [rows.tenant_from(r, _as_stored) for r in found]

    async def create_key(self, key: ApiKeyRecord) -> None:
        sql, args = _insert(
            "api_keys", rows.key_row(key, _as_stored, scopes=[s.value for s in key.scopes])
        )
        await self._pool.execute(sql, *args)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        return rows.key_from(row, _as_stored, row["scopes"]) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        found = await self._pool.fetch(
            "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at", tenant_id
        )
        return [rows.key_from(r, _as_stored, r["scopes"]) for r in found]

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE key_id = $1"
            " RETURNING *",
            key_id,
            at,
        )
        return rows.key_from(row, _as_stored, row["scopes"]) if row else None

    async def record_usage(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            sql, args = _insert(
                "usage_records",
                rows.usage_row(record, _as_stored),
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            )
            inserted = await conn.fetchrow(sql, *args)
            if inserted is not None:
                return record, False
            # Locked until the transaction ends: concurrent records of one
            # request supersede one after the other, none lost.
            row = await conn.fetchrow(
                "SELECT * FROM usage_records WHERE request_id = $1 FOR UPDATE", record.request_id
            )
            assert row is not None  # the conflict proves it is there; rows are never deleted
            stored = rows.usage_from(row, _as_stored)
            merged = stored.superseded_by(record)
            if merged is None or merged == stored:
                return stored, True
            changed = rows.usage_row(merged, _as_stored)
            columns = rows.SUPERSEDED_USAGE_COLUMNS
            assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
            await conn.execute(
                f"UPDATE usage_records SET {assignments} WHERE request_id = $1",
                merged.request_id,
                *(changed[c] for c in columns),
            )
            return merged, True

    async def usage_buckets(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping
    ) -> list[UsageBucket]:
        key = _POSTGRES_BUCKET_KEYS[by]
        found = await self._pool.fetch(
            f"SELECT {key} AS k, COUNT(*) AS n, SUM(prompt_tokens) AS p,"
            " SUM(completion_tokens) AS c FROM usage_records WHERE tenant_id = $1"
            " AND ($2::timestamptz IS NULL OR end_time >= $2)"
            " AND ($3::timestamptz IS NULL OR end_time < $3) GROUP BY k ORDER BY k",
            tenant_id,
            start,
            end,
        )
        return [UsageBucket(r["k"], int(r["n"]), int(r["p"]), int(r["c"])) for r in found]

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

    async def usage_lines(
        self,
        tenant_id: str,
        start: datetime | None,
        end: datetime | None,
        by: Grouping | None,
        *,
        key_id: str = "",
    ) -> list[UsageLine]:
        key = _POSTGRES_BUCKET_KEYS[by]
        found = await self._pool.fetch(
            f"SELECT {key} AS k, u.model AS m, (SELECT MAX(p.effective_from) FROM prices p"
            " WHERE p.name = u.model AND p.effective_from <= u.end_time) AS v,"
            " COUNT(*) AS n, SUM(prompt_tokens) AS p, SUM(cached_tokens) AS ca,"
            " SUM(completion_tokens) AS c FROM usage_records u WHERE tenant_id = $1"
            " AND ($2::timestamptz IS NULL OR end_time >= $2)"
            " AND ($3::timestamptz IS NULL OR end_time < $3)"
            " AND ($4 = '' OR key_id = $4) GROUP BY k, m, v ORDER BY k, m, v",
            tenant_id,
            start,
            end,
            key_id,
        )
        return [
            UsageLine(r["k"], r["m"], r["v"], int(r["n"]), int(r["p"]), int(r["ca"]), int(r["c"]))
            for r in found
        ]

    async def usage_records(
        self,
        tenant_id: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[UsageRecord]:
        found = await self._pool.fetch(
            "SELECT * FROM usage_records WHERE tenant_id = $1 AND end_time >= $2"
            " AND end_time < $3 AND ($4::timestamptz IS NULL OR (end_time, request_id) > ($4, $5))"
            " ORDER BY end_time, request_id LIMIT $6",
            tenant_id,
            start,
            end,
            after[0] if after else None,
            after[1] if after else "",
            limit,
        )
        return [rows.usage_from(r, _as_stored) for r in found]

    async def add_price(self, price: Price) -> bool:
        sql, args = _insert(
            "prices",
            rows.price_row(price, _as_stored),
            " ON CONFLICT (name, effective_from) DO NOTHING RETURNING name",
        )
        return await self._pool.fetchrow(sql, *args) is not None

    async def list_prices(self) -> list[Price]:
        found = await self._pool.fetch("SELECT * FROM prices ORDER BY name, effective_from")
        return [rows.price_from(r, _as_stored) for r in found]

    async def set_budget(self, budget: Budget) -> None:
        if budget.empty:
            await self._pool.execute(
                "DELETE FROM budgets WHERE tenant_id = $1 AND key_id = $2",
                budget.tenant_id,
                budget.key_id,
            )
            return
        sql, args = _insert(
            "budgets",
            rows.budget_row(budget, _as_stored),
            " ON CONFLICT (tenant_id, key_id) DO UPDATE SET monthly_limit ="
            " EXCLUDED.monthly_limit, total_limit = EXCLUDED.total_limit,"
            " soft_percent = EXCLUDED.soft_percent, updated_at = EXCLUDED.updated_at",
        )
        await self._pool.execute(sql, *args)

    async def list_budgets(self, tenant_id: str | None, key_id: str | None = None) -> list[Budget]:
        found = await self._pool.fetch(
            "SELECT * FROM budgets WHERE ($1::text IS NULL OR tenant_id = $1)"
            " AND ($2::text IS NULL OR key_id IN ('', $2)) ORDER BY tenant_id, key_id",
            tenant_id,
            key_id,
        )
        return [rows.budget_from(r, _as_stored) for r in found]

    async def save_restriction(self, restriction: Restriction, audit: AuditEntry) -> None:
        save, save_args = _insert(
            "restrictions",
            rows.restriction_row(restriction, _as_stored),
            " ON CONFLICT (restriction_id) DO UPDATE SET"
            " lifted_at = EXCLUDED.lifted_at, lifted_by = EXCLUDED.lifted_by,"
            " expires_at = EXCLUDED.expires_at",
        )
        log, log_args = _insert("audit_log", rows.audit_row(audit, _as_stored))
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(save, *save_args)
            await conn.execute(log, *log_args)

    async def list_restrictions(self, tenant_id: str | None) -> list[Restriction]:
        found = await self._pool.fetch(
            "SELECT * FROM restrictions WHERE ($1::text IS NULL OR tenant_id = $1)"
            " ORDER BY created_at DESC",
            tenant_id,
        )
        return [rows.restriction_from(r, _as_stored) for r in found]

    async def list_audit(self, tenant_id: str | None, limit: int) -> list[AuditEntry]:
        found = await self._pool.fetch(
            "SELECT * FROM audit_log WHERE ($1::text IS NULL OR tenant_id = $1)"
            " ORDER BY at DESC LIMIT $2",
            tenant_id,
            limit,
        )
        return [rows.audit_from(r, _as_stored) for r in found]

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> IdempotencyClaim:
        # The unique key decides between concurrent claims, whichever auth
        # process they reach. One statement inserts or reads the winner; it
        # finds neither when the winner committed after the statement's
        # snapshot was taken (or was freed meanwhile): then it runs again.
        # claim_row's first two columns, tenant_id and key, are $1 and $2.
        insert, args = _insert(
            "idempotency_keys",
            rows.claim_row(claim, _as_stored),
            " ON CONFLICT (tenant_id, key) DO NOTHING RETURNING *",
        )
        while True:
            row = await self._pool.fetchrow(
                f"WITH ins AS ({insert}) SELECT * FROM ins UNION ALL SELECT * FROM"
                " idempotency_keys WHERE tenant_id = $1 AND key = $2 LIMIT 1",
                *args,
            )
            if row is not None:
                return rows.claim_from(row, _as_stored)

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

    async def create_adapter(self, adapter: Adapter, weights: bytes, max_per_tenant: int) -> None:
        sql, args = _insert("adapters", rows.adapter_row(adapter, weights, _as_stored))
        async with self._pool.acquire() as conn, conn.transaction():
            # One create per tenant at a time, whichever auth process runs it:
            # the count holds until the insert commits.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                ADAPTER_LOCK,
                adapter.tenant_id,
            )
            held = await conn.fetchval(
                "SELECT COUNT(*) FROM adapters WHERE tenant_id = $1", adapter.tenant_id
            )
            if held >= max_per_tenant:
                raise AdapterLimitError(adapter.tenant_id)
            try:
                await conn.execute(sql, *args)
            except asyncpg.UniqueViolationError as err:
                raise AdapterNameTakenError(adapter.name) from err

    async def list_adapters(self, tenant_id: str) -> list[Adapter]:
        found = await self._pool.fetch(
            f"SELECT {rows.ADAPTER_HEAD_COLUMNS} FROM adapters WHERE tenant_id = $1 ORDER BY name",
            tenant_id,
        )
        return [rows.adapter_from(r, _as_stored) for r in found]

    async def find_adapter(self, tenant_id: str, name: str) -> Adapter | None:
        row = await self._pool.fetchrow(
            f"SELECT {rows.ADAPTER_HEAD_COLUMNS} FROM adapters WHERE tenant_id = $1 AND name = $2",
            tenant_id,
            name,
        )
        return rows.adapter_from(row, _as_stored) if row else None

    async def delete_adapter(self, tenant_id: str, name: str) -> Adapter | None:
        row = await self._pool.fetchrow(
            "DELETE FROM adapters WHERE tenant_id = $1 AND name = $2"
            f" RETURNING {rows.ADAPTER_HEAD_COLUMNS}",
            tenant_id,
            name,
        )
        return rows.adapter_from(row, _as_stored) if row else None

    async def adapter_with_weights(self, adapter_id: str) -> tuple[Adapter, bytes] | None:
        row = await self._pool.fetchrow("SELECT * FROM adapters WHERE adapter_id = $1", adapter_id)
        return (rows.adapter_from(row, _as_stored), bytes(row["weights"])) if row else None


# Any fixed number: the advisory lock class of adapter creates, per tenant.
ADAPTER_LOCK = 0x61647074  # "adpt"

# Any fixed number: the advisory lock auth's replicas take to create the schema.
SCHEMA_LOCK = 0x6D616173  # "maas"


@asynccontextmanager
async def open_postgres_store(
    dsn: str, *, schema: str | None = None
) -> AsyncIterator[PostgresAuthStore]:
    """Opens a pool (in `schema` when given, which must exist) and creates the tables."""
    settings = {"search_path": schema} if schema else None
    # Ten connections: auth's concurrent writes (each one short statement) wait
    # little behind ten, and ten per process leave room on a default server (100).
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, server_settings=settings)
    try:
        async with pool.acquire() as conn, conn.transaction():
            # Replicas starting at once: concurrent CREATE TABLE IF NOT EXISTS
            # collide in PostgreSQL's catalog (a unique violation); one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)
        yield PostgresAuthStore(pool)
    finally:
        await pool.close()
