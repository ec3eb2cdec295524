"""AuthStore on SQLite (WAL): the embedded default.

Times are stored as integer microseconds since the epoch (UTC), so ranges
compare as integers. `synchronous=NORMAL` in WAL mode survives a crash of
this process (the failure a service must survive); only an OS crash can lose
the last commits."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

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
"""


def _period(fmt: str) -> str:
    return f"strftime('{fmt}', end_time / 1000000, 'unixepoch')"


_SQLITE_BUCKET_KEYS = {
    Grouping.MODEL: "model",
    Grouping.HOUR: _period("%Y-%m-%dT%H:00:00Z"),
    Grouping.DAY: _period("%Y-%m-%dT00:00:00Z"),
    Grouping.MONTH: _period("%Y-%m-01T00:00:00Z"),
}


def _to_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def _tenant(row: sqlite3.Row) -> Tenant:
    return Tenant(
        row["tenant_id"],
        row["name"],
        Priority(row["priority"]),
        _from_us(row["created_at"]),
        Plan.from_json(row["plan"]),
    )


def _key(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        scopes=tuple(Scope(s) for s in row["scopes"].split(",") if s),
        secret_hash=bytes(row["secret_hash"]),
        created_at=_from_us(row["created_at"]),
        revoked_at=_from_us(row["revoked_at"]) if row["revoked_at"] is not None else None,
        expires_at=_from_us(row["expires_at"]) if row["expires_at"] is not None else None,
    )


def _usage(row: sqlite3.Row) -> UsageRecord:
    return UsageRecord(
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        start_time=_from_us(row["start_time"]),
        end_time=_from_us(row["end_time"]),
        status=RequestStatus(row["status"]),
        cached_tokens=row["cached_tokens"],
        client_request_id=row["client_request_id"],
    )


def _restriction(row: sqlite3.Row) -> Restriction:
    return Restriction(
        restriction_id=row["restriction_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        action=RestrictionAction(row["action"]),
        requests_per_minute=int(row["requests_per_minute"]),
        created_at=_from_us(row["created_at"]),
        expires_at=_from_us(row["expires_at"]),
        reason=row["reason"],
        actor=row["actor"],
        alert_id=row["alert_id"],
        lifted_at=_from_us(row["lifted_at"]) if row["lifted_at"] is not None else None,
        lifted_by=row["lifted_by"],
    )


def _audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        audit_id=row["audit_id"],
        at=_from_us(row["at"]),
        actor=row["actor"],
        action=row["action"],
        restriction_id=row["restriction_id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        detail=row["detail"],
    )


class _LedgerWriter:
    """Group commit for usage records: whatever arrives while one batch is being
    written goes into the next, in one transaction. One caller waits no longer
    than before; many callers share the cost of a commit. A record is
    acknowledged only after its batch is committed."""

    MAX_BATCH = 512

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._pending: list[tuple[UsageRecord, asyncio.Future[tuple[UsageRecord, bool]]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        """Writes what was submitted, then stops."""
        if self._task is not None:
            self._closing = True
            self._wakeup.set()
            await self._task

    async def submit(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        future: asyncio.Future[tuple[UsageRecord, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((record, future))
        self._wakeup.set()
        # Shielded: a caller that goes away does not abort the write; retrying is safe.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self.MAX_BATCH]
                del self._pending[: self.MAX_BATCH]
                try:
                    results = await self._write([record for record, _ in batch])
                except Exception as err:
                    with contextlib.suppress(Exception):
                        await self._db.rollback()
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            if self._closing:
                return

    async def _write(self, records: list[UsageRecord]) -> list[tuple[UsageRecord, bool]]:
        ids = sorted({r.request_id for r in records})
        marks = ",".join("?" * len(ids))
        async with self._db.execute(
            f"SELECT * FROM usage_records WHERE request_id IN ({marks})", ids
        ) as cur:
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
            new_rows.append(_usage_row(record))
            results.append((record, False))
        if new_rows:
            await self._db.executemany(
                "INSERT INTO usage_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new_rows
            )
        if updated:
            # Rows inserted above are updated in place too: one statement per request.
            await self._db.executemany(
                "UPDATE usage_records SET prompt_tokens = ?, completion_tokens = ?,"
                " cached_tokens = ?, end_time = ?, status = ?, client_request_id = ?"
                " WHERE request_id = ?",
                [
                    (r.prompt_tokens, r.completion_tokens, r.cached_tokens, _to_us(r.end_time),
                     r.status.value, r.client_request_id, r.request_id)
                    for r in updated.values()
                ],
            )  # fmt: skip
        await self._db.commit()
        return results


def _usage_row(record: UsageRecord) -> tuple[str | int, ...]:
    return (
        record.request_id,
        record.tenant_id,
        record.key_id,
        record.model,
        record.prompt_tokens,
        record.completion_tokens,
        _to_us(record.start_time),
        _to_us(record.end_time),
        record.status.value,
        record.cached_tokens,
        record.client_request_id,
    )


class SqliteAuthStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._ledger = _LedgerWriter(db)

    async def create_tenant(self, tenant: Tenant) -> None:
        try:
            await self._db.execute(
                "INSERT INTO tenants VALUES (?, ?, ?, ?, ?)",
                (
                    tenant.tenant_id,
                    tenant.name,
                    int(tenant.priority),
                    _to_us(tenant.created_at),
                    tenant.plan.to_json(),
                ),
            )
            await self._db.commit()
        except sqlite3.IntegrityError as err:
            await self._db.rollback()
            raise TenantExistsError(tenant.name) from err

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.execute(
            "SELECT * FROM tenants WHERE tenant_id = ?", (tenant_id,)
        ) as cur:
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def set_plan(
        self, tenant_id: str, plan: Plan, priority: Priority | None
    ) -> Tenant | None:
        await self._db.execute(
            "UPDATE tenants SET plan = ?, priority = COALESCE(?, priority) WHERE tenant_id = ?",
            (plan.to_json(), int(priority) if priority is not None else None, tenant_id),
        )
        await self._db.commit()
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
            return [_tenant(r) for r in await cur.fetchall()]

    async def create_key(self, key: ApiKeyRecord) -> None:
        await self._db.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
            (
                key.key_id,
                key.tenant_id,
                key.name,
                ",".join(key.scopes),
                key.secret_hash,
                _to_us(key.created_at),
                _to_us(key.expires_at) if key.expires_at else None,
            ),
        )
        await self._db.commit()

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self._db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return _key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        async with self._db.execute(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at", (tenant_id,)
        ) as cur:
            return [_key(r) for r in await cur.fetchall()]

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None:
        await self._db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (_to_us(at), key_id),
        )
        await self._db.commit()
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
            (tenant_id, _to_us(start) if start else 0, _to_us(end) if end else 2**62),
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
                _to_us(end) if end else 2**62,
            ),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return UsageSummary(tenant_id, int(row[0]), int(row[1]), int(row[2]))

    async def save_restriction(self, restriction: Restriction, audit: AuditEntry) -> None:
        r = restriction
        try:
            await self._db.execute(
                "INSERT OR REPLACE INTO restrictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.restriction_id,
                    r.tenant_id,
                    r.key_id,
                    r.action.value,
                    r.requests_per_minute,
                    _to_us(r.created_at),
                    _to_us(r.expires_at),
                    r.reason,
                    r.actor,
                    r.alert_id,
                    _to_us(r.lifted_at) if r.lifted_at else None,
                    r.lifted_by,
                ),
            )
            await self._db.execute(
                "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    audit.audit_id,
                    _to_us(audit.at),
                    audit.actor,
                    audit.action,
                    audit.restriction_id,
                    audit.tenant_id,
                    audit.key_id,
                    audit.detail,
                ),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    async def list_restrictions(self, tenant_id: str | None) -> list[Restriction]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id else ("", ())
        async with self._db.execute(
            f"SELECT * FROM restrictions {where} ORDER BY created_at DESC", args
        ) as cur:
            return [_restriction(r) for r in await cur.fetchall()]

    async def list_audit(self, tenant_id: str | None, limit: int) -> list[AuditEntry]:
        where, args = ("WHERE tenant_id = ?", (tenant_id,)) if tenant_id else ("", ())
        async with self._db.execute(
            f"SELECT * FROM audit_log {where} ORDER BY at DESC LIMIT ?", (*args, limit)
        ) as cur:
            return [_audit(r) for r in await cur.fetchall()]

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> IdempotencyClaim:
        # The primary key decides between concurrent claims; the read finds
        # the winner, unless it was freed in between: then claim again.
        while True:
            await self._db.execute(
                "INSERT OR IGNORE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                (claim.tenant_id, claim.key, claim.request_id, _to_us(claim.created_at)),
            )
            await self._db.commit()
            async with self._db.execute(
                "SELECT * FROM idempotency_keys WHERE tenant_id = ? AND key = ?",
                (claim.tenant_id, claim.key),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                return IdempotencyClaim(
                    row["tenant_id"], row["key"], row["request_id"], _from_us(row["created_at"])
                )

    async def free_idempotency_key(self, tenant_id: str, key: str, request_id: str) -> None:
        await self._db.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND request_id = ?",
            (tenant_id, key, request_id),
        )
        await self._db.commit()

    async def prune_idempotency_keys(self, before: datetime) -> int:
        cur = await self._db.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (_to_us(before),)
        )
        await self._db.commit()
        return cur.rowcount


@asynccontextmanager
async def open_sqlite_store(path: Path) -> AsyncIterator[SqliteAuthStore]:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    try:
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
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
