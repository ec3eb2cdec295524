"""One container model for compose and Kubernetes: each reader turns its
format into these, and deploy.checks.rules checks them with one rule set."""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy.checks.entrypoints import Invocation


@dataclass(frozen=True)
class Probe:
    """A gRPC health check of the container's own server."""

    # As the file names it: "healthcheck", "readinessProbe", "livenessProbe", ...
    kind: str
    port: int
    # The health service asked for ("" is the server as a whole).
    service: str
    # Whether it gates traffic or start order (readiness), or only restarts (liveness).
    readiness: bool


@dataclass(frozen=True)
class DeclaredPort:
    number: int
    # How the file declares it, for messages: "publishes port 8000".
    said: str


@dataclass(frozen=True)
class Grace:
    """What the platform waits after SIGTERM before it kills the container."""

    seconds: float
    # How the file says it, for messages: "stop_grace_period (10s)".
    said: str


@dataclass
class Container:
    # How problems name it: "gateway", "deploy/k8s/auth.yaml: Deployment/auth container auth".
    where: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # What its `python -m` command amounts to; None for other commands.
    invocation: Invocation | None = None
    ports: list[DeclaredPort] = field(default_factory=list)
    # Whether every port it listens on must be declared (Kubernetes' containerPort).
    declares_every_port: bool = False
    probes: list[Probe] = field(default_factory=list)
    # Probe kinds it must have (Kubernetes' readiness and liveness).
    required_probes: tuple[str, ...] = ()
    grace: Grace | None = None

    @property
    def is_service(self) -> bool:
        """Whether it runs a service of the catalog whose settings validate."""
        return self.invocation is not None and self.invocation.settings is not None
