"""The request context (request id, tenant) of the call being served, in
contextvars, and bound into structlog so every log line carries it."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

import structlog

REQUEST_ID_METADATA_KEY = "x-request-id"
# Trailing metadata of a routed generation: the replica (host:port) that served it.
REPLICA_METADATA_KEY = "x-maas-replica"

_request_id: ContextVar[str | None] = ContextVar("maas_request_id", default=None)
_tenant_id: ContextVar[str | None] = ContextVar("maas_tenant_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


def current_tenant_id() -> str | None:
    return _tenant_id.get()


def bind_request(request_id: str, tenant_id: str | None = None) -> None:
    """Makes `request_id` (and the tenant) the current request's, for the rest
    of this task: later log lines and outgoing calls carry it."""
    _request_id.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if tenant_id is not None:
        _tenant_id.set(tenant_id)
        structlog.contextvars.bind_contextvars(tenant_id=tenant_id)


def clear_request() -> None:
    """Forgets the current request and everything bound into structlog.

    Plain sets rather than token resets: a streaming handler's cleanup may run
    in another task's context (asyncio's generator finalizer), where a token
    from this one cannot be reset."""
    _request_id.set(None)
    _tenant_id.set(None)
    structlog.contextvars.clear_contextvars()
