"""One write transaction at a time on the SQLite store's connection: a failed
ledger batch's rollback undoes no other write, and no commit lands another
method's half-done change. Real SQLite; the ledger's failures come from a
trigger that refuses chosen rows, as the database itself would."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.auth.models import (
    AuditEntry,
    Priority,
    RequestStatus,
    Restriction,
    RestrictionAction,
    Tenant,
    UsageRecord,
)
from services.auth.sqlite_store import open_sqlite_store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
REFUSED = "refused-model"
# Enough rounds of concurrent writes that, without one transaction at a time,
# some rollback or commit lands between another method's statements.
ROUNDS = 20
WORKERS = 4


async def refusing_store(path: Path) -> None:
    """Creates the store's file, then makes it refuse usage for REFUSED."""
    async with open_sqlite_store(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON usage_records"
            f" WHEN NEW.model = '{REFUSED}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )


def usage(request_id: str, model: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant_id="t",
        key_id="k",
        model=model,
        prompt_tokens=5,
        completion_tokens=10,
        start_time=T0,
        end_time=T0 + timedelta(seconds=1),
        status=RequestStatus.COMPLETED,
    )


def restriction(restriction_id: str, audit_id: str) -> tuple[Restriction, AuditEntry]:
    made = Restriction(
        restriction_id=restriction_id,
        tenant_id="t",
        key_id="",
        action=RestrictionAction.SUSPEND,
        requests_per_minute=0,
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        reason="test",
        actor="admin",
    )
    audit = AuditEntry(audit_id, T0, "admin", "restrict", restriction_id, "t", "", "")
    return made, audit


async def test_a_failed_ledger_batch_undoes_no_write_that_returned(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    await refusing_store(path)
    created: list[str] = []
    recorded: list[str] = []

    async with open_sqlite_store(path) as store:

        async def create(worker: int) -> None:
            for n in range(ROUNDS):
                name = f"t{worker}-{n}"
                await store.create_tenant(Tenant(name, name, Priority.DEFAULT, T0))
                created.append(name)

        async def record(worker: int) -> list[BaseException]:
            errors: list[BaseException] = []
            for n in range(ROUNDS):
                request_id = f"u{worker}-{n}"
                try:
                    await store.record_usage(usage(request_id, REFUSED if n % 2 else "tiny"))
                except sqlite3.IntegrityError as err:
                    errors.append(err)
                else:
                    recorded.append(request_id)
            return errors

        _, failures = await asyncio.gather(
            asyncio.gather(*(create(w) for w in range(WORKERS))),
            asyncio.gather(*(record(w) for w in range(WORKERS))),
        )
        # Only the refused usage records failed.
        assert sum(len(f) for f in failures) == WORKERS * ROUNDS // 2
        assert len(created) == WORKERS * ROUNDS

    async with open_sqlite_store(path) as reopened:
        assert sorted(t.tenant_id for t in await reopened.list_tenants()) == sorted(created)
        summary = await reopened.usage_summary("t", None, None)
        assert summary.requests == len(recorded) == WORKERS * ROUNDS // 2


async def test_a_multi_statement_write_is_never_partly_committed(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    await refusing_store(path)
    saved: list[str] = []
    async with open_sqlite_store(path) as store:
        await store.save_restriction(*restriction("first", "audit-0"))
        saved.append("first")

        async def save(worker: int) -> int:
            refused = 0
            for n in range(ROUNDS):
                restriction_id = f"r{worker}-{n}"
                # Every other one reuses a taken audit id: its second statement fails.
                audit_id = "audit-0" if n % 2 else f"audit-{worker}-{n}"
                try:
                    await store.save_restriction(*restriction(restriction_id, audit_id))
                except sqlite3.IntegrityError:
                    refused += 1
                else:
                    saved.append(restriction_id)
            return refused

        async def record(worker: int) -> None:
            for n in range(ROUNDS):
                await store.record_usage(usage(f"u{worker}-{n}", "tiny"))

        refused, _ = await asyncio.gather(
            asyncio.gather(*(save(w) for w in range(WORKERS))),
            asyncio.gather(*(record(w) for w in range(WORKERS))),
        )
        assert sum(refused) == WORKERS * ROUNDS // 2

    async with open_sqlite_store(path) as reopened:
        stored = {r.restriction_id for r in await reopened.list_restrictions(None)}
        audited = {a.restriction_id for a in await reopened.list_audit(None, 10_000)}
        assert stored == audited == set(saved)
        assert len(saved) == 1 + WORKERS * ROUNDS // 2
