"""`python -m gateway`: the public gateway process."""

from __future__ import annotations

from gateway.spec import SPEC
from services.common.entrypoint import run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
