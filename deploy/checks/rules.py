"""The one rule set for containers of the mesh, compose or Kubernetes alike:
what a service's settings and declared spec say against what the file gives
it (reachable listeners, declared ports, health probes, a grace period
longer than its own drain, the service token everywhere or nowhere)."""

from __future__ import annotations

from collections.abc import Iterable

from deploy.checks.addresses import is_wildcard
from deploy.checks.entrypoints import MISSING_SERVICE_TOKEN, missing_service_token
from deploy.checks.model import Container


def container_problems(container: Container) -> list[str]:
    """(container.where: problem) for one container: its command as its module
    takes it, then, for a service, its settings against the file."""
    invocation = container.invocation
    if invocation is None:
        return []
    problems = list(invocation.problems)
    if invocation.spec is None or invocation.settings is None:
        return [f"{container.where}: {text}" for text in problems]
    spec, settings = invocation.spec, invocation.settings
    if not is_wildcard(settings.host):
        problems.append(
            f"listens on {settings.host}: nothing outside its container reaches it (--host 0.0.0.0)"
        )
    metrics_host = settings.telemetry.prometheus_host
    if not settings.telemetry.prometheus_port:
        problems.append("serves no metrics (set its telemetry.prometheus_port)")
    elif not is_wildcard(metrics_host):
        problems.append(
            f"serves metrics on {metrics_host} only: Prometheus cannot scrape it "
            "(telemetry.prometheus_host 0.0.0.0)"
        )
    listening = settings.listening_ports()
    for port in container.ports:
        if port.number not in listening:
            problems.append(f"{port.said}, where it does not listen")
    if container.declares_every_port:
        declared = {port.number for port in container.ports}
        for number in sorted(listening - declared):
            problems.append(f"listens on {number} but declares no containerPort for it")
    for kind in container.required_probes:
        if not any(probe.kind == kind for probe in container.probes):
            problems.append(f"no gRPC {kind} (grpc: {{port: {settings.port}, service: ...}})")
    for probe in container.probes:
        if probe.port != settings.port:
            problems.append(
                f"{probe.kind} probes port {probe.port}, not its gRPC port {settings.port}"
            )
        if probe.readiness and probe.service not in spec.grpc_services:
            served = ", ".join(spec.grpc_services)
            problems.append(
                f"{probe.kind} asks for {probe.service!r}; {spec.module} serves {served}"
            )
        if not probe.readiness and probe.service:
            problems.append(
                f"{probe.kind} asks for {probe.service!r}, which is NOT_SERVING until ready: "
                "liveness is the empty service name"
            )
    grace = container.grace
    if grace is not None and grace.seconds <= settings.grace_period_s:
        problems.append(
            f"{grace.said} is not longer than its own grace period "
            f"({settings.grace_period_s:g}s): it would be killed mid-drain"
        )
    return [f"{container.where}: {text}" for text in problems]


def mesh_problems(containers: Iterable[Container]) -> list[str]:
    """Problems of the containers together, and of each."""
    containers = list(containers)
    problems = [text for c in containers for text in container_problems(c)]
    invocations = {c.where: c.invocation for c in containers}
    problems += [
        f"{where}: {MISSING_SERVICE_TOKEN}" for where in missing_service_token(invocations)
    ]
    return problems
