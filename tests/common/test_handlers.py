"""The interceptors' base: a method's handler wrapped once, unknown methods not remembered."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from common.handlers import Context, Handler, WrappingInterceptor


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class Counting:
    """A continuation that knows one method and counts how often it is asked."""

    def __init__(self, known: str) -> None:
        self.known, self.asked = known, 0

    async def __call__(self, details: Any) -> Handler | None:
        self.asked += 1
        if details.method != self.known:
            return None

        async def echo(request: Any, _context: Context) -> Any:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


@pytest.mark.asyncio
async def test_a_known_method_is_wrapped_once_and_unknown_ones_not_remembered() -> None:
    interceptor, continuation = WrappingInterceptor(), Counting("/s.S/Known")

    async def ask(method: str) -> Handler | None:
        details: Any = Details(method)
        return await interceptor.intercept_service(continuation, details)

    first, again = await ask("/s.S/Known"), await ask("/s.S/Known")
    assert first is not None and again is first and continuation.asked == 1
    for _ in range(3):
        assert await ask("/s.S/Nope") is None
    assert continuation.asked == 4
