"""`python -m services.router`: the router process."""

from __future__ import annotations

from services.common.entrypoint import run_service
from services.router.spec import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
