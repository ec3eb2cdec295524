"""`python -m deploy.runtime.http_ready URL`: exit 0 when GET URL answers 200.

The container health check of an HTTP-only service (the console), as
deploy.runtime.healthcheck is for gRPC ones: the standard library only."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from deploy.runtime.spec import CommandSpec

# Positional URL only: no flags, no variables.
SPEC = CommandSpec(module="deploy.runtime.http_ready")
# As deploy.runtime.healthcheck's deadline: well inside compose's 5 s timeout.
TIMEOUT_S = 3.0


def main() -> None:
    url = sys.argv[1]
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            status = answer.status
    except (urllib.error.URLError, OSError) as err:
        print(f"{url}: {err}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if status == 200 else 1)


if __name__ == "__main__":
    main()
