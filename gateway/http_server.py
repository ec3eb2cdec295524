"""An ASGI app served by uvicorn inside the caller's event loop, so HTTP
requests share the gateway's channels, caches and background writers."""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import uvicorn
from starlette.types import ASGIApp

from gateway.http_guard import guarded_h11
from services.common.generation_limits import MAX_HTTP_HEAD_BYTES
from services.common.settings import TlsSettings

log = structlog.get_logger(__name__)


@asynccontextmanager
async def serving_http(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    grace_s: float,
    tls: TlsSettings | None = None,
    # GatewaySettings' defaults for http_head_timeout_s and
    # http_max_connections_per_peer (why: see there).
    head_timeout_s: float = 10.0,
    max_connections_per_peer: int = 1024,
) -> AsyncIterator[int]:
    """Serves `app` on host:port (0 picks a free one) until the block ends, and
    yields the bound port. On exit it stops accepting, lets responses in flight
    (streams included) finish for `grace_s`, then cancels what is left.
    With a certificate in `tls` it serves HTTPS, with the same certificate and
    client-certificate rule as the gRPC listener beside it. A request head
    slower than `head_timeout_s` and a peer's connections past
    `max_connections_per_peer` are cut (see `http_guard`)."""
    tls = tls or TlsSettings()
    https: dict[str, object] = {}
    if tls.serves_tls:
        https = {
            "ssl_certfile": str(tls.cert),
            "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.ca) if tls.ca is not None else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE,
        }
    # Bound here rather than by uvicorn: a taken port raises OSError instead
    # of uvicorn's sys.exit, and port 0 tells us what it picked.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    config = uvicorn.Config(
        app,
        lifespan="off",
        # The process's logging is already set up (JSON lines); leave it alone.
        log_config=None,
        access_log=False,
        ws="none",
        # h11, not httptools: httptools takes headers of any size, h11 stops
        # at this many bytes of an unfinished request head (431).
        http=guarded_h11(head_timeout_s=head_timeout_s, max_per_peer=max_connections_per_peer),
        h11_max_incomplete_event_size=MAX_HTTP_HEAD_BYTES,
        # The peer is the socket's, as on the gRPC side: anomaly's per-source
        # detectors must not trust a forwarded-for header any client can write.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
        **https,  # type: ignore[arg-type]
    )
    config.load()
    server = uvicorn.Server(config)
    # `Server.serve` would also take over SIGINT/SIGTERM, which the gateway's
    # entry point owns; these are the steps it runs, without that.
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    bound: int = sock.getsockname()[1]
    log.info("http server started", host=host, port=bound, tls=tls.serves_tls)
    ticking = asyncio.create_task(server.main_loop())
    try:
        yield bound
    finally:
        server.should_exit = True
        await ticking
        await server.shutdown(sockets=[sock])
