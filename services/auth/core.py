"""Auth and metering logic, testable without gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.auth import keys
from services.auth.models import (
    DEFAULT_PLAN,
    DEFAULT_SCOPES,
    OPERATOR,
    Admin,
    ApiKeyRecord,
    Grouping,
    Plan,
    Principal,
    Priority,
    Scope,
    Tenant,
    UsageBucket,
    UsageRecord,
    UsageSummary,
)
from services.auth.store import AuthStore, TenantExistsError
from services.common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

Clock = Callable[[], datetime]
MAX_ID_LENGTH = 128
MAX_USAGE_BATCH = 1000


def check_id(field: str, value: str) -> None:
    """Ids are 1-128 printable ASCII characters, no spaces."""
    if not value:
        raise InvalidArgumentError(field, "required")
    if len(value) > MAX_ID_LENGTH or not (value.isascii() and value.isprintable()) or " " in value:
        raise InvalidArgumentError(
            field, f"must be 1 to {MAX_ID_LENGTH} printable ASCII characters without spaces"
        )


def require_operator(admin: Admin, rpc: str) -> None:
    """Mesh-wide administration is the operator's alone."""
    if not admin.is_operator:
        raise PermissionDeniedError(
            f"{rpc} is mesh-wide: it takes the operator token, not a tenant's admin key",
            reason="OPERATOR_ONLY",
        )


def require_tenant(admin: Admin, tenant_id: str) -> None:
    """A tenant's admin key administers its own tenant (an empty id, meaning
    every tenant, is not its own)."""
    if not admin.is_operator and admin.tenant_id != tenant_id:
        raise PermissionDeniedError(
            "a tenant's admin key administers its own tenant only", reason="OTHER_TENANT"
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuthCore:
    def __init__(
        self,
        store: AuthStore,
        pepper: bytes,
        clock: Clock = _utcnow,
        *,
        default_plan: Plan = DEFAULT_PLAN,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._clock = clock
        self._default_plan = default_plan

    async def authenticate(self, api_key: str) -> Principal:
        parsed = keys.parse_key(api_key)
        if parsed is None:
            raise UnauthenticatedError("malformed API key")
        record = await self._store.get_key(parsed.key_id)
        # One message for unknown, wrong and revoked: nothing to learn by probing.
        if (
            record is None
            or not keys.secret_matches(self._pepper, parsed.secret, record.secret_hash)
            or record.revoked_at is not None
            or (record.expires_at is not None and record.expires_at <= self._clock())
        ):
            raise UnauthenticatedError("invalid, revoked or expired API key")
        tenant = await self._store.get_tenant(record.tenant_id)
        if tenant is None:
            raise UnauthenticatedError("invalid, revoked or expired API key")
        return Principal(tenant.tenant_id, record.key_id, record.scopes, tenant.priority)

    async def create_tenant(
        self, name: str, priority: Priority = Priority.DEFAULT, plan: Plan | None = None
    ) -> Tenant:
        """A new tenant on `plan`, or on the mesh's finite default plan when none is given."""
        name = name.strip()
        if not name:
            raise InvalidArgumentError("name", "must not be empty")
        if len(name) > MAX_ID_LENGTH or not name.isprintable():
            raise InvalidArgumentError("name", f"must be 1 to {MAX_ID_LENGTH} printable characters")
        tenant = Tenant(
            uuid.uuid4().hex,
            name,
            priority,
            self._clock(),
            plan if plan is not None else self._default_plan,
        )
        try:
            await self._store.create_tenant(tenant)
        except TenantExistsError as err:
            raise AlreadyExistsError(f"a tenant named {name!r} exists") from err
        return tenant

    async def set_plan(self, tenant_id: str, plan: Plan, priority: Priority | None) -> Tenant:
        tenant = await self._store.set_plan(tenant_id, plan, priority)
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        return await self._store.list_tenants()

    async def create_api_key(
        self,
        tenant_id: str,
        name: str,
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for the tenant and its full string, which is never stored."""
        try:
            parsed_scopes = tuple(Scope(s) for s in scopes) or DEFAULT_SCOPES
        except ValueError as err:
            allowed = ", ".join(s.value for s in Scope)
            raise InvalidArgumentError("scopes", f"each must be one of {allowed}") from err
        if expires_at is not None and expires_at <= self._clock():
            raise InvalidArgumentError("expire_time", "must be in the future")
        if await self._store.get_tenant(tenant_id) is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        full, parsed = keys.new_key()
        record = ApiKeyRecord(
            key_id=parsed.key_id,
            tenant_id=tenant_id,
            name=name,
            scopes=parsed_scopes,
            secret_hash=keys.hash_secret(self._pepper, parsed.secret),
            created_at=self._clock(),
            expires_at=expires_at,
        )
        await self._store.create_key(record)
        return record, full

    async def list_api_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        if await self._store.get_tenant(tenant_id) is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        return await self._store.list_keys(tenant_id)

    async def admin(self, credential: str) -> Admin:
        """The admin an API key stands for: its tenant's, when it has the
        `admin` scope; UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        principal = await self.authenticate(credential)
        if Scope.ADMIN not in principal.scopes:
            raise PermissionDeniedError("this API key lacks the 'admin' scope")
        return Admin(principal.tenant_id, principal.key_id)

    async def revoke_api_key(self, key_id: str, admin: Admin = OPERATOR) -> ApiKeyRecord:
        if not admin.is_operator:
            found = await self._store.get_key(key_id)
            if found is None:
                raise NotFoundError(f"no API key {key_id!r}")
            require_tenant(admin, found.tenant_id)
        record = await self._store.revoke_key(key_id, self._clock())
        if record is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return record


class MeteringCore:
    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def record_usage(self, record: UsageRecord) -> tuple[UsageRecord, bool]:
        """One record per request id: a later record of the request supersedes
        (see `UsageRecord.superseded_by`) and a replay returns the stored one;
        a conflicting one is refused, never a second bill."""
        check_id("record.request_id", record.request_id)
        check_id("record.tenant_id", record.tenant_id)
        if record.end_time < record.start_time:
            raise InvalidArgumentError("record.end_time", "is before start_time")
        if record.cached_tokens > record.prompt_tokens:
            # Cached tokens are billed as a part of the prompt, at their own price.
            raise InvalidArgumentError("record.cached_tokens", "exceeds prompt_tokens")
        stored, duplicate = await self._store.record_usage(record)
        if duplicate and stored.superseded_by(record) is None:
            raise AlreadyExistsError(f"request {record.request_id!r} was recorded with other usage")
        return stored, duplicate

    async def record_usage_batch(
        self, records: Sequence[UsageRecord | MeshError]
    ) -> list[tuple[UsageRecord, bool] | MeshError]:
        """Records each on its own, as `record_usage` would; a refused record
        comes back as its error. Entries that are already errors (the caller
        could not even read them) pass through. Concurrent appends share the
        store's group commit, so a batch costs about one transaction."""
        if len(records) > MAX_USAGE_BATCH:
            raise InvalidArgumentError("records", f"at most {MAX_USAGE_BATCH} per batch")

        async def one(
            index: int, entry: UsageRecord | MeshError
        ) -> tuple[UsageRecord, bool] | MeshError:
            try:
                if isinstance(entry, MeshError):
                    raise entry
                return await self.record_usage(entry)
            except InvalidArgumentError as err:
                field = f"records[{index}].{err.field.removeprefix('record.')}"
                return InvalidArgumentError(field, err.description)
            except MeshError as err:
                return err

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(records))))

    async def usage_summary(
        self, tenant_id: str, start: datetime | None, end: datetime | None
    ) -> UsageSummary:
        if not tenant_id:
            raise InvalidArgumentError("tenant_id", "required")
        return await self._store.usage_summary(tenant_id, start, end)

    async def usage_buckets(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping
    ) -> list[UsageBucket]:
        if not tenant_id:
            raise InvalidArgumentError("tenant_id", "required")
        return await self._store.usage_buckets(tenant_id, start, end, by)
