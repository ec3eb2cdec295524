"""The one rule set, on containers built by hand: no compose file, no manifest."""

from __future__ import annotations

from deploy.checks.entrypoints import invoke
from deploy.checks.model import Container, DeclaredPort, Grace, Probe
from deploy.checks.rules import container_problems, mesh_problems

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
