"""Request ids, and the access log: each finished call reported once, in batches, after its
response has gone out: one access line and one observation for the metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any, TypeAlias

import grpc

from common.auth import peek_principal
from common.handlers import Context
from common.logs import ACCESS_LOGGER, flush_handlers

log = logging.getLogger(ACCESS_LOGGER)

# What each finished call is reported to besides the access log: method, code, seconds.
RpcObserver = Callable[[str, grpc.StatusCode, float], None]

# Finished calls are reported this many seconds after the first of a batch. Logging each call
# before its response went out cost a loaded server 40-70 us CPU per call (a stub service, 32
# callers), where logging it after costs ~8 us: work in the call's path delays the response, and
# the event loop then handles fewer calls per wake-up. The metrics observations go the same way.
REPORT_DELAY = 0.05

# Ids for calls that bring none: a random per-process prefix and a counter, unique without
# reading the system's random source on every call.
_REQUEST_ID_PREFIX = uuid.uuid4().hex[:16]
_request_numbers = itertools.count(1)


def request_id(context: Context) -> str:
    """The caller's `x-request-id`, or a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode()
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"


# One finished call: end time, method, code, reason, seconds, request id, user, organization.
_Finished: TypeAlias = tuple[
    float, str, grpc.StatusCode, str | None, float, str, str | None, str | None
]


class AccessLog:
    """Finished calls, reported REPORT_DELAY after the first of each batch: to the observers,
    then as access lines, each stamped with the time its call ended and all written at once."""

    def __init__(self, observers: Collection[RpcObserver] = ()) -> None:
        self._observers = tuple(observers)
        self._finished: list[_Finished] = []

    def finished(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        request_id: str,
        reason: str | None = None,
    ) -> None:
        """Note how a call ended (`started` by `time.perf_counter`); this runs in its path."""
        elapsed = time.perf_counter() - started
        principal = peek_principal()
        self._finished.append(
            (
                time.time(),
                method,
                code,
                reason,
                elapsed,
                request_id,
                principal.user_id if principal else None,
                principal.organization_id if principal else None,
            )
        )
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_later(REPORT_DELAY, self.report)

    def report(self) -> None:
        """Report the calls finished since the last report. The server's shutdown calls it for
        the last ones."""
        finished, self._finished = self._finished, []
        logging_on = log.isEnabledFor(logging.INFO)
        for created, method, code, reason, elapsed, req_id, user_id, org_id in finished:
            for observer in self._observers:
                observer(method, code, elapsed)
            if not logging_on:
                continue
            extra: dict[str, Any] = {
                "method": method,
                "code": code.name,
                "reason": reason,
                "duration_ms": round(elapsed * 1000, 3),
                "request_id": req_id,
                "user_id": user_id,
                "organization_id": org_id,
            }
            # Built directly: `log.info` would walk the stack for a caller's file and line that
            # no formatter prints. The time is when the call ended, not when it is written.
            record = log.makeRecord(
                log.name, logging.INFO, __file__, 0, "rpc", (), None, extra=extra
            )
            record.created, record.msecs = created, (created - int(created)) * 1000
            log.handle(record)
        if finished and logging_on:
            flush_handlers(log)  # the batch's lines, in one write
