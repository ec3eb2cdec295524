"""`python -m services.auth`: tenants, keys and the usage ledger."""

from __future__ import annotations

import asyncio

from observability.logging import configure_logging
from services.auth.settings import AuthSettings


async def serve(settings: AuthSettings) -> None:
    from observability import setup
    from services.auth.server import create_server
    from services.auth.sqlite_store import open_sqlite_store
    from services.common.serving import wait_for_shutdown_signal

    telemetry = setup("auth", settings.telemetry)
    try:
        async with open_sqlite_store(settings.database_path) as store:
            server = await create_server(settings, telemetry, store)
            try:
                await wait_for_shutdown_signal()
            finally:
                # Stop taking calls and finish those in flight before the store closes.
                await server.stop(settings.grace_period_s)
    finally:
        telemetry.shutdown()


def main() -> None:
    settings = AuthSettings.from_cli()
    configure_logging("auth", settings.telemetry)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
