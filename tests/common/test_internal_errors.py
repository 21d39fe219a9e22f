"""A bug is INTERNAL: logged once with its stack, answered without SQL, stack or message."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from common.accesslog import AccessLog
from common.errormap import ErrorInterceptor
from common.logs import ACCESS_LOGGER

pytestmark = pytest.mark.asyncio

SECRET_DETAIL = 'relation "user_progress" does not exist: SELECT * FROM user_progress'


class Aborted(Exception):
    pass


class Context:
    """What the interceptor uses of a servicer context; `abort` records its arguments."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-bug"),)

    async def abort(self, code: grpc.StatusCode, details: str, trailers: Any) -> None:
        self.aborted = (code, details, trailers)
        raise Aborted


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_bug_is_internal_logged_once_and_leaks_nothing() -> None:
    async def buggy(_request: Any, _context: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    method = "/progress.v1.UserProgressService/ListUserProgress"
    access_log = AccessLog()
    errors = ErrorInterceptor("progress.v1", access_log)
    handler: Any = errors.wrap(method, grpc.unary_unary_rpc_method_handler(buggy))
    logger, records = logging.getLogger(ACCESS_LOGGER), Records()
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    context = Context()
    try:
        with pytest.raises(Aborted):
            await handler.unary_unary(object(), context)
        access_log.report()
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)

    code, details, trailers = context.aborted
    assert code == grpc.StatusCode.INTERNAL and details == "internal error"
    (key, raw), *_ = trailers
    status = status_pb2.Status.FromString(raw)
    assert key == "grpc-status-details-bin" and status.message == "internal error"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INTERNAL", "progress.v1")
    assert "SELECT" not in str(status) and "Traceback" not in str(status)

    errors_logged = [r for r in records.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == 1 and errors_logged[0].exc_info is not None
    assert SECRET_DETAIL in str(errors_logged[0].exc_info[1])  # the operator sees the cause
    (access,) = [r for r in records.records if r.levelno == logging.INFO]
    assert access.__dict__["code"] == "INTERNAL" and access.__dict__["request_id"] == "req-bug"
