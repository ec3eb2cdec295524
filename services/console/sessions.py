"""Signed-in sessions, held server-side: the browser's cookie carries only a
random session id, so the API key or operator token never reaches the page
or the cookie jar."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from maas.v1 import generation_pb2


class Role(StrEnum):
    # An API key: its own tenant's pages; key management when it has the admin scope.
    TENANT = "tenant"
    # The operator token: the mesh-wide operator pages.
    OPERATOR = "operator"


@dataclass
class Session:
    session_id: str
    role: Role
    # The credential sent as `authorization: Bearer` on the user's calls.
    credential: str = field(repr=False)
    expires_at: float
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    # Tenant sessions: whose key it is, the key's id and scopes.
    tenant_id: str = ""
    key_id: str = ""
    scopes: tuple[str, ...] = ()
    # When the credential was last found good (monotonic seconds).
    checked_at: float = 0.0
    # Playground calls submitted and not yet streamed, by run id.
    runs: dict[str, generation_pb2.GenerateRequest] = field(default_factory=dict)

    @property
    def is_tenant_admin(self) -> bool:
        return self.role is Role.TENANT and "admin" in self.scopes

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf_token)


# A session's credential is asked about again after this: a revoked key or a
# replaced operator token stops opening pages about as soon as it stops
# generating at the gateway (its authentication cache holds 5 s).
RECHECK_S = 5.0
# Playground runs a session may have waiting at once: a few tabs' worth.
MAX_PENDING_RUNS = 8


class Sessions:
    """Live sessions, oldest first; expired ones are dropped when met."""

    def __init__(
        self, *, ttl_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def open(
        self,
        role: Role,
        credential: str,
        *,
        tenant_id: str = "",
        key_id: str = "",
        scopes: tuple[str, ...] = (),
    ) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(32),
            role=role,
            credential=credential,
            expires_at=self._clock() + self._ttl_s,
            checked_at=self._clock(),
            tenant_id=tenant_id,
            key_id=key_id,
            scopes=scopes,
        )
        self._by_id[session.session_id] = session
        while len(self._by_id) > self._max:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._by_id[session_id]
            return None
        return session

    def needs_check(self, session: Session) -> bool:
        """Whether the credential is due to be asked about again (revoked since?)."""
        return self._clock() - session.checked_at >= RECHECK_S

    def checked(self, session: Session) -> None:
        session.checked_at = self._clock()

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def add_run(self, session: Session, request: generation_pb2.GenerateRequest) -> str:
        while len(session.runs) >= MAX_PENDING_RUNS:
            session.runs.pop(next(iter(session.runs)))
        run_id = secrets.token_urlsafe(16)
        session.runs[run_id] = request
        return run_id
