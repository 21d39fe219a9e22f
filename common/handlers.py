"""The base every interceptor here builds on: hooks run around each call, handlers wrapped once."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any] | None
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "aio.ServicerContext[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


def service_of(method: str) -> str:
    """`pkg.Service` of `/pkg.Service/Method`."""
    return method.lstrip("/").split("/", 1)[0]


class Around:
    """What an interceptor does around each call of a method. A hook left out does nothing."""

    def deserializer(self, deserializer: Deserializer) -> Deserializer:
        """The method's request deserializer (asked once, when its handler is wrapped)."""
        return deserializer

    async def enter(self, context: Context) -> Any:
        """Runs before the behavior; what it returns is handed to `done` or `failed`."""
        return None

    def request(self, request: Any) -> Any:
        """What the behavior gets: the request, or for client streams an iterator of them."""
        return request

    def done(self, state: Any) -> None:
        """Runs once the behavior has returned, or its response stream has ended."""

    async def failed(self, state: Any, context: Context, error: BaseException) -> None:
        """Runs when the behavior raised `error`, which is raised on unless this raises."""


# The hooks are looked up once per method, not on every call.
def _unary(behavior: Behavior, around: Around) -> Behavior:
    enter, checked, done, failed = around.enter, around.request, around.done, around.failed

    async def call(request: Any, context: Context) -> Any:
        state = await enter(context)
        try:
            response = await behavior(checked(request), context)
        except BaseException as error:
            await failed(state, context, error)
            raise
        done(state)
        return response

    return call


def _stream(behavior: Behavior, around: Around) -> Behavior:
    enter, checked, done, failed = around.enter, around.request, around.done, around.failed

    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        state = await enter(context)
        try:
            async for response in behavior(checked(request), context):
                yield response
        except BaseException as error:
            await failed(state, context, error)
            raise
        done(state)

    return call


def wrapped(handler: Handler, around: Around) -> Handler:
    """The same handler with `around`'s hooks run around each of its calls."""
    des, ser = around.deserializer(handler.request_deserializer), handler.response_serializer
    h: Any = handler
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(h.unary_unary, around), des, ser)
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(h.stream_unary, around), des, ser)
    # A streaming behavior may be a coroutine that writes with `context.write` (the health
    # servicer's Watch does): it is awaited like a unary one, not iterated.
    if h.unary_stream:
        wrap = _unary if inspect.iscoroutinefunction(h.unary_stream) else _stream
        return grpc.unary_stream_rpc_method_handler(wrap(h.unary_stream, around), des, ser)
    wrap = _unary if inspect.iscoroutinefunction(h.stream_stream) else _stream
    return grpc.stream_stream_rpc_method_handler(wrap(h.stream_stream, around), des, ser)


class WrappingInterceptor(aio.ServerInterceptor, Around):  # type: ignore[type-arg]
    """Wraps each method's handler on its first call and serves every later call with that:
    building the wrappers per call showed in the CPU each call costs.

    Subclasses say what to run around a method's calls: override the `Around` hooks when the
    same apply to every method, or `around` to pick them per method (or to leave one as is)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(  # type: ignore[override]  # None means UNIMPLEMENTED
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        if handler is None:  # not remembered: a caller could name any number of unknown methods
            return None
        wrapping = self.wrap(method, handler)
        self._wrapped[method] = wrapping
        return wrapping

    def around(self, method: str, handler: Handler) -> Around | None:
        """The hooks for `method`'s calls, or None to serve its handler as it is."""
        return self

    def wrap(self, method: str, handler: Handler) -> Handler:
        """`handler` with the hooks `around` picks run around each of its calls."""
        around = self.around(method, handler)
        return handler if around is None else wrapped(handler, around)
