"""Constraints compiled with the engine's grammar backend (xgrammar) in a
worker process, before admission: refusals name the field, and a compile
past its time limit is stopped without losing the checker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.constraints import ConstraintChecker
from services.common.errors import FailedPreconditionError, InvalidArgumentError

# A string pattern of many repeated alternatives: xgrammar's JSON-schema
# conversion expands it in time quadratic in the count (about a second at
# 2,000; minutes at 20,000).
PATHOLOGICAL_SCHEMA = json.dumps({"type": "string", "pattern": "(a|b){1,20000}"})


@pytest_asyncio.fixture
async def checker() -> AsyncIterator[ConstraintChecker]:
    checker = ConstraintChecker(workers=1, timeout_s=0.5)
    yield checker
    await checker.aclose()


async def test_honest_constraints_compile(checker: ConstraintChecker) -> None:
    await checker.check("regex", r"[a-z]+@example\.com")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    await checker.check("json_schema", json.dumps(schema))


@pytest.mark.parametrize(
    ("kind", "text"),
    [("regex", "(unclosed"), ("json_schema", '{"type": "no-such-type"}')],
)
async def test_what_the_backend_refuses_is_named(
    checker: ConstraintChecker, kind: str, text: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await checker.check(kind, text)  # type: ignore[arg-type]
    assert info.value.field == kind


async def test_a_compile_past_its_time_limit_is_stopped(checker: ConstraintChecker) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await checker.check("json_schema", PATHOLOGICAL_SCHEMA)
    assert info.value.field == "json_schema"
    assert "takes over" in info.value.description
    # The stuck worker was replaced: the next constraint compiles.
    await checker.check("regex", "[0-9]+")
    # Its verdict is remembered (one time limit per pattern), and stays a refusal.
    with pytest.raises(InvalidArgumentError):
        await checker.check("json_schema", PATHOLOGICAL_SCHEMA)


async def test_a_caller_that_goes_away_does_not_cost_a_worker(checker: ConstraintChecker) -> None:
    schema = json.dumps({"type": "string", "pattern": "(a|b){1,300}"})
    waiting = asyncio.create_task(checker.check("json_schema", schema))
    await asyncio.sleep(0)  # the compile has started
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The compile went on and its verdict is there for the next caller.
    await checker.check("json_schema", schema)
    assert checker.spawned == 1  # no worker was killed and replaced


async def test_without_the_backend_a_constraint_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake: the control-plane image lacks xgrammar, which this venv has.
    monkeypatch.setattr("gateway.constraints.backend_present", lambda: False)
    checker = ConstraintChecker(workers=1, timeout_s=0.5)
    try:
        with pytest.raises(FailedPreconditionError, match="no grammar backend") as refused:
            await checker.check("regex", "[a-z]+")
        assert refused.value.reason == "CONSTRAINT_BACKEND_MISSING"
        assert checker.spawned == 0
    finally:
        await checker.aclose()
