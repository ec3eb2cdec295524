"""The one rule set, on containers built by hand: no compose file, no manifest."""

from __future__ import annotations

from deploy.checks.addresses import Address, addresses_in
from deploy.checks.entrypoints import invoke
from deploy.checks.model import (
    Container,
    DeclaredPort,
    Deployment,
    Endpoint,
    Grace,
    Probe,
    Resolver,
    Scrape,
)
from deploy.checks.rules import (
    address_problems,
    call_problems,
    container_problems,
    gpu_problems,
    mesh_problems,
    scrape_problems,
)

ROUTER = ["--host", "0.0.0.0", "--port", "50053", "--telemetry.prometheus-port", "9464",
          "--telemetry.prometheus-host", "0.0.0.0"]  # fmt: skip
TOKEN = {"MAAS_ROUTER_SERVICE_TOKEN": "<MAAS_SERVICE_TOKEN>"}


def router(**fields: object) -> Container:
    container = Container("router", invocation=invoke("services.router", ROUTER, TOKEN))
    for name, value in fields.items():
        setattr(container, name, value)
    return container


def test_a_well_given_router_has_no_problems() -> None:
    container = router(
        ports=[DeclaredPort(50053, "declares containerPort 50053 (grpc)"),
               DeclaredPort(9464, "declares containerPort 9464 (metrics)")],
        declares_every_port=True,
        probes=[Probe("readinessProbe", 50053, "maas.v1.Router", readiness=True),
                Probe("livenessProbe", 50053, "", readiness=False)],
        required_probes=("readinessProbe", "livenessProbe"),
        grace=Grace(30, "terminationGracePeriodSeconds (30)"),
    )  # fmt: skip
    assert container_problems(container) == []


def test_each_rule_names_what_is_wrong() -> None:
    container = router(
        ports=[DeclaredPort(8000, "publishes port 8000")],
        declares_every_port=True,
        probes=[Probe("healthcheck", 50054, "maas.v1.Routr", readiness=True),
                Probe("livenessProbe", 50053, "maas.v1.Router", readiness=False)],
        required_probes=("readinessProbe",),
        grace=Grace(5, "stop_grace_period (5s)"),
    )  # fmt: skip
    assert container_problems(container) == [
        "router: publishes port 8000, where it does not listen",
        "router: listens on 9464 but declares no containerPort for it",
        "router: listens on 50053 but declares no containerPort for it",
        "router: no gRPC readinessProbe (grpc: {port: 50053, service: ...})",
        "router: healthcheck probes port 50054, not its gRPC port 50053",
        "router: healthcheck asks for 'maas.v1.Routr'; services.router serves maas.v1.Router",
        "router: livenessProbe asks for 'maas.v1.Router', which is NOT_SERVING until ready: "
        "liveness is the empty service name",
        "router: stop_grace_period (5s) is not longer than its own grace period (10s): "
        "it would be killed mid-drain",
    ]


def test_a_flag_the_service_does_not_take_is_reported_by_the_rules() -> None:
    container = Container("router", invocation=invoke("services.router", ["--prot", "1"], {}))
    [problem] = container_problems(container)
    assert problem.startswith("router: flags of services.router") and "--prot" in problem


def test_the_service_token_is_everywhere_or_nowhere() -> None:
    without = Container("auth", invocation=invoke("services.auth", ["--port", "50052"], {
        "MAAS_AUTH_ADMIN_TOKEN": "<T>", "MAAS_AUTH_KEY_PEPPER": "<P>"}))  # fmt: skip
    problems = mesh_problems([router(), without])
    assert "auth: has no service token, which the mesh's other services hold" in problems
    assert not any(p.startswith("router: has no service token") for p in problems)


INFERENCE = ["--host", "0.0.0.0", "--port", "50054", "--telemetry.prometheus-port", "9464",
             "--telemetry.prometheus-host", "0.0.0.0", "--model", "/models/tiny"]  # fmt: skip


def mesh(router_replicas: str) -> tuple[Container, Container, Container]:
    """A router dialling its replicas at `router_replicas`, an inference
    replica, and a database that runs nothing of the project."""
    args = [*ROUTER, "--replicas", router_replicas]
    routing = Container("router", name="router", invocation=invoke("services.router", args, TOKEN))
    routing.values = [("command", router_replicas)]
    engine = Container("engine", name="engine", invocation=invoke("services.inference", INFERENCE,
                       {"MAAS_INFERENCE_SERVICE_TOKEN": "<T>"}))  # fmt: skip
    database = Container("db", name="db", exposed={5432})
    return routing, engine, database


def by_name(*containers: Container) -> Resolver:
    """A resolver of bare container names: what each format's resolver amounts to."""

    def resolve(caller: Container, address: Address) -> list[Endpoint] | str:
        found = [c for c in containers if c.name == address.host]
        return [Endpoint(c, address.port) for c in found] or f"{address.host} is nothing here"

    return resolve


def test_addresses_resolve_to_a_listener() -> None:
    routing, engine, database = mesh('["engine:50054", "db:5433", "nowhere:1"]')
    deployment = Deployment([routing, engine, database], by_name(routing, engine, database))
    assert address_problems(deployment, routing) == [
        "router: command db:5433: db listens on 5432, not 5433",
        "router: command nowhere:1: nowhere is nothing here",
    ]


def test_a_called_service_is_reached_on_its_grpc_port() -> None:
    routing, engine, database = mesh('["engine:50054", "engine:9464", "db:5432"]')
    deployment = Deployment([routing, engine, database], by_name(routing, engine, database))
    assert call_problems(deployment, routing) == [
        "router: replicas engine:9464: port 9464 of engine is not its gRPC port (50054)",
        "router: replicas db:5432: db runs no service of the mesh, not services.inference",
    ]


def test_a_default_address_reaching_nothing_is_told_by_the_call_rule() -> None:
    routing, engine, _ = mesh('["engine:50054", "nowhere:1"]')
    # As if the file gave no --replicas and these were the setting's default.
    routing.values = []
    deployment = Deployment([routing, engine], by_name(routing, engine))
    assert address_problems(deployment, routing) == []
    [problem] = call_problems(deployment, routing)
    assert problem == "router: replicas nowhere:1: nowhere is nothing here"


def test_scrape_targets_are_metrics_ports_and_cover_every_service() -> None:
    routing, engine, database = mesh("[]")
    prometheus = Container("prometheus", name="prometheus")
    scrapes = [Scrape(prometheus, "job maas", Address("engine", port, f"engine:{port}"))
               for port in (9464, 50054)]  # fmt: skip
    deployment = Deployment([routing, engine, database], by_name(routing, engine), scrapes)
    assert scrape_problems(deployment) == [
        "prometheus: job maas engine:50054: port 50054 of engine is not its metrics port (9464)",
        "router: Prometheus does not scrape it",
    ]


def test_the_inference_container_asks_for_a_gpu_iff_it_runs_the_gpu_engine() -> None:
    _, engine, database = mesh("[]")
    deployment = Deployment([engine], by_name(engine), no_gpu="asks for none")
    assert gpu_problems(deployment, engine) == []
    engine.gpu_engine = "is built for the GPU"
    assert gpu_problems(deployment, engine) == [
        "engine: is built for the GPU but asks for none: it would land on no GPU"
    ]
    engine.gpu_engine, engine.gpu = None, "holds a GPU"
    assert gpu_problems(deployment, engine) == [
        "engine: holds a GPU but runs the CPU engine: the GPU would sit idle"
    ]
    database.gpu = "holds a GPU"
    assert gpu_problems(deployment, database) == []


def inference(*flags: str) -> Container:
    args = ["--model", "/models/m", *flags]
    return Container("engine", invocation=invoke("services.inference", args, {}))


def problems_of(container: Container) -> list[str]:
    assert container.invocation is not None
    return container.invocation.problems


def test_a_replica_holding_private_adapters_is_told_where_the_registry_is() -> None:
    # The settings themselves refuse what cannot serve adapters, naming both fields.
    assert problems_of(inference()) == []
    given = inference("--adapter-slots", "2", "--registry-address", "dns:///auth:50052")
    assert problems_of(given) == []
    [unreachable] = problems_of(inference("--adapter-slots", "2"))
    assert unreachable.startswith("services.inference: ")
    assert "adapter_slots 2 needs registry_address" in unreachable
    pooling = inference("--runner", "pooling", "--adapter-slots", "1", "--registry-address", "a:1")
    [embedding] = problems_of(pooling)
    assert "adapter_slots 1 on an embedding (pooling) model, which takes no adapter" in embedding


def test_grpc_targets_and_lists_name_each_address() -> None:
    def hosts(value: str) -> list[tuple[str, int, str]]:
        return [(a.host, a.port, a.text) for a in addresses_in(value)]

    assert hosts("dns:///auth-headless:50052") == [
        ("auth-headless", 50052, "dns:///auth-headless:50052")
    ]
    assert hosts("dns://10.0.0.10/auth:50052") == [("auth", 50052, "dns://10.0.0.10/auth:50052")]
    assert hosts("auth-1:50052,auth-2:50052") == [
        ("auth-1", 50052, "auth-1:50052"),
        ("auth-2", 50052, "auth-2:50052"),
    ]
    assert hosts("ipv4:10.0.0.1:5,10.0.0.2:6") == [
        ("10.0.0.1", 5, "10.0.0.1:5"),
        ("10.0.0.2", 6, "10.0.0.2:6"),
    ]
    # URLs keep their one address; a time of day is none.
    assert hosts("redis://redis:6379/0") == [("redis", 6379, "redis://redis:6379/0")]
    assert hosts("10:30") == []
