"""Every service of the mesh, in the order they start (each after the ones it calls)."""

from __future__ import annotations

from typing import Any

from gateway.spec import SPEC as GATEWAY
from services.anomaly.spec import SPEC as ANOMALY
from services.auth.spec import SPEC as AUTH
from services.common.spec import ServiceSpec
from services.inference.spec import SPEC as INFERENCE
from services.router.spec import SPEC as ROUTER

SERVICES: tuple[ServiceSpec[Any], ...] = (AUTH, INFERENCE, ROUTER, ANOMALY, GATEWAY)
BY_NAME: dict[str, ServiceSpec[Any]] = {spec.name: spec for spec in SERVICES}
