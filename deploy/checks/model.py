"""One container model for compose and Kubernetes: each reader turns its
format into these, and deploy.checks.rules checks them with one rule set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.checks.addresses import Address
from deploy.checks.entrypoints import Invocation


@dataclass(frozen=True)
class Probe:
    """A health check of the container's own server: gRPC health, or an
    HTTP GET of `http_path` for an HTTP-only service."""

    # As the file names it: "healthcheck", "readinessProbe", "livenessProbe", ...
    kind: str
    port: int
    # The health service asked for ("" is the server as a whole).
    service: str
    # Whether it gates traffic or start order (readiness), or only restarts (liveness).
    readiness: bool
    # The path an HTTP probe GETs; None for gRPC health.
    http_path: str | None = None


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
    # How problems name it: "gateway", "overlays/gpu: Deployment/auth container auth".
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
    # How other problems name it: "auth", "router" (a compose service, a pod's container).
    name: str = ""
    # Ports the file says it listens on beyond `ports` (compose's `expose`).
    exposed: set[int] = field(default_factory=set)
    # (key, value) of every setting it is given (variables, arguments, mounted
    # files): the `host:port` values in them are the addresses it dials.
    values: list[tuple[str, str]] = field(default_factory=list)
    # Why the file gives it the GPU engine, for messages ("is in the gpu profile"); None if not.
    gpu_engine: str | None = None
    # How it asks for a GPU, for messages ("reserves an NVIDIA device"); None if it asks for none.
    gpu: str | None = None

    @property
    def is_service(self) -> bool:
        """Whether it runs a service of the catalog whose settings validate."""
        return self.invocation is not None and self.invocation.settings is not None

    @property
    def label(self) -> str:
        return self.name or self.where

    @property
    def listening(self) -> set[int] | None:
        """Ports it listens on: a service's own (None while its settings do not
        validate, which is reported already), else those the file declares."""
        invocation = self.invocation
        if invocation is not None and invocation.spec is not None:
            return None if invocation.settings is None else invocation.settings.listening_ports()
        return {port.number for port in self.ports} | self.exposed


@dataclass(frozen=True)
class Endpoint:
    """Where a dialled address lands: a container, and the port it is reached on there."""

    container: Container
    port: int


# A format's name resolution: the endpoints an address dialled from a
# container reaches, or why it reaches none (a problem, without where).
Resolver = Callable[[Container, Address], list[Endpoint] | str]


@dataclass(frozen=True)
class Scrape:
    """One target Prometheus scrapes, as if dialled from `caller` (the
    Prometheus container; a container of the annotated pod)."""

    caller: Container
    # How the file says it, for messages: "/etc/prometheus/prometheus.yml job maas".
    said: str
    address: Address


@dataclass
class Deployment:
    """One file's (or folder's) containers and how addresses resolve among them."""

    containers: list[Container]
    resolve: Resolver
    scrapes: list[Scrape] = field(default_factory=list)
    # How the format declares a port, for a container that declares none.
    declare_port: str = "declare it"
    # What a GPU-engine container without a GPU lacks, in the format's words.
    no_gpu: str = "asks for no GPU"
