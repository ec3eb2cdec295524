"""Two bounds uvicorn's HTTP/1.1 protocol lacks, for a face any stranger can reach.

- A request's head must arrive within `head_timeout_s` of the connection, or
  of its first byte after the previous response: uvicorn times out only idle
  keep-alive connections, so a client that dribbles a header line now and then
  (slowloris) holds a socket forever, and enough of them exhaust the process's
  file descriptors, which the gRPC face and the channels to auth share.
- One peer address holds at most `max_per_peer` connections at once (0: no
  limit); past it a new connection is closed as soon as it is accepted, before
  it costs a parse.

It also tells the app when a connection is lost: uvicorn does not cancel a
request's task when its client goes away, so a request that waits on
something else than the client (a held refusal, refusal_holds.py) finds the
connection's future under `CONNECTION_GONE` in its scope's state, done once
the connection is gone.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)

# The key of the connection's future in each request's `scope["state"]`.
CONNECTION_GONE = "maas.connection_gone"


def guarded_h11(*, head_timeout_s: float, max_per_peer: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with both bounds, for `uvicorn.Config(http=...)`."""
    per_peer: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        _peer: str | None = None
        _head_timer: asyncio.TimerHandle | None = None
        _gone: asyncio.Future[None] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._gone = self.loop.create_future()
            # uvicorn copies this into every request's scope["state"].
            self.app_state = {**self.app_state, CONNECTION_GONE: self._gone}
            peer = self.client[0] if self.client else ""
            if max_per_peer and per_peer[peer] >= max_per_peer:
                log.warning("http connection refused: too many from one peer", peer=peer)
                transport.abort()
                return
            per_peer[peer] += 1
            self._peer = peer
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                # Part of a head: it has until the timer to finish.
                if self._head_timer is None:
                    self._arm_head_timer()
            else:
                self._disarm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Idle until the next request's first byte: uvicorn's keep-alive
            # timeout covers that; this timer restarts with that byte.
            self._disarm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self._disarm_head_timer()
            if self._gone is not None and not self._gone.done():
                self._gone.set_result(None)
            if self._peer is not None:
                per_peer[self._peer] -= 1
                if per_peer[self._peer] <= 0:
                    del per_peer[self._peer]
                self._peer = None

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("http connection closed: request head too slow", peer=self._peer)
                self.transport.abort()

    return GuardedH11Protocol
