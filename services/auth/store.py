"""The storage interface of auth and metering; SQLite is the embedded default,
PostgreSQL the production store behind the same protocol."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from services.auth.adapters import Adapter
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


class TenantExistsError(Exception):
    pass


class AuthStore(Protocol):
    async def create_tenant(self, tenant: Tenant) -> None:
        """Raises TenantExistsError when the name is taken."""
        ...

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def set_plan(
        self, tenant_id: str, plan: Plan, priority: Priority | None
    ) -> Tenant | None: ...

    async def tokens_used_since(self, tenant_id: str, since: datetime) -> int:
        """Prompt plus completion tokens in the ledger since `since`."""
        ...

    async def list_tenants(self) -> list[Tenant]: ...

    async def create_key(self, key: ApiKeyRecord) -> None: ...

    async def get_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]: ...

    async def revoke_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None: ...

    async def record_usage(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        """Appends `record` unless its request id is there; returns the stored
        record and whether it was already there."""
        ...

    async def usage_buckets(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping
    ) -> list[UsageBucket]:
        """Totals per model or per UTC period, in key order."""
        ...

    async def usage_summary(
        self, tenant_id: str, start: datetime | None, end: datetime | None
    ) -> UsageSummary: ...

    async def usage_lines(
        self,
        tenant_id: str,
        start: datetime | None,
        end: datetime | None,
        by: Grouping | None,
        *,
        key_id: str = "",
    ) -> list[UsageLine]:
        """Sums per bucket (key "" when `by` is None), model and the price
        version in force at each record's end_time (the newest of the model's
        name effective at or before it; None when there is none); of one API
        key's records when `key_id` is set."""
        ...

    async def set_budget(self, budget: Budget) -> None:
        """Creates or replaces the budget of (tenant_id, key_id); an empty one deletes it."""
        ...

    async def list_budgets(self, tenant_id: str | None, key_id: str | None = None) -> list[Budget]:
        """Budgets by tenant then key (of one tenant when given; with `key_id`,
        the tenant's own and that key's only)."""
        ...

    async def usage_records(
        self,
        tenant_id: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[UsageRecord]:
        """Up to `limit` records ending in [start, end), in (end_time,
        request_id) order, from just after `after` when given."""
        ...

    async def add_price(self, price: Price) -> bool:
        """Appends a price version; False when its name has one at that effective time."""
        ...

    async def list_prices(self) -> list[Price]:
        """Every price version, by billed name then effective time."""
        ...

    async def save_restriction(self, restriction: Restriction, audit: AuditEntry) -> None:
        """Creates or updates the restriction and appends its audit entry, atomically."""
        ...

    async def list_restrictions(self, tenant_id: str | None) -> list[Restriction]:
        """All restrictions (of one tenant when given), newest first."""
        ...

    async def list_audit(self, tenant_id: str | None, limit: int) -> list[AuditEntry]:
        """Audit entries (of one tenant when given), newest first."""
        ...

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> IdempotencyClaim:
        """Stores `claim` unless its (tenant_id, key) is held, atomically across
        concurrent callers; returns the claim that holds the key (`claim`
        itself, or the earlier one)."""
        ...

    async def free_idempotency_key(self, tenant_id: str, key: str, request_id: str) -> None:
        """Forgets the key if `request_id` holds it."""
        ...

    async def prune_idempotency_keys(self, before: datetime) -> int:
        """Forgets claims made before `before`; returns how many."""
        ...

    async def create_adapter(self, adapter: Adapter, weights: bytes, max_per_tenant: int) -> None:
        """Stores the adapter and its weights, atomically checking that its
        tenant has none by that name (else AdapterNameTakenError) and fewer
        than `max_per_tenant` (else AdapterLimitError)."""
        ...

    async def list_adapters(self, tenant_id: str) -> list[Adapter]:
        """The tenant's adapters, in name order."""
        ...

    async def find_adapter(self, tenant_id: str, name: str) -> Adapter | None: ...

    async def delete_adapter(self, tenant_id: str, name: str) -> Adapter | None:
        """Deletes the tenant's adapter by that name; the deleted one, if there was one."""
        ...

    async def adapter_with_weights(self, adapter_id: str) -> tuple[Adapter, bytes] | None: ...
