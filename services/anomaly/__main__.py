"""`python -m services.anomaly`: the event sink and its streaming detectors."""

from __future__ import annotations

from services.anomaly.spec import SPEC
from services.common.entrypoint import run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
