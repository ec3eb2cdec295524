"""The one rule set for containers of the mesh, compose or Kubernetes alike:
what a service's settings and declared spec say against what the file gives
it (reachable listeners, declared ports, health probes, a grace period
longer than its own drain, the service token everywhere or nowhere, a GPU
where the GPU engine runs), and, through the format's resolver, where every
address it dials and every Prometheus target lands."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from deploy.checks.addresses import Address, addresses_in, is_wildcard
from deploy.checks.entrypoints import MISSING_SERVICE_TOKEN, missing_service_token
from deploy.checks.model import Container, Deployment, Endpoint, Probe
from services.catalog import BY_NAME

INFERENCE = BY_NAME["inference"]


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
            if spec.http_ready:
                want = f"httpGet: {{port: {settings.port}, path: {spec.http_ready}}}"
                problems.append(f"no HTTP {kind} ({want})")
            else:
                problems.append(f"no gRPC {kind} (grpc: {{port: {settings.port}, service: ...}})")
    if spec.http_ready:
        # HTTP only: no gRPC health to ask; ready when its page answers.
        for probe in container.probes:
            if probe.port != settings.port:
                problems.append(
                    f"{probe.kind} probes port {probe.port}, not its HTTP port {settings.port}"
                )
            if probe.http_path is None:
                problems.append(
                    f"{probe.kind} asks gRPC health; {spec.module} serves HTTP only "
                    f"(GET {spec.http_ready})"
                )
            elif probe.readiness and probe.http_path != spec.http_ready:
                problems.append(
                    f"{probe.kind} GETs {probe.http_path}; {spec.module} is ready when "
                    f"{spec.http_ready} answers"
                )
        probes: list[Probe] = []
    else:
        probes = container.probes
    for probe in probes:
        if probe.http_path is not None:
            problems.append(
                f"{probe.kind} is HTTP; {spec.module} answers gRPC health (on port {settings.port})"
            )
            continue
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


def deployment_problems(deployment: Deployment) -> list[str]:
    """Every rule over one deployment: each container, the mesh, addresses, scrapes, GPUs."""
    containers = deployment.containers
    problems = mesh_problems(containers)
    for container in containers:
        problems += address_problems(deployment, container)
        problems += call_problems(deployment, container)
        problems += gpu_problems(deployment, container)
    problems += scrape_problems(deployment)
    return problems


def _reached(
    deployment: Deployment, caller: Container, said: str, address: Address
) -> tuple[list[Endpoint], list[str]]:
    """The endpoints an address lands on that listen there, and problems (with where)."""
    if is_wildcard(address.host):
        return [], []
    where = f"{caller.where}: {said} {address.text}"
    resolved = deployment.resolve(caller, address)
    if isinstance(resolved, str):
        return [], [f"{where}: {resolved}"]
    reached, problems = [], []
    for endpoint in resolved:
        target = endpoint.container
        listening = target.listening
        if listening is None:
            continue
        if not listening:
            problems.append(f"{where}: {target.label} declares no port ({deployment.declare_port})")
        elif endpoint.port not in listening:
            ports = ", ".join(str(p) for p in sorted(listening))
            problems.append(f"{where}: {target.label} listens on {ports}, not {endpoint.port}")
        else:
            reached.append(endpoint)
    return reached, problems


def address_problems(deployment: Deployment, container: Container) -> list[str]:
    """Every `host:port` in what a container is given names something listening there."""
    problems = []
    for key, value in container.values:
        for address in addresses_in(value):
            problems += _reached(deployment, container, key, address)[1]
    return problems


def call_problems(deployment: Deployment, container: Container) -> list[str]:
    """Each address a service dials for a service it calls (its spec's `calls`)
    reaches a container running that service, on its gRPC port. One that
    reaches no listener is told here only if the file does not give it (a
    default): address_problems tells those the file gives."""
    invocation = container.invocation
    if invocation is None or invocation.spec is None or invocation.settings is None:
        return []
    given = {a.text for _, value in container.values for a in addresses_in(value)}
    spec, problems = invocation.spec, []
    for called in spec.calls:
        field = spec.address_field(called)
        for value in _strings(_field(invocation.settings, field)):
            for address in addresses_in(value):
                reached, unreached = _reached(deployment, container, field, address)
                if address.text not in given:
                    problems += unreached
                for endpoint in reached:
                    problems += _call_problem(container, field, address, called, endpoint)
    return problems


def _call_problem(
    caller: Container, field: str, address: Address, called: str, endpoint: Endpoint
) -> list[str]:
    target = endpoint.container
    where = f"{caller.where}: {field} {address.text}"
    invocation = target.invocation
    spec = invocation.spec if invocation else None
    if spec is None or spec.name != called:
        runs = f"runs {spec.module}" if spec else "runs no service of the mesh"
        return [f"{where}: {target.label} {runs}, not {BY_NAME[called].module}"]
    settings = invocation.settings if invocation else None
    if settings is not None and endpoint.port != settings.port:
        return [f"{where}: port {endpoint.port} of {target.label} is not its gRPC port "
                f"({settings.port})"]  # fmt: skip
    return []


def scrape_problems(deployment: Deployment) -> list[str]:
    """Every scrape target is a metrics port, and every service serving metrics is scraped."""
    problems: list[str] = []
    scraped: list[Container] = []
    for scrape in deployment.scrapes:
        reached, found = _reached(deployment, scrape.caller, scrape.said, scrape.address)
        problems += found
        for endpoint in reached:
            target = endpoint.container
            scraped.append(target)
            settings = target.invocation.settings if target.invocation else None
            metrics = settings.telemetry.prometheus_port if settings else None
            if settings is not None and endpoint.port != metrics:
                problems.append(
                    f"{scrape.caller.where}: {scrape.said} {scrape.address.text}: port "
                    f"{endpoint.port} of {target.label} is not its metrics port ({metrics})"
                )
    for container in deployment.containers:
        settings = container.invocation.settings if container.invocation else None
        # One that serves none is told so by container_problems.
        scraped_it = any(c is container for c in scraped)
        if settings is not None and settings.telemetry.prometheus_port and not scraped_it:
            problems.append(f"{container.where}: Prometheus does not scrape it")
    return problems


def gpu_problems(deployment: Deployment, container: Container) -> list[str]:
    """The inference container asks for a GPU if and only if it runs the GPU engine."""
    invocation = container.invocation
    if invocation is None or invocation.spec is not INFERENCE:
        return []
    if container.gpu_engine and not container.gpu:
        return [f"{container.where}: {container.gpu_engine} but {deployment.no_gpu}: "
                "it would land on no GPU"]  # fmt: skip
    if container.gpu and not container.gpu_engine:
        return [f"{container.where}: {container.gpu} but runs the CPU engine: "
                "the GPU would sit idle"]  # fmt: skip
    return []


def _field(settings: Any, path: str) -> Any:
    for part in path.split("."):
        settings = getattr(settings, part, None)
    return settings


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        yield from (str(item) for item in value)
