"""API key -> principal, through auth, cached briefly.

The cache bounds how long a revoked key keeps working (its TTL) and keeps the
auth service off the hot path; concurrent misses for one key share one call."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import grpc

from maas.v1 import auth_pb2, auth_pb2_grpc
from services.common.errors import PermissionDeniedError, UnauthenticatedError

Metadata = Iterable[tuple[str, str | bytes]]


def bearer_token(metadata: Metadata | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise UnauthenticatedError("authorization metadata must be 'Bearer <api key>'")
    raise UnauthenticatedError("missing 'authorization: Bearer <api key>' metadata")


class Authenticator:
    def __init__(
        self,
        stub: auth_pb2_grpc.AuthAsyncStub,
        *,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, auth_pb2.Principal]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[auth_pb2.Principal]] = {}

    async def authenticate(self, metadata: Metadata | None, scope: str) -> auth_pb2.Principal:
        """The caller's principal; UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        api_key = bearer_token(metadata)
        principal = await self._lookup(api_key)
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise PermissionDeniedError(f"this API key lacks the {scope!r} scope")
        return principal

    async def _lookup(self, api_key: str) -> auth_pb2.Principal:
        # Keyed by a digest so the cache never holds the keys themselves.
        digest = hashlib.sha256(api_key.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        fetch = self._inflight.get(digest)
        if fetch is None:
            # A task of its own: a caller that goes away does not cancel it for the others.
            fetch = asyncio.create_task(self._fetch(digest, api_key))
            self._inflight[digest] = fetch
            fetch.add_done_callback(lambda _: self._inflight.pop(digest, None))
        try:
            return await asyncio.shield(fetch)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise UnauthenticatedError(err.details() or "invalid API key") from err
            raise

    async def _fetch(self, digest: bytes, api_key: str) -> auth_pb2.Principal:
        principal = await self._stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=api_key))
        self._cache[digest] = (self._clock() + self._ttl_s, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal
