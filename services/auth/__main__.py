"""`python -m services.auth`: tenants, keys and the usage ledger."""

from __future__ import annotations

from services.auth.settings import AuthSettings
from services.common.entrypoint import run_service


async def serve(settings: AuthSettings) -> None:
    from observability import setup
    from services.auth.postgres_store import open_postgres_store
    from services.auth.server import create_server
    from services.auth.sqlite_store import open_sqlite_store

    telemetry = setup("auth", settings.telemetry)
    try:
        opened = (
            open_postgres_store(settings.database_url)
            if settings.database_url
            else open_sqlite_store(settings.database_path)
        )
        async with opened as store:
            server = await create_server(settings, telemetry, store)
            # Stops taking calls and finishes those in flight before the store closes.
            await server.serve_until_signal(settings.grace_period_s)
    finally:
        telemetry.shutdown()


def main() -> None:
    run_service("auth", AuthSettings, serve)


if __name__ == "__main__":
    main()
