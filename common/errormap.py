"""Errors mapped once, at the edge: a `ServiceError` becomes its `google.rpc.Status`, an
undecodable request INVALID_ARGUMENT, and anything else one logged INTERNAL."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from common.accesslog import AccessLog, request_id
from common.auth import bind_principal
from common.db import is_unavailable
from common.errors import (
    InternalError,
    ServiceError,
    UnavailableError,
    ValidationError,
    to_grpc_status,
)
from common.handlers import Around, Context, Deserializer, Handler, WrappingInterceptor
from common.logs import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)


class ErrorInterceptor(WrappingInterceptor):
    """Maps each call's errors to statuses, and hands how every call ended to the access log."""

    def __init__(self, domain: str, access_log: AccessLog) -> None:
        super().__init__()
        self._domain = domain
        self._access_log = access_log

    def around(self, method: str, handler: Handler) -> Around:
        # Whether requests come as a stream is the method's, known here: not asked per call.
        mapped = _MappedStream if handler.request_streaming else _Mapped
        return mapped(method, self._domain, self._access_log)


class _Mapped(Around):
    """One method's calls: timed, errors answered with their status, the outcome noted."""

    def __init__(self, method: str, domain: str, access_log: AccessLog) -> None:
        self._method = method
        self._domain = domain
        self._access_log = access_log

    def deserializer(self, deserializer: Deserializer) -> Deserializer:
        return None if deserializer is None else _tolerant(deserializer)

    async def enter(self, context: Context) -> tuple[float, str]:
        bind_principal(None)
        return time.perf_counter(), request_id(context)

    def request(self, request: Any) -> Any:
        return _check_decoded(request)

    def done(self, state: tuple[float, str]) -> None:
        self._access_log.finished(self._method, grpc.StatusCode.OK, *state)

    async def failed(
        self, state: tuple[float, str], context: Context, error: BaseException
    ) -> None:
        """Abort the call with the status `error` maps to (this raises), after noting it."""
        if isinstance(error, aio.AbortError):
            code = context.code() or grpc.StatusCode.UNKNOWN
            self._access_log.finished(self._method, code, *state)
            return
        if not isinstance(error, Exception):  # cancellation and exits pass through untouched
            self._access_log.finished(self._method, grpc.StatusCode.CANCELLED, *state)
            return
        mapped: ServiceError
        if isinstance(error, ServiceError):
            mapped = error
        elif is_unavailable(error):
            mapped = UnavailableError("database unavailable")
        else:
            log.error(
                "unhandled error in %s",
                self._method,
                exc_info=error,
                extra={"request_id": state[1]},
            )
            mapped = InternalError("internal error")
        self._access_log.finished(self._method, mapped.code, *state, reason=mapped.reason)
        status = to_grpc_status(mapped, self._domain)
        await context.abort(status.code, status.details, status.trailing_metadata)


class _MappedStream(_Mapped):
    """A client-streaming method's calls: each request of the stream checked as it comes."""

    def request(self, request: Any) -> Any:
        return _checked_stream(request)


class _Undecodable:
    """Stands in for a request message that did not parse, so the error is answered by us."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError: bad UTF-8, corrupt wire format, too deep
            return _Undecodable(exc)

    return parse


def _check_decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise ValidationError(
            "request message could not be decoded", reason="MALFORMED_REQUEST"
        ) from request.error
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check_decoded(request)
