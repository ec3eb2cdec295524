"""The console's forms without a browser: hostile values are refused
naming their field, never passed on to protobuf (which raises ValueError,
a 500) or to the mesh."""

from __future__ import annotations

import pytest

from services.console.forms import (
    UINT32_MAX,
    UINT64_MAX,
    BudgetForm,
    FormError,
    PlaygroundForm,
    PriceForm,
)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_tokens": str(UINT32_MAX + 1)}, "max_tokens"),
        ({"max_tokens": "0"}, "max_tokens"),
        ({"max_tokens": "1e9"}, "max_tokens"),
        ({"seed": str(UINT64_MAX + 1)}, "seed"),
        ({"seed": "-1"}, "seed"),
        ({"seed": "9" * 5000}, "seed"),
        ({"temperature": "nan"}, "temperature"),
        ({"temperature": "inf"}, "temperature"),
        ({"stop": "a\nb\nc\nd\ne"}, "stop"),
    ],
)
def test_playground_refuses_hostile_values_naming_the_field(
    fields: dict[str, str], field: str
) -> None:
    with pytest.raises(FormError) as refused:
        PlaygroundForm("m", "hello", **fields).request()
    assert refused.value.field == field


def test_playground_takes_the_largest_values_the_proto_carries() -> None:
    request = PlaygroundForm(
        "m", "hello", max_tokens=str(UINT32_MAX), seed=str(UINT64_MAX)
    ).request()
    assert (request.max_tokens, request.seed) == (UINT32_MAX, UINT64_MAX)


@pytest.mark.parametrize("field", ["prompt", "cached_prompt", "completion"])
@pytest.mark.parametrize("hostile", ["1e30", "-1", "0.0000001", "NaN", "Infinity"])
def test_price_refuses_hostile_amounts_naming_the_field(field: str, hostile: str) -> None:
    prices = {"prompt": "0.15", "cached_prompt": "0.05", "completion": "0.6", field: hostile}
    with pytest.raises(FormError) as refused:
        PriceForm("m", currency="USD", **prices).price()
    assert refused.value.field == field


@pytest.mark.parametrize("field", ["monthly", "total"])
@pytest.mark.parametrize("hostile", ["1e30", "-1", "0.0000001", "NaN"])
def test_budget_refuses_hostile_limits_naming_the_field(field: str, hostile: str) -> None:
    with pytest.raises(FormError) as refused:
        BudgetForm("tenant", **{field: hostile}).budget()
    assert refused.value.field == field


def test_budget_refuses_a_soft_threshold_past_100() -> None:
    with pytest.raises(FormError) as refused:
        BudgetForm("tenant", soft="101").budget()
    assert refused.value.field == "soft"
