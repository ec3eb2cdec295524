"""Auth and metering logic over a real SQLite store, without gRPC."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.auth.core import AuthCore, MeteringCore
from services.auth.keys import hash_secret, parse_key
from services.auth.models import RequestStatus, Scope, UsageRecord
from services.auth.sqlite_store import SqliteAuthStore
from services.auth.store import AuthStore
from services.common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
)
from tests.auth.conftest import PEPPER

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def usage(request_id: str, tenant_id: str, completion: int = 10, at: datetime = T0) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant_id=tenant_id,
        key_id="k",
        model="tiny",
        prompt_tokens=5,
        completion_tokens=completion,
        start_time=at,
        end_time=at + timedelta(seconds=1),
        status=RequestStatus.COMPLETED,
    )


async def test_a_created_key_authenticates_to_its_tenant(auth_core: AuthCore) -> None:
    tenant = await auth_core.create_tenant("acme")
    record, full = await auth_core.create_api_key(tenant.tenant_id, "ci")
    principal = await auth_core.authenticate(full)
    assert principal.tenant_id == tenant.tenant_id
    assert principal.key_id == record.key_id
    assert principal.scopes == (Scope.GENERATE, Scope.USAGE_READ, Scope.ADAPTERS)


@pytest.mark.parametrize("mangle", ["wrong-secret", "malformed", "unknown-id"])
async def test_wrong_malformed_or_unknown_keys_fail(auth_core: AuthCore, mangle: str) -> None:
    tenant = await auth_core.create_tenant("acme")
    _, full = await auth_core.create_api_key(tenant.tenant_id, "ci")
    bad = {
        "wrong-secret": full[:-4] + "AAAA",
        "malformed": "sk-" + full,
        "unknown-id": "maas_" + "a" * 12 + full[17:],
    }[mangle]
    with pytest.raises(UnauthenticatedError):
        await auth_core.authenticate(bad)


async def test_a_revoked_key_stops_authenticating(auth_core: AuthCore) -> None:
    tenant = await auth_core.create_tenant("acme")
    record, full = await auth_core.create_api_key(tenant.tenant_id, "ci")
    revoked = await auth_core.revoke_api_key(record.key_id)
    assert revoked.revoked_at is not None
    with pytest.raises(UnauthenticatedError):
        await auth_core.authenticate(full)


async def test_the_secret_is_never_stored(
    auth_core: AuthCore, store: AuthStore, tmp_path: Path
) -> None:
    tenant = await auth_core.create_tenant("acme")
    record, full = await auth_core.create_api_key(tenant.tenant_id, "ci")
    parsed = parse_key(full)
    assert parsed is not None
    secret = parsed.secret.encode()
    stored = await store.get_key(record.key_id)
    assert stored is not None
    assert secret not in stored.secret_hash
    assert stored.secret_hash == hash_secret(PEPPER, parsed.secret)
    if isinstance(store, SqliteAuthStore):  # and not anywhere in the database files
        assert secret not in b"".join(p.read_bytes() for p in tmp_path.glob("auth.db*"))


async def test_tenant_and_key_validation(auth_core: AuthCore) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await auth_core.create_tenant("  ")
    assert info.value.field == "name"
    await auth_core.create_tenant("acme")
    with pytest.raises(AlreadyExistsError):
        await auth_core.create_tenant("acme")
    with pytest.raises(NotFoundError):
        await auth_core.create_api_key("no-such-tenant", "x")
    tenant = (await auth_core.list_tenants())[0]
    with pytest.raises(InvalidArgumentError) as bad_scope:
        await auth_core.create_api_key(tenant.tenant_id, "x", ["root"])
    assert bad_scope.value.field == "scopes"


async def test_recording_is_idempotent_on_request_id(metering_core: MeteringCore) -> None:
    first, duplicate = await metering_core.record_usage(usage("r1", "t1"))
    assert not duplicate
    again, duplicate = await metering_core.record_usage(usage("r1", "t1"))
    assert duplicate
    assert again == first
    summary = await metering_core.usage_summary("t1", None, None)
    assert (summary.requests, summary.completion_tokens) == (1, 10)


async def test_same_id_other_numbers_is_a_conflict(metering_core: MeteringCore) -> None:
    await metering_core.record_usage(usage("r1", "t1", completion=10))
    with pytest.raises(AlreadyExistsError):
        await metering_core.record_usage(usage("r1", "t1", completion=11))
    summary = await metering_core.usage_summary("t1", None, None)
    assert summary.completion_tokens == 10


async def test_concurrent_replays_bill_once(metering_core: MeteringCore) -> None:
    results = await asyncio.gather(
        *(metering_core.record_usage(usage("r1", "t1")) for _ in range(30))
    )
    assert sum(1 for _, duplicate in results if not duplicate) == 1
    assert (await metering_core.usage_summary("t1", None, None)).requests == 1


async def test_summary_is_per_tenant_and_range(metering_core: MeteringCore) -> None:
    for i in range(3):
        await metering_core.record_usage(usage(f"a{i}", "ta", at=T0 + timedelta(hours=i)))
    await metering_core.record_usage(usage("b0", "tb", completion=99))
    whole = await metering_core.usage_summary("ta", None, None)
    assert (whole.requests, whole.prompt_tokens, whole.completion_tokens) == (3, 15, 30)
    later = await metering_core.usage_summary("ta", T0 + timedelta(minutes=30), None)
    assert later.requests == 2
    window = await metering_core.usage_summary(
        "ta", T0 + timedelta(minutes=30), T0 + timedelta(hours=1, minutes=30)
    )
    assert window.requests == 1
    assert (await metering_core.usage_summary("tb", None, None)).completion_tokens == 99


async def test_record_fields_are_validated(metering_core: MeteringCore) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await metering_core.record_usage(replace(usage("", "t1")))
    assert info.value.field == "record.request_id"
    with pytest.raises(InvalidArgumentError) as info:
        await metering_core.record_usage(usage("r", ""))
    assert info.value.field == "record.tenant_id"


async def test_usage_buckets_by_model_and_period(metering_core: MeteringCore) -> None:
    from services.auth.models import Grouping

    def at(day: int, hour: int, model: str, rid: str, completion: int) -> UsageRecord:
        when = datetime(2026, 11, day, hour, 30, tzinfo=UTC)
        return replace(usage(rid, "t1", completion, at=when), model=model)

    for record in (
        at(1, 10, "small", "a", 1),
        at(1, 10, "large", "b", 2),
        at(1, 11, "small", "c", 4),
        at(3, 9, "small", "d", 8),
    ):
        await metering_core.record_usage(record)
    by_model = await metering_core.usage_buckets("t1", None, None, Grouping.MODEL)
    assert [(b.key, b.requests, b.completion_tokens) for b in by_model] == [
        ("large", 1, 2),
        ("small", 3, 13),
    ]
    by_hour = await metering_core.usage_buckets("t1", None, None, Grouping.HOUR)
    assert [(b.key, b.completion_tokens) for b in by_hour] == [
        ("2026-11-01T10:00:00Z", 3),
        ("2026-11-01T11:00:00Z", 4),
        ("2026-11-03T09:00:00Z", 8),
    ]
    by_day = await metering_core.usage_buckets("t1", None, None, Grouping.DAY)
    assert [(b.key, b.requests) for b in by_day] == [
        ("2026-11-01T00:00:00Z", 3),
        ("2026-11-03T00:00:00Z", 1),
    ]
    by_month = await metering_core.usage_buckets(
        "t1", datetime(2026, 11, 1, 11, tzinfo=UTC), None, Grouping.MONTH
    )
    assert [(b.key, b.requests, b.prompt_tokens) for b in by_month] == [
        ("2026-11-01T00:00:00Z", 2, 10)
    ]


async def test_a_key_stops_working_when_it_expires(store: AuthStore) -> None:
    now = [datetime(2026, 11, 22, 12, 0, tzinfo=UTC)]
    core = AuthCore(store, PEPPER, clock=lambda: now[0])
    tenant = await core.create_tenant("acme")
    with pytest.raises(InvalidArgumentError) as past:
        await core.create_api_key(tenant.tenant_id, "old", expires_at=now[0])
    assert past.value.field == "expire_time"
    record, full = await core.create_api_key(
        tenant.tenant_id, "temp", expires_at=now[0] + timedelta(hours=1)
    )
    assert (await core.authenticate(full)).key_id == record.key_id
    now[0] += timedelta(hours=1)
    with pytest.raises(UnauthenticatedError):
        await core.authenticate(full)


async def test_cached_tokens_are_kept_and_part_of_the_idempotency_check(
    metering_core: MeteringCore,
) -> None:
    record = replace(usage("c1", "t1"), cached_tokens=4)
    stored, _ = await metering_core.record_usage(record)
    again, duplicate = await metering_core.record_usage(record)
    assert duplicate and again.cached_tokens == stored.cached_tokens == 4
    with pytest.raises(AlreadyExistsError):
        await metering_core.record_usage(replace(record, cached_tokens=5))


async def test_the_callers_request_id_is_kept_on_the_record(metering_core: MeteringCore) -> None:
    record = replace(usage("mesh-1", "t1"), client_request_id="order-42:retry.1")
    await metering_core.record_usage(record)
    stored, duplicate = await metering_core.record_usage(record)
    assert duplicate and stored.client_request_id == "order-42:retry.1"


async def test_a_ledger_from_before_the_client_request_id_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    from services.auth.sqlite_store import open_sqlite_store

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE usage_records (request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL,"
            " key_id TEXT NOT NULL, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,"
            " completion_tokens INTEGER NOT NULL, start_time INTEGER NOT NULL,"
            " end_time INTEGER NOT NULL, status TEXT NOT NULL)"
        )
        old.execute(
            "INSERT INTO usage_records VALUES ('old', 't1', 'k', 'tiny', 1, 2, 0, 1, 'completed')"
        )
    async with open_sqlite_store(path) as store:
        core = MeteringCore(store)
        await core.record_usage(replace(usage("new", "t1"), client_request_id="c-1"))
        stored, _ = await core.record_usage(replace(usage("new", "t1"), client_request_id="c-1"))
        assert stored.client_request_id == "c-1"
        assert (await core.usage_summary("t1", None, None)).requests == 2


async def test_progress_records_are_superseded_and_bill_once(metering_core: MeteringCore) -> None:
    progress = [
        replace(usage("s1", "t1", completion=n), status=RequestStatus.RUNNING) for n in (3, 8)
    ]
    for record in progress:
        await metering_core.record_usage(record)
    # The gateway died here: what was streamed so far is billed.
    died = await metering_core.usage_summary("t1", None, None)
    assert (died.requests, died.completion_tokens) == (1, 8)
    final, duplicate = await metering_core.record_usage(usage("s1", "t1", completion=12))
    assert duplicate and final.status == RequestStatus.COMPLETED
    # A stale progress record arriving late changes nothing.
    stale, _ = await metering_core.record_usage(progress[0])
    assert (stale.status, stale.completion_tokens) == (RequestStatus.COMPLETED, 12)
    summary = await metering_core.usage_summary("t1", None, None)
    assert (summary.requests, summary.completion_tokens) == (1, 12)


async def test_progress_and_final_in_one_batch_bill_once(metering_core: MeteringCore) -> None:
    running = replace(usage("s2", "t1", completion=4), status=RequestStatus.RUNNING)
    results = await metering_core.record_usage_batch([running, usage("s2", "t1", completion=9)])
    assert not any(isinstance(r, Exception) for r in results)
    summary = await metering_core.usage_summary("t1", None, None)
    assert (summary.requests, summary.completion_tokens) == (1, 9)


async def test_a_progress_record_of_another_tenant_is_a_conflict(
    metering_core: MeteringCore,
) -> None:
    await metering_core.record_usage(replace(usage("s3", "t1"), status=RequestStatus.RUNNING))
    with pytest.raises(AlreadyExistsError):
        await metering_core.record_usage(usage("s3", "t2", completion=50))
    assert (await metering_core.usage_summary("t2", None, None)).requests == 0
