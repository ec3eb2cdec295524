"""The price in force of each listed model, from the price book (maas.v1.Billing
ListPrices, served by auth), cached briefly: listing models costs one read of
the book per `ttl_s` at most, whoever lists them.

The book is read with the caller's own credential (any valid key may read
it). While it cannot be read (auth restarting), models are listed without
prices rather than not at all, and neither priced nor `unpriced`: unknown
is not free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import grpc

from maas.v1 import billing_pb2, billing_pb2_grpc, generation_pb2
from services.common.errors import MeshError, remote_errors
from services.common.usage_terms import billed_name

# Failures that mean "the book is out of reach now", not "the call was wrong".
_OUT_OF_REACH = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def model_price(price: billing_pb2.Price) -> generation_pb2.ModelPrice:
    return generation_pb2.ModelPrice(
        currency=price.currency,
        prompt_micros_per_million=price.prompt_micros_per_million,
        cached_prompt_micros_per_million=price.cached_prompt_micros_per_million,
        completion_micros_per_million=price.completion_micros_per_million,
        effective_time=price.effective_time,
    )


def with_prices(
    models: Sequence[generation_pb2.ModelInfo], book: dict[str, billing_pb2.Price] | None
) -> list[generation_pb2.ModelInfo]:
    """Copies of `models`, each with its price in force or marked unpriced;
    unchanged when the book is unknown (None)."""
    priced = []
    for model in models:
        entry = generation_pb2.ModelInfo()
        entry.CopyFrom(model)
        if book is not None:
            price = book.get(model.name)
            if price is None:
                entry.unpriced = True
            else:
                entry.price.CopyFrom(model_price(price))
        priced.append(entry)
    return priced


class PriceBook:
    def __init__(
        self,
        billing: billing_pb2_grpc.BillingAsyncStub,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._billing = billing
        self._ttl_s = ttl_s
        self._clock = clock
        self._book: dict[str, billing_pb2.Price] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def in_force(
        self, credentials: str | None, timeout_s: float
    ) -> dict[str, billing_pb2.Price] | None:
        """The price in force per billed name; None when the book is out of reach."""
        if not self._fresh():
            async with self._lock:
                # Whoever waited on the lock finds the book another caller read.
                if not self._fresh():
                    try:
                        await self._fetch(credentials, timeout_s)
                    except MeshError as err:
                        if err.code not in _OUT_OF_REACH:
                            raise
                        return None
        return self._book

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl_s

    async def _fetch(self, credentials: str | None, timeout_s: float) -> None:
        metadata = () if credentials is None else (("authorization", credentials),)
        with remote_errors():
            response = await self._billing.ListPrices(
                billing_pb2.ListPricesRequest(), metadata=metadata, timeout=timeout_s
            )
        self._book = {billed_name(p): p for p in response.prices}
        self._fetched_at = self._clock()
