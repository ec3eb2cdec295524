"""Every service of the mesh, in the order they start (each after the ones it calls)."""

from __future__ import annotations

from typing import Any

from gateway.spec import SPEC as GATEWAY
from services.anomaly.spec import SPEC as ANOMALY
from services.auth.spec import SPEC as AUTH
from services.common.spec import ServiceSpec
from services.console.spec import SPEC as CONSOLE
from services.inference.spec import SPEC as INFERENCE
from services.router.spec import SPEC as ROUTER

SERVICES: tuple[ServiceSpec[Any], ...] = (AUTH, INFERENCE, ROUTER, ANOMALY, GATEWAY)
BY_NAME: dict[str, ServiceSpec[Any]] = {spec.name: spec for spec in SERVICES}
# Served over HTTP only, started after the mesh by `make run` (deploy/local/stack.py)
# and not by the in-process mesh; deployed beside it, so the deploy checks hold it
# to the same rules, with an HTTP readiness instead of gRPC health.
HTTP_SERVICES: tuple[ServiceSpec[Any], ...] = (CONSOLE,)
DEPLOYED: tuple[ServiceSpec[Any], ...] = (*SERVICES, *HTTP_SERVICES)
