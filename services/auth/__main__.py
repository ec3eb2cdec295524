"""`python -m services.auth`: tenants, keys and the usage ledger."""

from __future__ import annotations

from services.auth.spec import SPEC
from services.common.entrypoint import run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
