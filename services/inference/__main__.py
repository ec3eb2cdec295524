"""`python -m services.inference --model PATH`: one engine, one replica."""

from __future__ import annotations

from services.common.entrypoint import run_service
from services.inference.spec import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
