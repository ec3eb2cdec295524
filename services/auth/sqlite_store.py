"""AuthStore on SQLite (WAL): the embedded default.

Times are stored as integer microseconds since the epoch (UTC), so ranges
compare as integers. Opened as `connect_wal` opens every SQLite file of the
mesh: a commit survives a crash of this process. Every write, the ledger's
batches included, is one transaction of `Transactions`: they share one
connection, and so one transaction at a time."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

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
from services.auth.rows import Row
from services.auth.store import TenantExistsError
from services.common.sqlite_writer import GroupCommitWriter, Transactions, connect_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    priority    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    plan        TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    expires_at  INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id);
CREATE TABLE IF NOT EXISTS usage_records (
    request_id        TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    start_time        INTEGER NOT NULL,
    end_time          INTEGER NOT NULL,
    status            TEXT NOT NULL,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    client_request_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage_records(tenant_id, end_time);
CREATE TABLE IF NOT EXISTS restrictions (
    restriction_id      TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    action              TEXT NOT NULL,
    requests_per_minute INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    reason              TEXT NOT NULL,
    actor               TEXT NOT NULL,
    alert_id            TEXT NOT NULL,
    lifted_at           INTEGER,
    lifted_by           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS restrictions_by_tenant ON restrictions(tenant_id);
CREATE TABLE IF NOT EXISTS audit_log (
    audit_id       TEXT PRIMARY KEY,
    at             INTEGER NOT NULL,
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
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys(created_at);
CREATE TABLE IF NOT EXISTS prices (
    name            TEXT NOT NULL,
    model           TEXT NOT NULL,
    adapter         TEXT NOT NULL,
    currency        TEXT NOT NULL,
    prompt          INTEGER NOT NULL,
    cached_prompt   INTEGER NOT NULL,
    completion      INTEGER NOT NULL,
    effective_from  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (name, effective_from)
);
CREATE TABLE IF NOT EXISTS budgets (
    tenant_id      TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    monthly_limit  INTEGER NOT NULL,
    total_limit    INTEGER NOT NULL,
    soft_percent   INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE TABLE IF NOT EXISTS adapters (
    adapter_id   TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    base_model   TEXT NOT NULL,
    rank         INTEGER NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    config_json  BLOB NOT NULL,
    weights      BLOB NOT NULL,
    create_time  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
"""


def _period(fmt: str) -> str:
    return f"strftime('{fmt}', end_time / 1000000, 'unixepoch')"


_SQLITE_BUCKET_KEYS: dict[Grouping | None, str] = {
    None: "''",
    Grouping.MODEL: "model",
    Grouping.HOUR: _period("%Y-%m-%dT%H:00:00Z"),
    Grouping.DAY: _period("%Y-%m-%dT00:00:00Z"),
    Grouping.MONTH: _period("%Y-%m-01T00:00:00Z"),
}


def _to_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


# An end past every stored time (2**62 microseconds is some 146,000 years).
_NEVER_US = 2**62


def _insert(verb: str, table: str, row: Mapping[str, object]) -> str:
    """`verb` INTO `table` with `row`'s columns, each bound by name."""
    return f"{verb} INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"


def _scopes(row: Row) -> list[str]:
    return [s for s in row["scopes"].split(",") if s]


def _usage(row: Row) -> UsageRecord:
    return rows.usage_from(row, _from_us)


async def _write_usage(
    db: aiosqlite.Connection, records: Sequence[UsageRecord]
) -> list[tuple[UsageRecord, bool]]:
    """Appends each record unless its request is there (then the stored one,
    superseded where the record says so); the ledger's group-commit batch."""
    ids = sorted({r.request_id for r in records})
    marks = ",".join("?" * len(ids))
    async with db.execute(f"SELECT * FROM usage_records WHERE request_id IN ({marks})", ids) as cur:
        stored = {row["request_id"]: _usage(row) for row in await cur.fetchall()}
    results: list[tuple[UsageRecord, bool]] = []
    new_rows = []
    updated: dict[str, UsageRecord] = {}
    for record in records:
        first = stored.get(record.request_id)
        if first is not None:
            merged = first.superseded_by(record)
            if merged is not None and merged != first:
                stored[record.request_id] = updated[record.request_id] = merged
                first = merged
            results.append((first, True))
            continue
        stored[record.request_id] = record
        new_rows.append(rows.usage_row(record, _to_us))
        results.append((record, False))
    if new_rows:
        await db.executemany(_insert("INSERT", "usage_records", new_rows[0]), new_rows)
    if updated:
        # Rows inserted above are updated in place too: one statement per request.
        assignments = ", ".join(f"{c} = :{c}" for c in rows.SUPERSEDED_USAGE_COLUMNS)
        await db.executemany(
            f"UPDATE usage_records SET {assignments} WHERE request_id = :request_id",
            [rows.usage_row(r, _to_us) for r in updated.values()],
        )
    return results


class SqliteAuthStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._transactions = Transactions(db)
        # Group commit for usage records: many callers share the cost of a commit.
        self._ledger = GroupCommitWriter(db, _write_usage, transactions=self._transactions)

    async def create_tenant(self, tenant: Tenant) -> None:
        row = rows.tenant_row(tenant, _to_us)
        try:
            async with self._transactions.begin() as db:
                await db.execute(_insert("INSERT", "tenants", row), row)
        except sqlite3.IntegrityError as err:
            raise TenantExistsError(tenant.name) from err

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.execute(
            "SELECT * FROM tenants WHERE tenant_id = ?", (tenant_id,)
        ) as cur:
            row = await cur.fetchone()
        return rows.tenant_from(row, _from_us) if row else None

    async def set_plan(
        self, tenant_id: str, plan: Plan, priority: Priority | None
    ) -> Tenant | None:
        async with self._transactions.begin() as db:
            await db.execute(
                "UPDATE tenants SET plan = ?, priority = COALESCE(?, priority) WHERE tenant_id = ?",
                (plan.to_json(), int(priority) if priority is not None else None, tenant_id),
            )
            return await self.get_tenant(tenant_id)

    async def tokens_used_since(self, tenant_id: str, since: datetime) -> int:
        async with self._db.execute(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage_records"
            " WHERE tenant_id = ? AND end_time >= ?",
            (tenant_id, _to_us(since)),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def list_tenants(self) -> list[Tenant]:
        async with self._db.execute("SELECT * FROM tenants ORDER BY created_at, name") as cur:
            return [rows.tenant_from(r, _from_us) for r in await cur.fetchall()]

    async def create_key(self, key: ApiKeyRecord) -> None:
        row = rows.key_row(key, _to_us, scopes=",".join(key.scopes))
        async with self._transactions.begin() as db:
            await db.execute(_insert("INSERT", "api_keys", row), row)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self._db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return rows.key_from(row, _from_us, _scopes(row)) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        async with self._db.execute(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at", (tenant_id,)
        ) as cur:
            return [rows.key_from(r, _from_us, _scopes(r)) for r in await cur.fetchall()]

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None:
        async with self._transactions.begin() as db:
            await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_to_us(at), key_id),
            )
            return await self.get_key(key_id)

    async def record_usage(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        return await self._ledger.submit(record)

    async def usage_buckets(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping
    ) -> list[UsageBucket]:
        key = _SQLITE_BUCKET_KEYS[by]
        async with self._db.execute(
            f"SELECT {key} AS k, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
            " FROM usage_records WHERE tenant_id = ? AND end_time >= ? AND end_time < ?"
            " GROUP BY k ORDER BY k",
            (tenant_id, _to_us(start) if start else 0, _to_us(end) if end else _NEVER_US),
        ) as cur:
            rows = await cur.fetchall()
        return [UsageBucket(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def usage_summary(
        self, tenant_id: str, start: datetime | None, end: datetime | None
    ) -> UsageSummary:
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
            " FROM usage_records WHERE tenant_id = ? AND end_time >= ? AND end_time < ?",
            (
                tenant_id,
                _to_us(start) if start else 0,
                _to_us(end) if end else _NEVER_US,
            ),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return UsageSummary(tenant_id, int(row[0]), int(row[1]), int(row[2]))

    async def usage_lines(
        self,
        tenant_id: str,
        start: datetime | None,
        end: datetime | None,
        by: Grouping | None,
        *,
        key_id: str = "",
    ) -> list[UsageLine]:
        key = _SQLITE_BUCKET_KEYS[by]
        async with self._db.execute(
            f"SELECT {key} AS k, u.model AS m, (SELECT MAX(p.effective_from) FROM prices p"
            " WHERE p.name = u.model AND p.effective_from <= u.end_time) AS v,"
            " COUNT(*), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens)"
            " FROM usage_records u WHERE tenant_id = ? AND end_time >= ? AND end_time < ?"
            " AND (? = '' OR key_id = ?) GROUP BY k, m, v ORDER BY k, m, v",
            (
                tenant_id,
                _to_us(start) if start else 0,
                _to_us(end) if end else _NEVER_US,
                key_id,
                key_id,
            ),
        ) as cur:
            found = await cur.fetchall()
        return [
            UsageLine(
                r[0],
                r[1],
                None if r[2] is None else _from_us(r[2]),
                *(int(n) for n in r[3:7]),
            )
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
        after_us, after_id = (_to_us(after[0]), after[1]) if after else (-1, "")
        async with self._db.execute(
            "SELECT * FROM usage_records WHERE tenant_id = ? AND end_time >= ? AND end_time < ?"
            " AND (end_time > ? OR (end_time = ? AND request_id > ?))"
            " ORDER BY end_time, request_id LIMIT ?",
            (tenant_id, _to_us(start), _to_us(end), after_us, after_us, after_id, limit),
        ) as cur:
            return [_usage(r) for r in await cur.fetchall()]

    async def add_price(self, price: Price) -> bool:
        row = rows.price_row(price, _to_us)
        async with self._transactions.begin() as db:
            cur = await db.execute(_insert("INSERT OR IGNORE", "prices", row), row)
        return cur.rowcount == 1

    async def list_prices(self) -> list[Price]:
        async with self._db.execute("SELECT * FROM prices ORDER BY name, effective_from") as cur:
            return [rows.price_from(r, _from_us) for r in await cur.fetchall()]

    async def set_budget(self, budget: Budget) -> None:
        async with self._transactions.begin() as db:
            if budget.empty:
                await db.execute(
                    "DELETE FROM budgets WHERE tenant_id = ? AND key_id = ?",
                    (budget.tenant_id, budget.key_id),
                )
                return
            row = rows.budget_row(budget, _to_us)
            await db.execute(_insert("INSERT OR REPLACE", "budgets", row), row)

    async def list_budgets(self, tenant_id: str | None, key_id: str | None = None) -> list[Budget]:
        async with self._db.execute(
            "SELECT * FROM budgets WHERE (? IS NULL OR tenant_id = ?)"
            " AND (? IS NULL OR key_id IN ('', ?)) ORDER BY tenant_id, key_id",
            (tenant_id, tenant_id, key_id, key_id),
        ) as cur:
            return [rows.budget_from(r, _from_us) for r in await cur.fetchall()]

    async def save_restriction(self, restriction: Restriction, audit: AuditEntry) -> None:
        restricted = rows.restriction_row(restriction, _to_us)
        audited = rows.audit_row(audit, _to_us)
        async with self._transactions.begin() as db:
            await db.execute(_insert("INSERT OR REPLACE", "restrictions", restricted), restricted)
            await db.execute(_insert("INSERT", "audit_log", audited), audited)

    async def list_restrictions(self, tenant_id: str | None) -> list[Restriction]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id else ("", ())
        async with self._db.execute(
            f"SELECT * FROM restrictions {where} ORDER BY created_at DESC", args
        ) as cur:
            return [rows.restriction_from(r, _from_us) for r in await cur.fetchall()]

    async def list_audit(self, tenant_id: str | None, limit: int) -> list[AuditEntry]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id else ("", ())
        async with self._db.execute(
            f"SELECT * FROM audit_log {where} ORDER BY at DESC LIMIT ?", (*args, limit)
        ) as cur:
            return [rows.audit_from(r, _from_us) for r in await cur.fetchall()]

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> IdempotencyClaim:
        # The primary key decides between concurrent claims; the read, in the
        # same transaction, finds the winner: nothing can free it in between.
        claimed = rows.claim_row(claim, _to_us)
        async with self._transactions.begin() as db:
            await db.execute(_insert("INSERT OR IGNORE", "idempotency_keys", claimed), claimed)
            async with db.execute(
                "SELECT * FROM idempotency_keys WHERE tenant_id = ? AND key = ?",
                (claim.tenant_id, claim.key),
            ) as cur:
                row = await cur.fetchone()
        assert row is not None
        return rows.claim_from(row, _from_us)

    async def free_idempotency_key(self, tenant_id: str, key: str, request_id: str) -> None:
        async with self._transactions.begin() as db:
            await db.execute(
                "DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND request_id = ?",
                (tenant_id, key, request_id),
            )

    async def prune_idempotency_keys(self, before: datetime) -> int:
        async with self._transactions.begin() as db:
            cur = await db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (_to_us(before),)
            )
        return cur.rowcount

    async def create_adapter(self, adapter: Adapter, weights: bytes, max_per_tenant: int) -> None:
        row = rows.adapter_row(adapter, weights, _to_us)
        # One transaction at a time (Transactions): the count holds until the insert.
        async with self._transactions.begin() as db:
            async with db.execute(
                "SELECT COUNT(*) FROM adapters WHERE tenant_id = ?", (adapter.tenant_id,)
            ) as cur:
                held = await cur.fetchone()
            if held is not None and held[0] >= max_per_tenant:
                raise AdapterLimitError(adapter.tenant_id)
            try:
                await db.execute(_insert("INSERT", "adapters", row), row)
            except sqlite3.IntegrityError as err:
                raise AdapterNameTakenError(adapter.name) from err

    async def list_adapters(self, tenant_id: str) -> list[Adapter]:
        async with self._db.execute(
            f"SELECT {rows.ADAPTER_HEAD_COLUMNS} FROM adapters WHERE tenant_id = ? ORDER BY name",
            (tenant_id,),
        ) as cur:
            return [rows.adapter_from(r, _from_us) for r in await cur.fetchall()]

    async def find_adapter(self, tenant_id: str, name: str) -> Adapter | None:
        async with self._db.execute(
            f"SELECT {rows.ADAPTER_HEAD_COLUMNS} FROM adapters WHERE tenant_id = ? AND name = ?",
            (tenant_id, name),
        ) as cur:
            row = await cur.fetchone()
        return rows.adapter_from(row, _from_us) if row else None

    async def delete_adapter(self, tenant_id: str, name: str) -> Adapter | None:
        async with (
            self._transactions.begin() as db,
            db.execute(
                f"DELETE FROM adapters WHERE tenant_id = ? AND name = ?"
                f" RETURNING {rows.ADAPTER_HEAD_COLUMNS}",
                (tenant_id, name),
            ) as cur,
        ):
            row = await cur.fetchone()
        return rows.adapter_from(row, _from_us) if row else None

    async def adapter_with_weights(self, adapter_id: str) -> tuple[Adapter, bytes] | None:
        async with self._db.execute(
            "SELECT * FROM adapters WHERE adapter_id = ?", (adapter_id,)
        ) as cur:
            row = await cur.fetchone()
        return (rows.adapter_from(row, _from_us), bytes(row["weights"])) if row else None


@asynccontextmanager
async def open_sqlite_store(path: Path) -> AsyncIterator[SqliteAuthStore]:
    db = await connect_wal(path)
    try:
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA foreign_keys=ON")
        # Other processes (the CLI reading usage) may hold the lock briefly.
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        # Databases from before these columns existed get them.
        for table, column, decl in (
            ("tenants", "plan", "TEXT NOT NULL DEFAULT '{}'"),
            ("api_keys", "expires_at", "INTEGER"),
            ("usage_records", "cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
            ("usage_records", "client_request_id", "TEXT NOT NULL DEFAULT ''"),
        ):
            async with db.execute(f"PRAGMA table_info({table})") as cur:
                columns = {row["name"] for row in await cur.fetchall()}
            if column not in columns:
                await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        await db.commit()
        store = SqliteAuthStore(db)
        store._ledger.start()
        try:
            yield store
        finally:
            await store._ledger.aclose()
    finally:
        await db.close()
