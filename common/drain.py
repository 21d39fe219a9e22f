"""Graceful drain: which calls a stopping server still takes, and the health that tells clients.

gRPC's own `server.stop(grace)` is not a drain a client can follow: grpc core's shutdown
(`grpc_server_shutdown_and_notify`) destroys every call it has accepted but not yet handed to
the application, and every call that reaches the server after it, and clients read those as
CANCELLED ("the caller gave up"), which no retry policy retries. A grpc.aio server asks core
for one call per method at a time, so under load there always are such queued calls. Hence
the order in `common.server.RunningServer.shutdown`: health NOT_SERVING, serve on for the drain
delay, refuse new calls here with UNAVAILABLE while the calls in flight finish, end the health
watches, and only then `server.stop`.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from common.db.outage import set_call_deadline
from common.errors import UnavailableError
from common.handlers import Around, Context, Handler, WrappingInterceptor, service_of

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFUSED_REASON = "SERVER_SHUTTING_DOWN"


class Admission(WrappingInterceptor):
    """Counts the calls in flight and, once `refuse` is called, answers new ones UNAVAILABLE
    (safe to retry: nothing of them ran). Health calls pass untouched: a stopping server must
    still answer NOT_SERVING, and health watches last as long as a client's connection.

    It is also the one place that sees every call start, so it hands the call's deadline to
    the database layer, which may wait for a lost database within it (common.db.outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.refusing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def around(self, method: str, handler: Handler) -> Around | None:
        return None if service_of(method) == HEALTH_SERVICE else self

    async def enter(self, context: Context) -> None:
        if self.refusing:
            raise UnavailableError(
                "the server is shutting down; call again (another replica will answer)",
                reason=REFUSED_REASON,
            )
        self.in_flight += 1
        self._idle.clear()
        # Counted until its status has gone out, not merely until the handler returns.
        # (The stubs type the callback as a class of theirs; any callable is what grpc takes.)
        context.add_done_callback(self._leave)  # type: ignore[arg-type]
        set_call_deadline(context.time_remaining())

    def _leave(self, _context: Context) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def refuse(self) -> None:
        """From now on new calls are answered UNAVAILABLE."""
        self.refusing = True

    async def idle(self) -> None:
        """Returns once no call is in flight."""
        await self._idle.wait()


class DrainingHealth(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health servicer, whose Watch streams can be ended (with OK) before the
    server stops: otherwise every client that checks health keeps a call open, and the
    server's stop would wait the whole grace period for them, then cancel them."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        if self._closed.is_set():  # a watch begun at the very end: say so and end it
            await context.write(
                health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
            )
            return
        watching = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((watching, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, closing):
                task.cancel()
            await asyncio.gather(watching, closing, return_exceptions=True)
        error = None if watching.cancelled() else watching.exception()
        if error is not None:  # the stream broke (the client went away): as the base would
            raise error

    def close_watches(self) -> None:
        """Ends every Watch stream, and every one begun later at once."""
        self._closed.set()
