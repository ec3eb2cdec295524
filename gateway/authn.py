"""API key -> principal, through auth, cached briefly.

The cache bounds how long a revoked key keeps working (its TTL) and keeps the
auth service off the hot path; concurrent misses for one key share one call.
A key auth refused is remembered (negatively) for a short window, so a flood
of made-up keys costs auth at most one lookup per key per window and a
replayed bad key costs none. Every call to auth has a deadline: a slow or
absent auth answers the caller UNAVAILABLE (retryable), never INTERNAL."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import grpc

from gateway.ttl_cache import TtlCache
from maas.v1 import auth_pb2, auth_pb2_grpc
from services.common.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError

Metadata = Iterable[tuple[str, str | bytes]]

# What auth's own failures to answer become: the caller may retry.
_AUTH_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def bearer_token(metadata: Metadata | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise UnauthenticatedError("authorization metadata must be 'Bearer <api key>'")
    raise UnauthenticatedError("missing 'authorization: Bearer <api key>' metadata")


def within(deadline_s: float | None, cap_s: float) -> float:
    """A downstream call's timeout: the caller's remaining time, at most `cap_s`."""
    return cap_s if deadline_s is None else min(deadline_s, cap_s)


class Authenticator:
    def __init__(
        self,
        stub: auth_pb2_grpc.AuthAsyncStub,
        *,
        ttl_s: float,
        max_entries: int,
        timeout_s: float,
        negative_ttl_s: float,
        negative_max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self.timeout_s = timeout_s
        self._known: TtlCache[bytes, auth_pb2.Principal] = TtlCache(
            ttl_s=ttl_s, max_entries=max_entries, clock=clock
        )
        # Keys auth refused, with its message: answered here until they expire.
        self._refused: TtlCache[bytes, str] = TtlCache(
            ttl_s=negative_ttl_s, max_entries=negative_max_entries, clock=clock
        )
        self._inflight: dict[bytes, asyncio.Task[auth_pb2.Principal]] = {}
        # Digests of keys auth has accepted (outliving their cache entries):
        # a real key is looked up again even while its caller's address is
        # refused unknown keys.
        self._vouched: OrderedDict[bytes, None] = OrderedDict()
        # A digest an entry, so ten times the cache's entries stays small and a
        # key stays vouched for long after its cache entry is evicted.
        self._vouched_max = max_entries * 10

    async def authenticate(
        self,
        metadata: Metadata | None,
        scope: str | None,
        before_unknown_lookup: Callable[[], Awaitable[None]] | None = None,
    ) -> auth_pb2.Principal:
        """The caller's principal, holding `scope` (any key when None);
        UNAUTHENTICATED or PERMISSION_DENIED otherwise, UNAVAILABLE when
        auth does not answer in time.
        `before_unknown_lookup` is awaited (and may raise) before a key this
        gateway has never seen accepted is answered: before auth is asked
        about it, and before a refusal of it cached here is repeated."""
        api_key = bearer_token(metadata)
        principal = await self._lookup(api_key, before_unknown_lookup)
        if scope is not None and scope not in principal.scopes and "admin" not in principal.scopes:
            raise PermissionDeniedError(f"this API key lacks the {scope!r} scope")
        return principal

    async def _lookup(
        self, api_key: str, before_unknown_lookup: Callable[[], Awaitable[None]] | None
    ) -> auth_pb2.Principal:
        # Keyed by a digest so the caches never hold the keys themselves.
        digest = hashlib.sha256(api_key.encode()).digest()
        known = self._known.get(digest)
        if known is not None:
            return known.value
        if before_unknown_lookup is not None and digest not in self._vouched:
            # A bad key replayed from the cache below is as much a refusal.
            await before_unknown_lookup()
        refused = self._refused.get(digest)
        if refused is not None:
            raise UnauthenticatedError(refused.value)
        fetch = self._inflight.get(digest)
        if fetch is None:
            # A task of its own: a caller that goes away does not cancel it for the others.
            fetch = asyncio.create_task(self._fetch(digest, api_key))
            self._inflight[digest] = fetch
            fetch.add_done_callback(lambda _: self._inflight.pop(digest, None))
        return await asyncio.shield(fetch)

    async def _fetch(self, digest: bytes, api_key: str) -> auth_pb2.Principal:
        try:
            principal = await self._stub.Authenticate(
                auth_pb2.AuthenticateRequest(api_key=api_key), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                refusal = err.details() or "invalid API key"
                self._refused.put(digest, refusal)
                raise UnauthenticatedError(refusal) from err
            if err.code() in _AUTH_DOWN:
                raise UnavailableError(
                    "the auth service did not answer in time; retry", reason="AUTH_UNAVAILABLE"
                ) from err
            raise
        self._known.put(digest, principal)
        self._vouched[digest] = None
        self._vouched.move_to_end(digest)
        while len(self._vouched) > self._vouched_max:
            self._vouched.popitem(last=False)
        return principal
