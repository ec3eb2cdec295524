"""Entry points as the deploy checks see them: read off the declared specs,
never off the code or a `--help`."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.checks.entrypoints import command_spec, invoke, service_spec
from deploy.runtime import replica_sync
from services.catalog import SERVICES
from services.common.spec import ServiceSpec


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_every_service_module_has_its_declared_spec(spec: ServiceSpec[Any]) -> None:
    assert service_spec(spec.module) is spec


def test_replica_sync_declares_the_flags_its_parser_takes() -> None:
    # private to argparse, but the only list of a parser's option strings
    taken = {flag for flag in replica_sync.arguments()._option_string_actions if flag != "-h"}
    taken.discard("--help")
    assert replica_sync.SPEC.flags == taken
    assert command_spec("deploy.runtime.replica_sync") is replica_sync.SPEC


def test_a_non_service_module_flags_and_variables_are_checked_against_its_spec() -> None:
    invocation = invoke(
        "deploy.runtime.replica_sync",
        ["--replicas", "inference:50054", "--every", "5"],
        {"MAAS_SERVICE_TOKEN": "<MAAS_SERVICE_TOKEN>", "MAAS_ROUTER_PORT": "1"},
    )
    assert invocation.problems == [
        "MAAS_ROUTER_PORT: `deploy.runtime.replica_sync` is no service and reads no such variable",
        "--every: no such flag of deploy.runtime.replica_sync",
    ]


def test_a_module_that_declares_nothing_is_reported() -> None:
    invocation = invoke("deploy.local.throwaway_ca", ["--out", "x"], {})
    assert invocation.problems == [
        "`deploy.local.throwaway_ca` declares no SPEC: its flags cannot be checked"
    ]
