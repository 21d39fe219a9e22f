"""A server interceptor that loses the answer of each write's first attempt after the write has
committed, as a connection that drops on the way back would: the caller sees UNAVAILABLE."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

Handler = Any


def _request_id(request: Any, context: aio.ServicerContext[Any, Any]) -> str:
    given = getattr(request, "request_id", "")
    if given:
        return str(given)
    metadata = dict(context.invocation_metadata() or ())
    return str(metadata.get("request-id", ""))


class LoseFirstAnswers(aio.ServerInterceptor):  # type: ignore[misc]
    """For the methods named (by their last part), the first attempt with each request id (and
    every attempt without one) does its work, then answers UNAVAILABLE instead of its response;
    `attempts` counts each method's calls, `lost` the answers dropped."""

    def __init__(self, *methods: str) -> None:
        self._methods = frozenset(methods)
        self._seen: set[tuple[str, str]] = set()
        self.attempts: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()

    def _first(self, method: str, request_id: str) -> bool:
        self.attempts[method] += 1
        if request_id and (method, request_id) in self._seen:
            return False
        self._seen.add((method, request_id))
        self.lost[method] += 1
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or method not in self._methods:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, streamed=False),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary, streamed=True),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Any, *, streamed: bool) -> Any:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            response = await behavior(request, context)
            if self._first(method, _request_id(None if streamed else request, context)):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost on the way")
            return response

        return call

    def _stream(self, method: str, behavior: Any) -> Any:
        async def call(requests: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            responses = [response async for response in behavior(requests, context)]
            if self._first(method, _request_id(None, context)):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost on the way")
            for response in responses:
                yield response

        return call
