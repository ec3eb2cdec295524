"""The one rewrite both client interceptor families share, without gRPC calls."""

from __future__ import annotations

import grpc

from observability.call_metadata import rewriting_interceptors, with_missing_metadata


def _details(*pairs: tuple[str, str]) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails("/m", 1.0, grpc.aio.Metadata(*pairs), None, True)


def test_missing_keys_are_added_and_keys_the_call_sets_are_kept() -> None:
    details = _details(("authorization", "Bearer caller"))
    rewritten = with_missing_metadata(
        details, (("authorization", "Bearer mesh"), ("x-request-id", "r1"))
    )
    assert rewritten.metadata is not None
    assert list(rewritten.metadata) == [("authorization", "Bearer caller"), ("x-request-id", "r1")]
    assert (rewritten.method, rewritten.timeout, rewritten.wait_for_ready) == ("/m", 1.0, True)


def test_nothing_to_add_leaves_the_details_as_they_are() -> None:
    details = _details(("x-request-id", "r0"))
    assert with_missing_metadata(details, (("x-request-id", "r1"),)) is details


def test_one_interceptor_per_call_kind() -> None:
    kinds = [
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    ]
    interceptors = rewriting_interceptors(lambda details: details)
    assert [[isinstance(i, kind) for kind in kinds] for i in interceptors] == [
        [kind is k for kind in kinds] for k in kinds
    ]
