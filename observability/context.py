"""The request context (request id, tenant) of the call being served, in
contextvars, and bound into structlog so every log line carries it."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

import structlog

REQUEST_ID_METADATA_KEY = "x-request-id"
# At the public edge: the caller's own x-request-id, echoed back under this name
# (the mesh mints the request's id; the caller's is only a label).
CLIENT_REQUEST_ID_METADATA_KEY = "x-client-request-id"
# What a caller's x-request-id may be: short, and safe in logs, headers and SQL.
CLIENT_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Trailing metadata of a routed generation: the replica (host:port) that served it.
REPLICA_METADATA_KEY = "x-maas-replica"

_request_id: ContextVar[str | None] = ContextVar("maas_request_id", default=None)
_tenant_id: ContextVar[str | None] = ContextVar("maas_tenant_id", default=None)
_client_request_id: ContextVar[str | None] = ContextVar("maas_client_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


def current_tenant_id() -> str | None:
    return _tenant_id.get()


def current_client_request_id() -> str | None:
    """The caller's own x-request-id at the public edge, when it was a valid label."""
    return _client_request_id.get()


def valid_client_request_id(value: str) -> bool:
    return CLIENT_REQUEST_ID_PATTERN.fullmatch(value) is not None


def enter_edge_call(client_request_id: str | None) -> str:
    """At the mesh's public edge: mints the call's own id and binds it; the
    caller's x-request-id, when a valid label, is bound beside it (never as
    the id, which keys money and capacity). Returns the minted id."""
    clear_request()
    request_id = new_request_id()
    bind_request(request_id)
    if client_request_id and valid_client_request_id(client_request_id):
        _client_request_id.set(client_request_id)
        structlog.contextvars.bind_contextvars(client_request_id=client_request_id)
    return request_id


def edge_echo() -> list[tuple[str, str]]:
    """What the edge tells the caller about the call's ids."""
    echo = []
    if (request_id := current_request_id()) is not None:
        echo.append((REQUEST_ID_METADATA_KEY, request_id))
    if (client := current_client_request_id()) is not None:
        echo.append((CLIENT_REQUEST_ID_METADATA_KEY, client))
    return echo


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
    _client_request_id.set(None)
    structlog.contextvars.clear_contextvars()
